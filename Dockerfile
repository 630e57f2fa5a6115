# syntax=docker/dockerfile:1.7
# vstage's images, one target each (BuildKit):
#
#   docker build --target sidecar -t vstage .      mock and managed mode (the default target)
#   docker build --target gpu -t vstage-gpu .      self mode: the sidecar and the engine
#
# The install steps live in deploy/docker/*.sh, which make test runs too:
# build-sidecar.sh into a temporary folder, install-engine.sh into .venv
# (make venv), so they are tested where no image can be built.

# The engine's base. PyTorch's wheels carry their own CUDA user-space
# libraries (the nvidia-* packages, pinned with hashes in
# python/requirements.lock), and the NVIDIA container runtime mounts the
# driver; a CUDA runtime base would add a second, unpinned CUDA beside
# them, and its Ubuntu releases have no Python 3.11. A site that must start
# from its own CUDA image can pass it here, with Python 3.11 at
# /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# none: the image holds no weights (MODEL_DIR is a mounted volume). baked:
# copy the build context named "models" into /models, e.g.
#   docker build --target gpu --build-arg MODELS=baked --build-context models=/data/vstage-models .
ARG MODELS=none

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
COPY deploy/docker/build-sidecar.sh ./deploy/docker/
RUN deploy/docker/build-sidecar.sh /out

FROM ${PYTHON_IMAGE} AS engine
WORKDIR /src
COPY pyproject.toml ./
COPY python ./python
COPY deploy/docker/install-engine.sh ./deploy/docker/
RUN PYTHON=/usr/local/bin/python3.11 deploy/docker/install-engine.sh /opt/vstage/venv

FROM scratch AS models-none
FROM scratch AS models-baked
# "models" is the build context the command line names, not a stage, and
# the whole of it is the point.
# hadolint ignore=DL3022,DL3067
COPY --from=models / /
# hadolint ignore=DL3006
FROM models-${MODELS} AS models

FROM ${PYTHON_IMAGE} AS gpu
COPY deploy/docker/gpu-system.sh /usr/local/lib/vstage/
RUN /usr/local/lib/vstage/gpu-system.sh 65532
COPY --from=engine /opt/vstage/venv /opt/vstage/venv
COPY --from=build /out/sidecar /usr/local/bin/sidecar
COPY --from=models / /models/
# HOME and TMPDIR: the only writable place in the pod is the /tmp volume.
# The NVIDIA variables ask the container runtime for the driver's compute
# and NVML libraries.
ENV LISTEN_ADDR=:8080 \
    INFERENCE_MODE=self \
    ENGINE_PYTHON=/opt/vstage/venv/bin/python \
    MODEL_DIR=/models \
    GPU_DEDICATED=true \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sidecar"]

# glibc, for dlopen; no shell, no package manager. Last, so that a plain
# docker build gives this image, as it always has. No child process, so the
# sidecar is PID 1 itself.
FROM gcr.io/distroless/base-debian12:nonroot AS sidecar
COPY --from=build /out/sidecar /usr/local/bin/sidecar
ENV LISTEN_ADDR=:8080 INFERENCE_MODE=mock
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sidecar"]
