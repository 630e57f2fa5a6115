#!/usr/bin/env bash
# Load run of mock /infer: starts a sidecar on a free loopback port with a
# throwaway local store seeded with the sample photo, sends N jobs from C
# clients (fresh image_ids, so each one decodes, resizes, encodes and writes),
# then the same count as idempotent replays, and stops the sidecar.
#   bench/load-mock.sh [CLIENTS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-4}
jobs=${2:-400}
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/sidecar" ./cmd/sidecar
go build -o "$tmp/loadgen" ./bench/loadgen
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
INFERENCE_MODE=mock ADMIN_ADDR=off LISTEN_ADDR=127.0.0.1:$port STORAGE_URL=file://$tmp/store SEED_DEMO=true LOG_LEVEL=warn "$tmp/sidecar" >/dev/null &
pid=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "fresh jobs (1536x1024 JPEG in, 1024x683 JPEG out):"
"$tmp/loadgen" -url "http://127.0.0.1:$port/infer" -c "$clients" -n "$jobs"
echo "replays:"
"$tmp/loadgen" -url "http://127.0.0.1:$port/infer" -c "$clients" -n "$jobs" -replay
