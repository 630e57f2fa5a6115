#!/usr/bin/env bash
# Memory of mock mode, the path every job takes behind the kill switch:
# starts a sidecar in mock mode on a throwaway local store, sends BURST
# concurrent jobs for 36 MP inputs (PNG, then JPEG) and reports the peak
# resident memory of each burst, then JOBS ordinary jobs from 16 clients and
# the resident memory after them. Extra settings pass through the
# environment, e.g. DECODE_PIXEL_BUDGET=100000000 bench/mock-memory.sh.
#   bench/mock-memory.sh [BURST] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
burst=${1:-16}
jobs=${2:-1000}
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/sidecar" ./cmd/sidecar
go build -o "$tmp/mockmem" ./bench/mockmem
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
INFERENCE_MODE=mock ADMIN_ADDR=off LISTEN_ADDR=127.0.0.1:$port STORAGE_URL=file://$tmp/store SEED_DEMO=true \
	LOG_LEVEL=warn REQUEST_TIMEOUT=10m "$tmp/sidecar" >/dev/null &
pid=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
"$tmp/mockmem" -url "http://127.0.0.1:$port/infer" -store "$tmp/store" -pid "$pid" -burst "$burst" -jobs "$jobs"
