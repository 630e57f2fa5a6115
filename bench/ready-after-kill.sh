#!/usr/bin/env bash
# Time from a SIGKILL of the engine to /readyz answering 200 again, for the
# `make run` demo (tiny model, 512 px). Starts `make run` on a free loopback
# port, waits until it is ready, then RUNS times: kill -9 the engine, poll
# /readyz every 50 ms until a new engine is ready. Kills are spaced past
# ENGINE_BACKOFF_MAX (30 s), so every restart is a first failure. Prints each
# time and the engine's own `engine ready` breakdown (import_s, load_s,
# warmup_s, ready_s).
#   bench/ready-after-kill.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
tmp=$(mktemp -d)
log=$tmp/sidecar.log
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LISTEN_ADDR=127.0.0.1:$port ADMIN_ADDR=off setsid make --no-print-directory run >/dev/null 2>"$log" &
leader=$!
trap 'kill -TERM -- "-$leader" 2>/dev/null || true; wait "$leader" 2>/dev/null || true; rm -rf "$tmp"' EXIT
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; }
engine_pid() { grep '"msg":"engine started"' "$log" | tail -1 | sed -E 's/.*"engine_pid":([0-9]+).*/\1/'; }
now() { date +%s.%N; }
until ready; do sleep 0.05; done
for r in $(seq "$runs"); do
	sleep 32
	old=$(engine_pid)
	t0=$(now)
	kill -9 "$old"
	until [[ $(engine_pid) != "$old" ]] && ready; do sleep 0.05; done
	echo "run $r: ready $(python3 -c "print(round($(now) - $t0, 2))") s after kill -9 (load $(cut -d' ' -f1 /proc/loadavg))"
done
curl -s "http://127.0.0.1:$port/readyz"
echo
grep '"msg":"engine ready"' "$log" | grep '"source":"engine"' |
	grep -o '"\(import_s\|load_s\|warmup_s\|ready_s\)":[0-9.]*' | paste -sd' ' | sed 's/ "import_s"/\n"import_s"/g'
