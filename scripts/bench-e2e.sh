#!/usr/bin/env bash
# The daemon's benchmarks (BENCHMARKS.md, "Daemon"): durable ingest at
# saturation beside plain pgbench single-row inserts on the same database,
# end to end at a fixed rate (with the CPU split), and batchsend merging
# under the platform's rate limit. Uses DATABASE_URL if it answers (give it a
# server with its normal durability settings: the throwaway cluster of
# pg.sh runs with fsync off and is not representative), else a throwaway
# cluster. Creates and drops the database pubbot_bench.
#
#   ./scripts/bench-e2e.sh [RATE] [DURATION_SECS]     (default 1000 60)
#
# PHASES picks what runs (default all, in this order): ingest pgbench e2e
# steps overload retention batchsend. E.g. PHASES="e2e" for the CPU split alone.
# E2E_THREADS (default "0 1"): pubbot's workers.threads for each fixed-rate
# run; STEPS, OVERLOAD_RATE, OVERLOAD_SECS, PUSH_CONNECTIONS, SIM_THREADS
# as below; KEEP_DB=1 keeps the database pubbot_bench for a look after.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1000}
PHASES=${PHASES:-"ingest pgbench e2e steps overload retention batchsend"}
phase() { [[ " $PHASES " == *" $1 "* ]]; }
DURATION=${2:-60}
source scripts/bench-daemon.sh
bench_prepare pubbot_bench

start_pubbot() {
  RUST_LOG=warn $PUBBOT --config "$WORK/bench.toml" serve &
  PUBBOT_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19090/healthz >/dev/null && return; sleep 0.1; done
  echo "pubbot did not start" >&2; exit 1
}
stop_pubbot() { kill "$PUBBOT_PID"; wait "$PUBBOT_PID" || true; PUBBOT_PID=; }
# The simulator's threads: one (its default, the least CPU per message) for
# the fixed-rate run whose CPU is split; two where it must keep up with
# several thousand pushes and calls a second (the saturation, capacity and
# overload runs), so that it does not cap what pubbot is measured at.
SIM_THREADS=${SIM_THREADS:-2}
LOAD=($SIM --threads "$SIM_THREADS" ${PUSH_CONNECTIONS:+--push-connections "$PUSH_CONNECTIONS"} --listen 127.0.0.1:18090 --app bench-app:bench-secret load --route-url http://127.0.0.1:18080/webhook/bench-app --mcid bench)
# CPU ticks (100 per second = one core) of a process, of all postgres processes.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() { local t=0; for p in $(pgrep -x postgres); do t=$((t + $(ticks "$p"))); done; echo $t; }
# Context switches of a process, all its threads (voluntary + involuntary).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }

for C in 32 128; do
  phase ingest || break
  echo "## durable ingest at saturation ($C concurrent pushers, 20 s; decided at receipt, replies planned; decide/send workers off)"
  # Each phase starts after a checkpoint, so none pays for the WAL of the one before.
  psql "$BENCH_URL" -qc CHECKPOINT
  PUBBOT__WORKERS__DECIDE=0 PUBBOT__WORKERS__SEND=0 start_pubbot
  "${LOAD[@]}" --concurrency "$C" --duration 20 --grace 0 | sed -n 1p
  stop_pubbot
  psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE"
done

if phase pgbench; then
echo "## baseline: pgbench, 32 clients, single-row INSERT of the same row shape, 20 s"
psql "$BENCH_URL" -qc "CREATE TABLE pgbench_inbound (LIKE inbound_messages INCLUDING ALL)"
cat > "$WORK/insert.sql" <<'SQL'
\set n random(1, 2000000000)
INSERT INTO pgbench_inbound (app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id)
VALUES ('bench-app', 'bench', 'load-user-' || :client_id, 'text', 'm:5:bench:' || :client_id || '-' || :n, :n::text, 1764115200000,
        '{"to":"bench","from":"load-user-1","create_time":1764115200000,"msg_id":"1","body":{"kind":"text","content":"bench 1"}}',
        convert_to('<xml>\n <ToUserName><![CDATA[bench]]></ToUserName>\n <FromUserName><![CDATA[load-user-1]]></FromUserName>\n <CreateTime>1764115200000</CreateTime>\n <MsgType><![CDATA[text]]></MsgType>\n <Content><![CDATA[bench 1]]></Content>\n <MsgId>1764115200000001</MsgID>\n</xml>', 'UTF8'),
        '0123456789abcdef')
ON CONFLICT DO NOTHING;
SQL
psql "$BENCH_URL" -qc CHECKPOINT
pgbench -n -c 32 -j 2 -T 20 -f "$WORK/insert.sql" "$BENCH_URL" 2>/dev/null | grep -E "^tps|latency average" | tee "$WORK/pgbench.out"
# The machine's yardstick: its CPU time per pgbench single-row durable
# insert at saturation (cores / tps; the issue's "~220 µs" is this on a
# machine that ran 9,300 tps). This VM's speed moves by up to 3x from one
# day to the next (BENCHMARKS.md, session 6): the CPU per message below is
# also given as a multiple of it, both measured in the same run.
TPS=$(awk '/^tps/ {printf "%d", $3}' "$WORK/pgbench.out")
YARD=$(( $(nproc) * 1000000 / TPS ))
echo "yardstick: $(nproc) cores / $TPS tps = $YARD µs of machine time per single-row insert"
fi

# The fixed-rate run once per E2E_THREADS value (workers.threads: 0 = one
# per core, the default; 1 = one thread, less CPU per message).
for THREADS in ${E2E_THREADS:-0 1}; do
phase e2e || break
echo "## end to end: $RATE pushes/s for $DURATION s, 1000 users (simulator on one thread; pubbot workers.threads = $THREADS)"
psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE" -c CHECKPOINT
PUBBOT__WORKERS__THREADS=$THREADS start_pubbot
# With pg_stat_statements preloaded on the server, the statements of this
# run are printed after it (where PostgreSQL's time goes).
psql "$BENCH_URL" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null 2>&1 || true
"${LOAD[@]}" --threads 1 --rate "$RATE" --duration "$DURATION" --users 1000 --grace 30 > "$WORK/load.out" &
LOAD_PID=$!
# CPU split over the middle half of the run (this VM's speed drifts; a long
# window evens out its bursts).
WINDOW=$((DURATION / 2))
sleep $((DURATION / 4))
P0=$(pg_ticks); D0=$(ticks "$PUBBOT_PID"); L0=$(ticks "$LOAD_PID"); S0=$(switches "$PUBBOT_PID"); T0=$(switches "$LOAD_PID")
sleep "$WINDOW"
P1=$(pg_ticks); D1=$(ticks "$PUBBOT_PID"); L1=$(ticks "$LOAD_PID"); S1=$(switches "$PUBBOT_PID"); T1=$(switches "$LOAD_PID")
wait "$LOAD_PID"
cat "$WORK/load.out"
echo "cpu, $WINDOW s mid-run, % of one core: postgres $(( (P1 - P0) / WINDOW )) pubbot $(( (D1 - D0) / WINDOW )) load generator $(( (L1 - L0) / WINDOW ))"
# CPU per message: ticks are 10 ms of CPU; WINDOW s at RATE messages/s.
MSGS=$((RATE * WINDOW))
echo "context switches per message: pubbot $(awk "BEGIN {printf \"%.1f\", ($S1 - $S0) / $MSGS}") load generator+simulator $(awk "BEGIN {printf \"%.1f\", ($T1 - $T0) / $MSGS}")"
echo "cpu per message, µs: postgres $(( (P1 - P0) * 10000 / MSGS )) pubbot $(( (D1 - D0) * 10000 / MSGS )) load generator+simulator $(( (L1 - L0) * 10000 / MSGS )) total $(( (P1 - P0 + D1 - D0 + L1 - L0) * 10000 / MSGS ))"
if [ -n "${YARD:-}" ] && [ "$YARD" -gt 0 ]; then
  x() { awk "BEGIN {printf \"%.2f\", $1 * 10000 / $MSGS / $YARD}"; }
  echo "cpu per message, x the yardstick ($YARD µs): postgres $(x $((P1 - P0))) pubbot $(x $((D1 - D0))) load generator+simulator $(x $((L1 - L0))) total $(x $((P1 - P0 + D1 - D0 + L1 - L0))) (the issue's targets, 200/150/100/400 µs over its 220: 0.91/0.68/0.45/1.82)"
fi
stop_pubbot
psql "$BENCH_URL" -c "SELECT calls, round(total_exec_time) AS exec_ms, round(total_plan_time) AS plan_ms, rows,
                             left(regexp_replace(query, '\s+', ' ', 'g'), 80) AS statement
                        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                       ORDER BY total_exec_time + total_plan_time DESC LIMIT 8" 2>/dev/null || true
echo "## where the time goes (ms, p50 / p90 / p99; now() is each transaction's start)"
psql "$BENCH_URL" -At -F ' ' -c "
  SELECT 'stored -> decided', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM processed_at - received_at) * 1000 AS ms FROM inbound_messages) t
  UNION ALL
  SELECT 'decided -> marked sent', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM sent_at - created_at) * 1000 AS ms FROM outbound_messages) t"
done

# Capacity: the highest of STEPS (pushes/s, 20 s each) at which nothing is
# lost and p99 push-to-reply stays under 100 ms, beside pgbench's
# single-row tps from the baseline above.
STEPS=${STEPS:-"1000 2000 3000 4000 5000 6000"}
# STEP_RUNS runs of each step (default 1); the step passes on the median
# p99 and on nothing lost in any run. On this VM one 20 s run's p99 swings
# by a factor of three (BENCHMARKS.md, session 5): 3 gives a figure to
# trust, at three times the time.
STEP_RUNS=${STEP_RUNS:-1}
CAPACITY=0
for STEP in $STEPS; do
  phase steps || break
  P99S=() LOST=0
  for _ in $(seq 1 "$STEP_RUNS"); do
    psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE" -c CHECKPOINT
    start_pubbot
    "${LOAD[@]}" --rate "$STEP" --duration 20 --users 1000 --grace 60 > "$WORK/step.out" &
    LOAD_PID=$!
    # CPU of each process over the middle 10 s of the 20 s of pushes: is
    # the machine full, and who has it (the load generator and simulator
    # share the machine with pubbot and PostgreSQL).
    sleep 5
    P0=$(pg_ticks); D0=$(ticks "$PUBBOT_PID"); L0=$(ticks "$LOAD_PID")
    sleep 10
    P1=$(pg_ticks); D1=$(ticks "$PUBBOT_PID"); L1=$(ticks "$LOAD_PID")
    wait "$LOAD_PID"
    echo "cpu, % of one core: postgres $(( (P1 - P0) / 10 )) pubbot $(( (D1 - D0) / 10 )) load generator+simulator $(( (L1 - L0) / 10 )) (of $(( $(nproc) * 100 )))" > "$WORK/cpu.out"
    # Where the messages of this run waited, from the daemon's histograms.
    curl -s http://127.0.0.1:19090/metrics | python3 scripts/stages.py > "$WORK/stages.out" || true
    stop_pubbot
    P99S+=("$(sed -n 's/.*p99 \([0-9.]*\).*/\1/p' "$WORK/step.out" | head -1)")
    L=$(sed -n 's/.*lost \([0-9]*\).*/\1/p' "$WORK/step.out" | head -1)
    LOST=$((LOST + ${L:-1}))
  done
  P99=$(printf '%s\n' "${P99S[@]}" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
  echo "## step $STEP pushes/s: p99 ${P99} ms (runs: ${P99S[*]}), lost ${LOST}"
  sed -n 1p "$WORK/step.out"
  cat "$WORK/cpu.out"
  [ -z "${SHOW_STAGES:-}" ] || cat "$WORK/stages.out"
  if [ "$LOST" = 0 ] && awk "BEGIN { exit !(${P99:-1e9} < 100) }"; then CAPACITY=$STEP; else break; fi
done
if phase steps; then
  RATIO=
  [ -n "${TPS:-}" ] && RATIO=" = $(awk "BEGIN {printf \"%.2f\", $CAPACITY / $TPS}")x the pgbench tps above ($TPS)"
  echo "## capacity: $CAPACITY pushes/s with p99 < 100 ms and nothing lost$RATIO"
fi

# Overload: about three times what the machine can take, then the drain.
# What cannot be committed in time goes to the spool and is answered; the
# drain time is from the last push until every acknowledged push is
# answered. Peak RSS is the kernel's high-water mark (VmHWM).
# Three times the capacity found above (18,000 when the steps did not run).
OVERLOAD_RATE=${OVERLOAD_RATE:-$(( CAPACITY > 0 ? 3 * CAPACITY : 18000 ))}
OVERLOAD_SECS=${OVERLOAD_SECS:-60}
if phase overload; then
echo "## overload: $OVERLOAD_RATE pushes/s for $OVERLOAD_SECS s, 1000 users, then the drain"
psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE" -c CHECKPOINT
start_pubbot
"${LOAD[@]}" --rate "$OVERLOAD_RATE" --duration "$OVERLOAD_SECS" --users 1000 --grace 900
echo "pubbot memory: peak $(awk '/VmHWM/ {print $2, $3}' /proc/$PUBBOT_PID/status), after the drain $(awk '/VmRSS/ {print $2, $3}' /proc/$PUBBOT_PID/status)"
# Every duplicate above is one of these (outbox invariant 7).
echo "replies that may have gone twice, counted (ambiguous retries + recovered leases): $(curl -s http://127.0.0.1:19090/metrics | awk '/^pubbot_outbound_(ambiguous_retries|recovered)_total/ {s += $2} END {print s + 0}')"
stop_pubbot
psql "$BENCH_URL" -At -F ' ' -c "SELECT 'replies', status, count(*), 'tries', sum(attempts) FROM outbound_messages GROUP BY status"
# A push answered twice: stored twice (two push ids), or sent twice (tries).
psql "$BENCH_URL" -At -F ' ' -c "SELECT 'answered twice:', i.message->'body'->>'content', 'pushes', array_agg(DISTINCT i.id), 'tries', array_agg(o.attempts)
                                  FROM outbound_messages o JOIN inbound_messages i ON i.id = o.inbound_id
                                 WHERE o.status = 'sent' GROUP BY 2 HAVING count(*) > 1 LIMIT 10"
fi

# Retention: a day 40 days back holding OLD_ROWS pushes and OLD_ROWS
# replies, and `pubbot prune` dropping it halfway through a run at RATE
# pushes/s (the daemon's own retention off, so the drop lands mid-run): the
# p99 beside the fixed-rate run's above, the time the drop took under load,
# and the dry run's time (from the catalog).
OLD_ROWS=${OLD_ROWS:-1000000}
if phase retention; then
echo "## retention: a day of $OLD_ROWS old pushes + $OLD_ROWS old replies dropped while taking $RATE pushes/s for $DURATION s"
psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages" \
  -c "SELECT pubbot_create_partitions(current_date - 40, current_date - 40)" \
  -c "INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status, received_at, processed_at)
      SELECT pubbot_id(current_date - 40, i), current_date - 40, 'bench-app', 'bench', 'old-user-' || (i % 1000), 'text', 'old:' || i,
             '{\"body\":{\"kind\":\"text\",\"content\":\"old\"}}', convert_to('<xml>old</xml>', 'UTF8'), 'old', 'done',
             now() - interval '40 days', now() - interval '40 days'
        FROM generate_series(1, $OLD_ROWS) i" \
  -c "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status, created_at, sent_at)
      SELECT id, day, id, 0, app_key, mcid, user_id, 'old', '{\"type\":\"text\",\"content\":\"old\"}', 'old', 'sent', received_at, received_at
        FROM inbound_messages" -c "VACUUM ANALYZE" -c CHECKPOINT
export PUBBOT__RETENTION__DAYS=0
start_pubbot
unset PUBBOT__RETENTION__DAYS
"${LOAD[@]}" --threads 1 --rate "$RATE" --duration "$DURATION" --users 1000 --grace 30 > "$WORK/load.out" &
LOAD_PID=$!
sleep $((DURATION / 2))
D0=$(date +%s.%N)
$PUBBOT --config "$WORK/bench.toml" prune --dry-run --days 30
D1=$(date +%s.%N)
$PUBBOT --config "$WORK/bench.toml" prune --days 30
T1=$(date +%s.%N)
wait "$LOAD_PID"
cat "$WORK/load.out"
LEFT=$(psql "$BENCH_URL" -At -c "SELECT count(*) FROM inbound_messages WHERE day = current_date - 40")
echo "retention: dry run $(awk "BEGIN {printf \"%.3f\", $D1 - $D0}") s; a day of $((2 * OLD_ROWS)) rows dropped in $(awk "BEGIN {printf \"%.3f\", $T1 - $D1}") s (the whole command, connecting and migrating check included) under load; $LEFT left"
stop_pubbot
fi

# batchsend: everybody gets the same reply, the platform allows 200 calls/s
# and the daemon keeps to it; 1,000 pushes/s for 10 s, merging on and off.
$PUBBOT --config "$WORK/bench.toml" rules import --replace config/bench-static-rules.toml >/dev/null
for MERGE in true false; do
  phase batchsend || break
  echo "## batchsend merging $MERGE: one static reply, 1000 pushes/s for 10 s, platform limit 200 calls/s"
  psql "$BENCH_URL" -qc "TRUNCATE inbound_messages, outbound_messages CASCADE"
  sed 's/^rate_limit_per_sec = .*/rate_limit_per_sec = 200/' "$WORK/bench.toml" > "$WORK/limited.toml"
  PUBBOT__SENDER__MERGE_BATCHSEND=$MERGE RUST_LOG=warn $PUBBOT --config "$WORK/limited.toml" serve &
  PUBBOT_PID=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19090/healthz >/dev/null && break; sleep 0.1; done
  $SIM --listen 127.0.0.1:18090 --app bench-app:bench-secret --rate-limit 200 load \
    --route-url http://127.0.0.1:18080/webhook/bench-app --mcid bench \
    --rate 1000 --duration 10 --unique-users --grace 120
  stop_pubbot
done
[ -n "${KEEP_DB:-}" ] || psql "$ADMIN_URL" -qc "DROP DATABASE pubbot_bench"
