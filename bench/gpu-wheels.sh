#!/usr/bin/env bash
# Downloads into .whl/ the wheels bench/gpu.sh needs on a GPU machine whose
# Python already has torch, transformers, accelerate, safetensors, numpy,
# pillow, opencv and grpcio but not diffusers, and no network: diffusers, and
# protobuf at the version the engine's generated protocol code was made for.
# Both are pure Python or abi3 wheels for CPython 3.12 on x86-64 Linux; the
# versions are the engine's pins in pyproject.toml. .whl/ is kept out of git
# through the repository's info/exclude, not .gitignore: the wheels are not
# part of the project. gpu.sh installs them into a private folder when it finds them.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers protobuf)

pins=()
for name in "${WHEELS[@]}"; do
	pin=$(grep -o "\"$name==[^\"]*\"" pyproject.toml | tr -d '"') ||
		{ echo "gpu-wheels.sh: no pin for $name in pyproject.toml" >&2; exit 2; }
	pins+=("$pin")
done

rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	-d .whl "${pins[@]}"

if ! git check-ignore -q .whl/probe.whl; then
	echo '/.whl/' >>"$(git rev-parse --git-path info/exclude)"
fi
ls -l .whl
du -sh .whl
