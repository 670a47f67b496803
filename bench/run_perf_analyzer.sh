#!/usr/bin/env bash
# Run Triton's perf_analyzer against an ortserve daemon on loopback, one run per concurrency.
#
#   bench/run_perf_analyzer.sh [CONCURRENCY...]      # default: 1 8 32
#
# Builds bench/.repo (python -m bench.make_repo), starts the daemon on 127.0.0.1 and a free port,
# waits for "ready", runs perf_analyzer (each run under `timeout 300`), stops the daemon.
# Results: bench/results/<UTC time>/{c<N>.csv,c<N>.log,daemon.log,uptime.txt}; uptime.txt also
# holds bench.ort_probe's in-process ORT rate before and after (the host's noise level).
# Env: PYTHON (default .venv/bin/python), PA (perf_analyzer; default: the shared setup script's
# wrapper), PA_FLAGS (default "-p 3000 -s 25 -r 6"), PA_LOOSE_FLAGS (default "-p 3000 -s 40 -r 10":
# used for a second try when perf_analyzer cannot stabilize with PA_FLAGS; the log says which).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PA=${PA:-$(bash scripts/perf-analyzer-setup.sh)}
PA_FLAGS=${PA_FLAGS:--p 3000 -s 25 -r 6}
PA_LOOSE_FLAGS=${PA_LOOSE_FLAGS:--p 3000 -s 40 -r 10}
concurrencies=("${@:-1 8 32}")
read -r -a concurrencies <<<"${concurrencies[*]}"
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

"$PYTHON" -m bench.make_repo bench/.repo >/dev/null
data=bench/.repo/encoder-input-seq32.json
port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$PYTHON" -m ortserve serve --model-repository bench/.repo --host 127.0.0.1 --grpc-port "$port" \
  >"$out/daemon.log" 2>&1 &
daemon=$!
stop() { kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 120); do
  grep -q '] ready ' "$out/daemon.log" && break
  kill -0 "$daemon" 2>/dev/null || { cat "$out/daemon.log" >&2; exit 1; }
  sleep 0.5
done
grep -q '] ready ' "$out/daemon.log" || { echo "daemon not ready after 60 s" >&2; exit 1; }

{ echo "before: $(uptime)"; echo "before: $("$PYTHON" -m bench.ort_probe bench/.repo)"; } \
  >"$out/uptime.txt"
run_pa() {  # CONCURRENCY FLAGS...
  local c=$1
  shift
  echo "flags: $*" >"$out/c$c.log"
  timeout 300 "$PA" -i grpc -u "127.0.0.1:$port" -m encoder -b 1 \
    --shape input_ids:32 --shape attention_mask:32 --input-data "$data" \
    --concurrency-range "$c:$c" -f "$out/c$c.csv" "$@" >>"$out/c$c.log" 2>&1
}
for c in "${concurrencies[@]}"; do
  # shellcheck disable=SC2086  # the FLAGS variables are lists of flags
  if ! run_pa "$c" $PA_FLAGS; then
    if grep -q 'Failed to obtain stable measurement' "$out/c$c.log"; then
      mv "$out/c$c.log" "$out/c$c.unstable.log"
      run_pa "$c" $PA_LOOSE_FLAGS \
        || { echo "perf_analyzer failed at concurrency $c, see $out/c$c.log" >&2; exit 1; }
    else
      echo "perf_analyzer failed at concurrency $c, see $out/c$c.log" >&2
      exit 1
    fi
  fi
  echo "$(head -n 1 "$out/c$c.log" | cut -c 8-) | $(tail -n 1 "$out/c$c.csv")"
done
{ echo "after:  $(uptime)"; echo "after:  $("$PYTHON" -m bench.ort_probe bench/.repo)"; } \
  >>"$out/uptime.txt"
cat "$out/uptime.txt"
echo "results: $out"
