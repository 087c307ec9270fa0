#!/usr/bin/env bash
# Slow clients beside real pushes (BENCHMARKS.md, "Slow clients"; issue 28):
# SLOW connections (default 3,000, from 30 loopback addresses) each trickle
# a header line every 5 s and reconnect when closed, for DURATION seconds,
# while the simulator pushes RATE messages/s. Prints the load generator's
# report (pushes answered, lost, p99), what became of the slow connections,
# and the most descriptors pubbot held. A baseline from the same run: the
# same pushes without the slow clients.
#
#   ./scripts/bench-slow-clients.sh [RATE] [DURATION_SECS] [SLOW]   (default 500 60 3000)
#
# PUBBOT_BIN / SIM_BIN: builds to measure (else a release build). Traffic
# goes to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-500}
DURATION=${2:-60}
SLOW=${3:-3000}
source scripts/bench-daemon.sh
bench_prepare pubbot_bench_slow
ulimit -n 65536 2>/dev/null || true

run() {
  local slow=$1
  psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE"
  RUST_LOG=warn $PUBBOT --config "$WORK/bench.toml" serve 2> "$WORK/pubbot.log" &
  PUBBOT_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19090/healthz >/dev/null && break; sleep 0.1; done
  local loris=
  if [ "$slow" -gt 0 ]; then
    python3 scripts/slowloris.py 127.0.0.1 18080 "$slow" "$((DURATION + 10))" 5 2 100 > "$WORK/loris.out" &
    loris=$!
    sleep 10   # the slow connections first, as an attacker would
  fi
  local fds=0
  ( while kill -0 "$PUBBOT_PID" 2>/dev/null; do ls /proc/"$PUBBOT_PID"/fd 2>/dev/null | wc -l; sleep 1; done ) > "$WORK/fds" &
  local sampler=$!
  $SIM --threads 2 --listen 127.0.0.1:18090 --app bench-app:bench-secret load \
    --route-url http://127.0.0.1:18080/webhook/bench-app --mcid bench \
    --rate "$RATE" --duration "$DURATION" --users 1000 --grace 60
  [ -n "$loris" ] && wait "$loris" && cat "$WORK/loris.out"
  fds=$(sort -n "$WORK/fds" | tail -1)
  echo "pubbot: most descriptors held $fds; connections closed by the listener: $(curl -s http://127.0.0.1:19090/metrics | awk '/^pubbot_webhook_connections_closed_total/ {printf "%s %s ", $1, $2}')"
  echo "pubbot: log lines at warn: $(wc -l < "$WORK/pubbot.log")"
  kill "$PUBBOT_PID"; wait "$PUBBOT_PID" || true; PUBBOT_PID=
  kill "$sampler" 2>/dev/null || true
}

echo "## baseline: $RATE pushes/s for $DURATION s, no slow clients"
run 0
echo "## $RATE pushes/s for $DURATION s with $SLOW slow connections (a header line every 5 s, reconnecting)"
run "$SLOW"
