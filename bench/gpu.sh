#!/usr/bin/env bash
# GPU benchmark for a lent machine: full-size SDXL UNet + ControlNet + VAE with
# random weights at 1024 and 768 px, 30 steps, through the engine's backend,
# sweeping its speed settings (bench/gpu_bench.py's docstring lists the rows).
# Finishes in about 6.5 minutes on one H100-class card, printing a short
# table last; with OUT set, gpu-bench.json and gpu-bench.md are written into
# $OUT after every row.
#
# The machine needs Python with torch (CUDA), transformers, grpcio, protobuf,
# opencv and pillow: the repository's .venv, $PYTHON, or python3. When .whl/
# holds wheels (bench/gpu-wheels.sh downloads diffusers and protobuf there),
# they are installed into a private folder first, so a machine with no
# network and no diffusers can run it:
#
#     bench/gpu-wheels.sh               # here, once
#     bench/gpu.sh                      # there, with .whl/ carried along
#
# Extra arguments go to gpu_bench.py (try --help, or --tiny for a CPU check).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [[ -z $python ]]; then
	python=python3
	[[ -x .venv/bin/python ]] && python=.venv/bin/python
fi

if compgen -G '.whl/*.whl' >/dev/null; then
	site=${WHEEL_SITE:-${TMPDIR:-/tmp}/vstage-bench-site}
	"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target "$site" .whl/*.whl
	export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$python" -c 'import torch, diffusers, transformers, grpc, google.protobuf, cv2, PIL'; then
	echo "gpu.sh: $python lacks torch, diffusers, transformers, grpcio, protobuf, opencv or pillow;" >&2
	echo "        build .venv (make venv), set PYTHON, or carry wheels (bench/gpu-wheels.sh)" >&2
	exit 2
fi

out_args=()
if [[ -n ${OUT:-} ]]; then
	out_args=(--out "$OUT")
fi

export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$python" -c 'import diffusers, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__)'
# Rows start only if they should end by --budget-s (330 s by default); the
# timeout (BENCH_TIMEOUT_S, 375 s) stops a row that runs long, and the script
# still writes what it has and exits 0.
exec timeout --preserve-status --signal=INT --kill-after=10 "${BENCH_TIMEOUT_S:-375}" "$python" bench/gpu_bench.py "${out_args[@]}" "$@"
