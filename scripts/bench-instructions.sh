#!/usr/bin/env bash
# Instructions per message, counted by callgrind: user-space work of the
# daemon (or of the load generator + simulator) per push answered,
# repeatable whatever else the machine is doing (BENCHMARKS.md, session 6:
# this VM's speed moved by 15 % within the hour and by 3x between days, so
# CPU-time A/B runs could not tell a 6 % change from the drift).
#
#   ./scripts/bench-instructions.sh [pubbot|sim] [RATE]     (default pubbot 20)
#
# Runs the process under valgrind twice, SHORT and LONG seconds of pushes
# at RATE (default 10 and 40), the other process at full speed, and prints
# (Ir(LONG) - Ir(SHORT)) / (RATE * (LONG - SHORT)): the start-up cancels
# out. At 20 pushes/s every ingest and settle batch holds one message, so
# the batched stages weigh more than at 1,000/s; it is a tool for A/B
# comparisons (PUBBOT_BIN, SIM_BIN), not a figure of the CPU at load. Uses
# DATABASE_URL if it answers, else a throwaway cluster; creates and drops
# the database pubbot_instr. Kernel time (the network stack, thread
# switches) is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
source scripts/bench-daemon.sh
ensure_postgres
WHICH=${1:-pubbot}
RATE=${2:-20}
SHORT=${SHORT:-10}
LONG=${LONG:-40}
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }
if [ -z "${PUBBOT_BIN:-}" ] || [ -z "${SIM_BIN:-}" ]; then
  log "building release binaries"
  SQLX_OFFLINE=true cargo build --release --quiet -p pubbot -p pubbot-sim
fi
PUBBOT=${PUBBOT_BIN:-target/release/pubbot}
SIM=${SIM_BIN:-target/release/pubbot-sim}
ADMIN_URL=$DATABASE_URL
DB_URL="${DATABASE_URL%/*}/pubbot_instr"
WORK=$(mktemp -d /tmp/pubbot-instr.XXXXXX)
PUBBOT_PID=
cleanup() {
  [ -n "$PUBBOT_PID" ] && kill "$PUBBOT_PID" 2>/dev/null && wait "$PUBBOT_PID" 2>/dev/null
  rm -rf "$WORK"
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS pubbot_instr" 2>/dev/null || true
}
trap 'cleanup; type stop_throwaway_pg >/dev/null 2>&1 && [ -n "${PG_TMP:-}" ] && stop_throwaway_pg' EXIT

# Instructions of one run of SECS seconds of pushes.
run() {
  local secs=$1 pv=() sv=()
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS pubbot_instr" -c "CREATE DATABASE pubbot_instr" 2>/dev/null
  PUBBOT__DATABASE__URL="$DB_URL" bench_daemon "$WORK/instr.toml" "$WORK/spool"
  rm -f "$WORK/cg.out"
  [ "$WHICH" = pubbot ] && pv=(valgrind -q --tool=callgrind --callgrind-out-file="$WORK/cg.out")
  [ "$WHICH" = sim ] && sv=(valgrind -q --tool=callgrind --callgrind-out-file="$WORK/cg.out")
  PUBBOT__DATABASE__URL="$DB_URL" RUST_LOG=warn "${pv[@]}" $PUBBOT --config "$WORK/instr.toml" serve 2>"$WORK/pubbot.err" &
  PUBBOT_PID=$!
  for _ in $(seq 1 300); do curl -sf http://127.0.0.1:19090/healthz >/dev/null && break; sleep 0.2; done
  "${sv[@]}" $SIM --threads 1 --listen 127.0.0.1:18090 --app bench-app:bench-secret load \
    --route-url http://127.0.0.1:18080/webhook/bench-app --mcid bench \
    --rate "$RATE" --duration "$secs" --users 1000 --grace 30 > "$WORK/load.out" 2>"$WORK/sim.err"
  kill "$PUBBOT_PID"; wait "$PUBBOT_PID" || true; PUBBOT_PID=
  grep -q "lost 0 " "$WORK/load.out" || { echo "error: replies were lost under valgrind:" >&2; cat "$WORK/load.out" >&2; exit 1; }
  callgrind_annotate "$WORK/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}'
}

A=$(run "$SHORT")
B=$(run "$LONG")
echo "$WHICH: $(( (B - A) / (RATE * (LONG - SHORT)) )) instructions per message ($RATE pushes/s; ${SHORT} s run $A, ${LONG} s run $B)"
