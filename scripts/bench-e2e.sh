#!/usr/bin/env bash
# The daemon's benchmarks (BENCHMARKS.md, "Daemon"): durable ingest at
# saturation beside plain pgbench single-row inserts on the same database,
# then end to end at a fixed rate. Uses DATABASE_URL if it answers (give it a
# server with its normal durability settings: the throwaway cluster of
# pg.sh runs with fsync off and is not representative), else a throwaway
# cluster. Creates and drops the database pubbot_bench.
#
#   ./scripts/bench-e2e.sh [RATE] [DURATION_SECS]     (default 1000 60)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
ensure_postgres
RATE=${1:-1000}
DURATION=${2:-60}
ADMIN_URL=$DATABASE_URL
BENCH_URL="${DATABASE_URL%/*}/pubbot_bench"
WORK=$(mktemp -d /tmp/pubbot-bench.XXXXXX)
PUBBOT_PID=
cleanup() {
  [ -n "$PUBBOT_PID" ] && kill "$PUBBOT_PID" 2>/dev/null && wait "$PUBBOT_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap 'cleanup; type stop_throwaway_pg >/dev/null 2>&1 && [ -n "${PG_TMP:-}" ] && stop_throwaway_pg' EXIT

log "building release binaries"
SQLX_OFFLINE=true cargo build --release --quiet -p pubbot -p pubbot-sim
PUBBOT=target/release/pubbot
SIM=target/release/pubbot-sim

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS pubbot_bench" -c "CREATE DATABASE pubbot_bench"
export PUBBOT__DATABASE__URL="$BENCH_URL"
cat > "$WORK/bench.toml" <<TOML
[http]
listen = "127.0.0.1:18080"
[[apps]]
key = "bench-app"
secret = "bench-secret"
api_base_url = "http://127.0.0.1:18090"
rate_limit_per_sec = 100000
accounts = ["bench"]
TOML
$PUBBOT --config "$WORK/bench.toml" migrate >/dev/null
$PUBBOT --config "$WORK/bench.toml" rules import config/bench-rules.toml >/dev/null

start_pubbot() {
  RUST_LOG=warn $PUBBOT --config "$WORK/bench.toml" serve &
  PUBBOT_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && return; sleep 0.1; done
  echo "pubbot did not start" >&2; exit 1
}
stop_pubbot() { kill "$PUBBOT_PID"; wait "$PUBBOT_PID" || true; PUBBOT_PID=; }
LOAD=($SIM --listen 127.0.0.1:18090 --app bench-app:bench-secret load --route-url http://127.0.0.1:18080/webhook/bench-app --mcid bench)

echo "## durable ingest at saturation (32 concurrent pushers, 20 s, decide/send workers off)"
PUBBOT__WORKERS__DECIDE=0 PUBBOT__WORKERS__SEND=0 start_pubbot
"${LOAD[@]}" --concurrency 32 --duration 20 --grace 0 | sed -n 1p
stop_pubbot

echo "## baseline: pgbench, 32 clients, single-row INSERT of the same row shape, 20 s"
psql "$BENCH_URL" -qc "CREATE TABLE pgbench_inbound (LIKE inbound_messages INCLUDING ALL)"
cat > "$WORK/insert.sql" <<'SQL'
\set n random(1, 2000000000)
INSERT INTO pgbench_inbound (app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id)
VALUES ('bench-app', 'bench', 'load-user-' || :client_id, 'text', 'm:5:bench:' || :client_id || '-' || :n, :n::text, 1764115200000,
        '{"to":"bench","from":"load-user-1","create_time":1764115200000,"msg_id":"1","body":{"kind":"text","content":"bench 1"}}',
        '<xml>\n <ToUserName><![CDATA[bench]]></ToUserName>\n <FromUserName><![CDATA[load-user-1]]></FromUserName>\n <CreateTime>1764115200000</CreateTime>\n <MsgType><![CDATA[text]]></MsgType>\n <Content><![CDATA[bench 1]]></Content>\n <MsgId>1764115200000001</MsgID>\n</xml>',
        '0123456789abcdef')
ON CONFLICT DO NOTHING;
SQL
pgbench -n -c 32 -j 2 -T 20 -f "$WORK/insert.sql" "$BENCH_URL" 2>/dev/null | grep -E "^tps|latency average"

echo "## end to end: $RATE pushes/s for $DURATION s, 1000 users"
psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE"
start_pubbot
"${LOAD[@]}" --rate "$RATE" --duration "$DURATION" --users 1000 --grace 30
stop_pubbot
echo "## where the time goes (ms, p50 / p90 / p99; now() is each transaction's start)"
psql "$BENCH_URL" -At -F ' ' -c "
  SELECT 'stored -> decided', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM processed_at - received_at) * 1000 AS ms FROM inbound_messages) t
  UNION ALL
  SELECT 'decided -> marked sent', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM sent_at - created_at) * 1000 AS ms FROM outbound_messages) t"
psql "$ADMIN_URL" -qc "DROP DATABASE pubbot_bench"
