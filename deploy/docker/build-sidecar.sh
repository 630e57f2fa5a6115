#!/usr/bin/env bash
# Builds the sidecar into OUT/sidecar as the images ship it: cgo on (go-nvml
# opens the driver's library with dlopen), no file paths or symbol tables in
# the binary. The Dockerfile runs it; make test-image runs it into a
# temporary folder.
#
#   deploy/docker/build-sidecar.sh OUT
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT" >&2
	exit 2
fi
out=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
# go-nvml's C shims call NVML functions the headers mark deprecated.
export CGO_ENABLED=1 CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"
mkdir -p "$out"
cd "$root"
go build -trimpath -ldflags="-s -w" -o "$out/sidecar" ./cmd/sidecar
