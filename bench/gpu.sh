#!/usr/bin/env bash
# GPU benchmark for a lent machine: full-size SDXL UNet + ControlNet + VAE with
# random weights, 768 and 1024 px, 30 steps, eager / channels-last / compiled.
# Finishes in under 8 minutes on one H100 and prints a short table last.
#
# The machine needs the engine's Python dependencies (torch with CUDA,
# diffusers, transformers, grpcio, protobuf, opencv-python-headless, pillow):
# the repository's .venv if it was built there, or set PYTHON to an
# interpreter that has them. Results also go to $OUT/gpu-bench.json when OUT is set.
# Extra arguments go to gpu_bench.py (try --help, or --tiny for a CPU check).
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
	local candidate
	for candidate in "${PYTHON:-}" .venv/bin/python python3; do
		[[ -n $candidate ]] || continue
		if "$candidate" -c 'import torch, diffusers, transformers, grpc, cv2, PIL' 2>/dev/null; then
			echo "$candidate"
			return 0
		fi
	done
	return 1
}

if ! python=$(pick_python); then
	echo "gpu.sh: no Python with torch, diffusers, transformers, grpcio, opencv and pillow;" >&2
	echo "        build .venv (make venv) or set PYTHON" >&2
	exit 2
fi

out_args=()
if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
	out_args=(--out "$OUT/gpu-bench.json")
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
exec timeout --signal=INT --kill-after=20 460 "$python" bench/gpu_bench.py --budget-s 330 "${out_args[@]}" "$@"
