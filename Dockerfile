# The sidecar image. It serves mock and managed mode on its own; for self
# mode, build FROM a CUDA image with the engine's environment
# (pip install . from this repository) and set ENGINE_PYTHON.
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The client is its own module, which the sidecar's go.mod replaces with
# ./client, so its go.mod is needed before the download.
COPY go.mod go.sum ./
COPY client/go.mod client/go.sum ./client/
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
COPY proto ./proto
COPY client ./client
# cgo: go-nvml loads the NVIDIA driver's library at run time with dlopen.
ENV CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations"
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/sidecar ./cmd/sidecar

# glibc, for dlopen; no shell, no package manager.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/sidecar /usr/local/bin/sidecar
ENV LISTEN_ADDR=:8080 INFERENCE_MODE=mock
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/sidecar"]
