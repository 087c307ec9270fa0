# Sourced by the benchmarks: the daemon's benchmark configuration (one app,
# one account, the simulator's API on 18090, the webhook on 18080, the
# admin listener on 19090) and its database prepared.
#
#   bench_daemon CONFIG_FILE SPOOL_DIR    (uses PUBBOT, and the database
#                                          of PUBBOT__DATABASE__URL)
bench_daemon() {
  cat > "$1" <<TOML
[http]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
[ingest]
spool_dir = "$2"
[[apps]]
key = "bench-app"
secret = "bench-secret"
api_base_url = "http://127.0.0.1:18090"
rate_limit_per_sec = 100000
accounts = ["bench"]
TOML
  $PUBBOT --config "$1" migrate >/dev/null
  $PUBBOT --config "$1" rules import config/bench-rules.toml >/dev/null
}

# What every benchmark script does first: a PostgreSQL that answers, the
# binaries to measure (PUBBOT_BIN / SIM_BIN, e.g. an older commit's for an
# A/B; else a release build), a work folder and a database DB_NAME of its
# own, made anew, with the benchmark configuration applied. Sets ADMIN_URL,
# BENCH_URL, WORK, PUBBOT, SIM and PUBBOT_PID; on exit stops a pubbot
# started as PUBBOT_PID, removes WORK and any throwaway cluster.
#
#   bench_prepare DB_NAME
bench_prepare() {
  source scripts/pg.sh
  ensure_postgres
  ADMIN_URL=$DATABASE_URL
  BENCH_URL="${DATABASE_URL%/*}/$1"
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PUBBOT_PID=
  trap 'bench_cleanup; type stop_throwaway_pg >/dev/null 2>&1 && [ -n "${PG_TMP:-}" ] && stop_throwaway_pg' EXIT
  if [ -z "${PUBBOT_BIN:-}" ] || [ -z "${SIM_BIN:-}" ]; then
    log "building release binaries"
    SQLX_OFFLINE=true cargo build --release --quiet -p pubbot -p pubbot-sim
  fi
  PUBBOT=${PUBBOT_BIN:-target/release/pubbot}
  SIM=${SIM_BIN:-target/release/pubbot-sim}
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
  export PUBBOT__DATABASE__URL="$BENCH_URL"
  bench_daemon "$WORK/bench.toml" "$WORK/spool"
}

bench_cleanup() {
  [ -n "$PUBBOT_PID" ] && kill "$PUBBOT_PID" 2>/dev/null && wait "$PUBBOT_PID" 2>/dev/null
  rm -rf "$WORK"
}
