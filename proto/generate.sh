#!/usr/bin/env bash
# generate.sh DEST: writes the Go and Python code for every .proto under proto/
# into DEST (DEST/proto/... and DEST/python/inference/_proto/...).
# `make proto` passes the repository root; the staleness test passes a temp dir
# and compares. Tool versions are pinned here and in pyproject.toml (protoc and
# the Python plugin come from grpcio-tools), so the output only changes when the
# .proto or a pin does.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: generate.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
python=${PYTHON:-$root/.venv/bin/python}

# The plugins live in a per-version folder so a pin change rebuilds them and a
# rerun with the same pins costs nothing.
plugins=$root/bin/protoc-plugins/go-$PROTOC_GEN_GO_VERSION-grpc-$PROTOC_GEN_GO_GRPC_VERSION
if [[ ! -x $plugins/protoc-gen-go || ! -x $plugins/protoc-gen-go-grpc ]]; then
	mkdir -p "$plugins"
	GOBIN=$plugins go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
	GOBIN=$plugins go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

cd "$root/proto"
mapfile -t protos < <(find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)

mkdir -p "$dest/proto"
"$python" -m grpc_tools.protoc -I . \
	--plugin=protoc-gen-go="$plugins/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$plugins/protoc-gen-go-grpc" \
	--go_out="$dest/proto" --go_opt=paths=source_relative \
	--go-grpc_out="$dest/proto" --go-grpc_opt=paths=source_relative \
	"${protos[@]}"

# Python: generated flat into the inference package, with the one absolute
# import between the generated modules made relative so the package imports
# without putting the proto tree on sys.path.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -I . \
	--python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
	"${protos[@]}"
pyout=$dest/python/inference/_proto
mkdir -p "$pyout"
for f in "$tmp"/vstage/engine/v1/*; do
	sed -e 's/^from vstage\.engine\.v1 import \(.*\)$/from . import \1/' "$f" >"$pyout/$(basename "$f")"
done
