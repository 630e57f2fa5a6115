#!/usr/bin/env bash
# What the sidecar adds to a 1024 px job, and how fast it refuses work with
# the GPU saturated. Self mode on the torch-free test engine (enginetest), so
# the engine's own time is small and exactly known; local-folder storage
# under STORE_DIR (default a temporary folder; /dev/shm leaves the disk's
# fsync latency out and shows the sidecar's own work). TRACING=on exports
# every span of both processes over OTLP/HTTP to a sink on loopback that
# accepts and drops them, for the cost of tracing when it is on.
#   [STORE_DIR=/dev/shm] [TRACING=on] bench/sidecar-overhead.sh [JOBS] [REFUSALS]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-200}
refusals=${2:-2000}
make -s venv
tmp=$(mktemp -d)
store=$(mktemp -d "${STORE_DIR:-$tmp}/vstage-bench.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$tmp" "$store"' EXIT
go build -o "$tmp/sidecar" ./cmd/sidecar
go build -o "$tmp/overhead" ./bench/overhead
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 300); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done; echo "not ready" >&2; exit 1; }
common=(INFERENCE_MODE=self ENGINE_MODULE=enginetest ENGINE_TINY_MODEL=true ENGINE_PYTHON=.venv/bin/python SEED_DEMO=true OUTPUT_LONG_SIDE=1024 ADMIN_ADDR=off)
if [ "${TRACING:-off}" = on ]; then
  sink=$(free_port)
  python3 -c '
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)  # an empty body is an empty ExportTraceServiceResponse
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
' "$sink" &
  pids+=($!)
  common+=(OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink)
  echo "tracing on: every span exported to a sink on 127.0.0.1:$sink"
fi

port=$(free_port)
env "${common[@]}" LISTEN_ADDR=127.0.0.1:$port STORAGE_URL=file://$store/a "$tmp/sidecar" >/dev/null 2>"$tmp/a.log" &
pids+=($!)
wait_ready "$port"
echo "== a 1536x1024 JPEG staged at 1024 px, one job at a time =="
"$tmp/overhead" -mode job -url "http://127.0.0.1:$port/infer" -log "$tmp/a.log" -n "$jobs"

# One place, no queue, and a job that takes minutes holding it.
port=$(free_port)
env "${common[@]}" ENGINE_TEST_STEP_DELAY=10 CONCURRENCY=1 QUEUE_DEPTH=0 LOG_LEVEL=warn \
  LISTEN_ADDR=127.0.0.1:$port STORAGE_URL=file://$store/b "$tmp/sidecar" >/dev/null 2>"$tmp/b.log" &
pids+=($!)
wait_ready "$port"
curl -sS -o /dev/null -X POST "http://127.0.0.1:$port/infer" -H 'Content-Type: application/json' \
  -d '{"image_id":"holder","original_key":"demo/empty_living_room.jpg","room_type":"living_room","style":"modern"}' 2>/dev/null &
sleep 1
echo "== refusals with the GPU saturated =="
"$tmp/overhead" -mode reject -url "http://127.0.0.1:$port/infer" -n "$refusals" -c 8
