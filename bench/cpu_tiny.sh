#!/usr/bin/env bash
# Times the tiny random SDXL + ControlNet pipeline on the CPU, through the
# engine's own backend code: per image (P50/P95), per denoising step, VAE decode.
# Tiny weights make the numbers a measure of pipeline overhead and of this
# CPU, not of SDXL. Extra arguments go to gpu_bench.py (for example --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory venv >/dev/null
exec .venv/bin/python bench/gpu_bench.py --tiny --sizes 512,256 --steps 20 --runs 5 \
	--only eager,channels-last --budget-s 3600 "$@"
