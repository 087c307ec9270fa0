#!/usr/bin/env bash
# A soak under random faults (issue 25): two pubbot replicas behind a
# round-robin balancer, one PostgreSQL of its own (so it can be restarted),
# the simulator as platform and load generator, for MINUTES at RATE pushes/s.
# At random times (every 20-60 s) one fault:
#
#   kill9     kill -9 a replica, start it again 3-8 s later
#   pgrestart restart PostgreSQL (fast shutdown: sessions cut)
#   drop      the platform drops 30% of call connections for 15 s (the call
#             is carried out: an answer lost)
#   limit     the platform answers 1008 above 20 calls/s for 15 s
#   retention `pubbot prune --days 1` (a day 3 days back is seeded at start,
#             so the first one drops it)
#
# And every DAY_SECS (default 180) the calendar moves to the next day, on
# the platform (/_sim/clock) and in every replica and command
# (PUBBOT_CLOCK_FILE): by 86,400 - DAY_SECS seconds, so that every
# simulated day passes through the same few minutes of the day, and a daily
# broadcast scheduled a minute or two after the start falls inside each of
# them: each simulated day must see exactly one mass send accepted (R11).
#
# At the end one report (REPORT, default docs/soak-<date>.md) with a chart
# (REPORT with .png): pushes, replies, lost (must be 0), duplicates beside
# the counted windows (pubbot_outbound_ambiguous_retries_total and
# pubbot_outbound_recovered_total of every process that ran), broadcasts per simulated day (exactly one), RSS and open
# connections sampled every 5 s, p50/p99 per minute. Exit status 1 when
# anything was lost or sent twice uncounted, or a day had no broadcast or
# two.
#
#   ./scripts/soak.sh [MINUTES] [RATE]       (default 30 500)
#
# PUBBOT_BIN / SIM_BIN: binaries to run (default: a release build).
# SEED: seeds the draw of faults and pauses (bash's RANDOM), so that two
# builds meet the same faults at the same times.
# FAULT_KINDS: the faults to draw from (default all: "kill9 pgrestart drop
# limit retention"); one kind alone reproduces what it does.
# Needs python3 and, for the chart, chromium (scripts/test-all.sh installs
# it). Not part of the test command: it runs for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
RATE=${2:-500}
SECS=$((MINUTES * 60))
[ -z "${SEED:-}" ] || RANDOM=$SEED
read -r -a KINDS <<<"${FAULT_KINDS:-kill9 pgrestart drop limit retention}"
for k in "${KINDS[@]}"; do
  case $k in kill9|pgrestart|drop|limit|retention) ;; *) echo "FAULT_KINDS: no fault $k" >&2; exit 2 ;; esac
done
STAMP=$(date -u +%Y-%m-%d)
REPORT=${REPORT:-docs/soak-$STAMP-${MINUTES}min.md}
source scripts/pg.sh
# Its own cluster, always: the soak restarts it.
unset DATABASE_URL
start_throwaway_pg
if [ -z "${PUBBOT_BIN:-}" ] || [ -z "${SIM_BIN:-}" ]; then
  log "building release binaries"
  SQLX_OFFLINE=true cargo build --release --quiet -p pubbot -p pubbot-sim
fi
PUBBOT=${PUBBOT_BIN:-target/release/pubbot}
SIM=${SIM_BIN:-target/release/pubbot-sim}
WORK=$(mktemp -d /tmp/pubbot-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}" "$(pid_of a)" "$(pid_of b)"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  stop_throwaway_pg
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
URL="${DATABASE_URL%/*}/soak"
psql "$DATABASE_URL" -qc "CREATE DATABASE soak"
export PUBBOT__DATABASE__URL="$URL"
export PUBBOT_CLOCK_FILE="$WORK/clock"
echo 0 >"$PUBBOT_CLOCK_FILE"
DAY_SECS=${DAY_SECS:-180}
LB=28080 SIMPORT=28090

config() { # replica letter, port, admin port
  cat > "$WORK/$1.toml" <<TOML
[http]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[ingest]
spool_dir = "$WORK/spool-$1"
[workers]
lease_secs = 10
[sender]
request_timeout_ms = 3000
[[apps]]
key = "soak-app"
secret = "soak-secret"
api_base_url = "http://127.0.0.1:$SIMPORT"
rate_limit_per_sec = 100000
accounts = ["soak"]
TOML
}
config a 28081 29091
config b 28082 29092
$PUBBOT --config "$WORK/a.toml" migrate >/dev/null
$PUBBOT --config "$WORK/a.toml" rules import config/bench-rules.toml >/dev/null
# A daily broadcast at the first whole minute at least a minute from now
# (UTC+8): inside the first DAY_SECS of every simulated day.
AT=$(TZ=Asia/Shanghai date -d "@$(( ($(date +%s) + 119) / 60 * 60 ))" +%H:%M)
$PUBBOT --config "$WORK/a.toml" broadcast schedule --account soak --name daily --at "$AT" \
  --timezone Asia/Shanghai --text 'soak: the broadcast of {{ platform_day }}' >/dev/null
# A settled day 3 days back for the retention faults to drop.
psql "$URL" -q -o /dev/null -c "SELECT pubbot_create_partitions(current_date - 3, current_date - 3)" \
  -c "INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status, received_at)
      SELECT pubbot_id(current_date - 3, i), current_date - 3, 'soak-app', 'soak', 'old', 'text', 'old:' || i, '{}', '', 'old', 'done',
             now() - interval '3 days' FROM generate_series(1, 10000) i"

declare -A ADMIN
ADMIN[a]=29091 ADMIN[b]=29092
# A replica's pid is kept in a file: the fault loop restarts replicas, the
# sampler and the cleanup read who runs now.
pid_of() { cat "$WORK/pid-$1" 2>/dev/null || echo 0; }
start_replica() {
  RUST_LOG=warn $PUBBOT --config "$WORK/$1.toml" serve >>"$WORK/replica-$1.log" 2>&1 &
  echo $! >"$WORK/pid-$1"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${ADMIN[$1]}/healthz" >/dev/null && return; sleep 0.1; done
  log "replica $1 did not answer /healthz in 10 s (it may be waiting for the database)"
}
start_replica a
start_replica b
python3 scripts/soak-lb.py $LB 28081 28082 &
PIDS+=($!)

log "soak: $MINUTES min at $RATE pushes/s, two replicas, faults every 20-60 s"
$SIM --threads 2 --listen 127.0.0.1:$SIMPORT --app soak-app:soak-secret --push-timeout-ms 5000 \
  load --route-url "http://127.0.0.1:$LB/webhook/soak-app" --mcid soak --rate "$RATE" \
  --duration "$SECS" --users 1000 --grace 120 >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD_PID=$!
PIDS+=($LOAD_PID)
T0=$(date +%s)
echo "t,event" >"$WORK/events.csv"
event() { echo "$(( $(date +%s) - T0 )),$1" >>"$WORK/events.csv"; log "t+$(( $(date +%s) - T0 ))s: $1"; }
faults() {
  curl -sf -X PUT "http://127.0.0.1:$SIMPORT/_sim/faults" -H 'content-type: application/json' -d "$1" >/dev/null || true
}

# Samples every 5 s: RSS (KiB) and open descriptors of each replica, and
# PostgreSQL's sessions.
echo "t,rss_a_kib,rss_b_kib,fds_a,fds_b,pg_sessions" >"$WORK/samples.csv"
# pubbot's own count of possible double replies, per process (a counter
# dies with its process: each is read every 5 s, and just before a kill,
# as Prometheus would have scraped it): replies retried after a lost
# answer, and replies recovered from a dead sender.
echo "pid,ambiguous_retries,recovered" >"$WORK/counters.csv"
counters() {
  local m
  m=$(curl -sf --max-time 2 "http://127.0.0.1:${ADMIN[$1]}/metrics") || return 0
  echo "$(pid_of "$1"),$(echo "$m" | awk '$1 == "pubbot_outbound_ambiguous_retries_total" {print $2 + 0}'),$(echo "$m" | awk '$1 == "pubbot_outbound_recovered_total" {print $2 + 0}')" >>"$WORK/counters.csv"
}
sample() {
  while kill -0 "$LOAD_PID" 2>/dev/null; do
    local row="$(( $(date +%s) - T0 ))"
    for r in a b; do
      row+=",$(awk '/VmRSS/ {print $2}' /proc/"$(pid_of $r)"/status 2>/dev/null || echo 0)"
    done
    for r in a b; do
      row+=",$(ls /proc/"$(pid_of $r)"/fd 2>/dev/null | wc -l)"
    done
    row+=",$(psql "$URL" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = 'soak'" 2>/dev/null || echo 0)"
    echo "$row" >>"$WORK/samples.csv"
    counters a; counters b
    sleep 5
  done
}

sample &
PIDS+=($!)
# Mass sends the platform accepted so far, and refused.
sendall_calls() {
  local calls
  # A busy simulator may not answer at once: asked again, never read as
  # "none" (a day's count would come out negative).
  for _ in 1 2 3 4 5; do
    calls=$(curl -sf --max-time 30 "http://127.0.0.1:$SIMPORT/_sim/calls?path=/message/sendall.json") && break
    calls=""; sleep 1
  done
  [ -n "$calls" ] || { log "the simulator did not list its mass sends"; calls="[]"; }
  echo "$calls" | python3 -c "import json, sys; print(sum(1 for c in json.loads(sys.stdin.read() or '[]') if $1))"
}
accepted() { sendall_calls 'c["errcode"] == 0'; }
echo "day,accepted" >"$WORK/days.csv"
DAY=0 NEXT_DAY=$((T0 + DAY_SECS)) SEEN=0
next_day() { # closes day DAY (its mass sends) and moves the calendar on
  local now_accepted; now_accepted=$(accepted)
  echo "$DAY,$((now_accepted - SEEN))" >>"$WORK/days.csv"
  SEEN=$now_accepted
  DAY=$((DAY + 1))
  echo $((DAY * (86400 - DAY_SECS))) >"$PUBBOT_CLOCK_FILE"
  curl -sf -X PUT "http://127.0.0.1:$SIMPORT/_sim/clock" -H 'content-type: application/json' \
    -d "{\"offset_secs\": $((DAY * (86400 - DAY_SECS)))}" >/dev/null
  event "day: the calendar moves to day $DAY"
}
# The fault loop, in this shell, until 30 s before the pushing ends.
END=$((T0 + SECS))
while [ "$(date +%s)" -lt $((END - 30)) ]; do
  PAUSE=$((20 + RANDOM % 41))
  while [ "$PAUSE" -gt 0 ]; do
    sleep 1; PAUSE=$((PAUSE - 1))
    if [ "$(date +%s)" -ge "$NEXT_DAY" ] && [ "$(date +%s)" -lt $((END - 30)) ]; then
      next_day; NEXT_DAY=$((NEXT_DAY + DAY_SECS))
    fi
  done
  [ "$(date +%s)" -lt $((END - 30)) ] || break
  KIND=${KINDS[$((RANDOM % ${#KINDS[@]}))]}
  case $KIND in
    kill9) r=$([ $((RANDOM % 2)) = 0 ] && echo a || echo b)
       counters "$r"
       event "kill9: kill -9 replica $r"
       kill -9 "$(pid_of $r)" 2>/dev/null || true
       wait "$(pid_of $r)" 2>/dev/null || true
       sleep $((3 + RANDOM % 6))
       start_replica "$r"; event "replica $r started" ;;
    pgrestart) event "pgrestart: PostgreSQL restarted (fast shutdown)"
       "${PG_CTL[@]}" -D "$PG_TMP/data" -m fast -w restart >/dev/null; event "postgres up" ;;
    drop) event "drop: the platform drops 30% of call connections for 15 s"
       faults '{"drop_rate": 0.3}'; sleep 15; faults '{}'; event "drop off" ;;
    limit) event "1008: the platform answers 1008 above 20 calls/s for 15 s"
       faults '{"rate_limit_per_sec": 20}'; sleep 15; faults '{}'; event "1008 off" ;;
    retention) event "retention: pubbot prune --days 1"
       $PUBBOT --config "$WORK/a.toml" prune --days 1 >>"$WORK/prune.log" 2>&1 || event "prune failed" ;;
  esac
done
# The last day, cut short by the end of the run: reported, not judged.
now_accepted=$(accepted)
LAST_DAY="$DAY,$((now_accepted - SEEN))"
REFUSED=$(sendall_calls 'c["errcode"] != 0')
wait "$LOAD_PID" || true
sleep 1

# What the platform saw (the load generator's report) and what pubbot counted.
cat "$WORK/load.out"
num() { grep -oE "$1 [0-9]+" "$WORK/load.out" | head -1 | awk '{print $2}'; }
PUSHES=$(num pushes); ACKED=$(num acknowledged); REPLIED=$(num replied); LOST=$(num lost); DUPS=$(num duplicates)
# Counted windows: pubbot's own counters, the last reading of every
# process that ran (each counter only grows).
counters a; counters b
read -r AMBIGUOUS RECOVERED < <(tail -n +2 "$WORK/counters.csv" | awk -F, '
  {a[$1] = ($2 > a[$1] ? $2 : a[$1]); r[$1] = ($3 > r[$1] ? $3 : r[$1])}
  END {for (p in a) {sa += a[p]; sr += r[p]}; printf "%d %d\n", sa, sr}')
COUNTED=$((RECOVERED + AMBIGUOUS))
# The rows that name their window (one row may have been retried more than
# once; a later error replaces the text): a lower bound, for comparison.
ROWS_NAMED=$(psql "$URL" -Atc "SELECT count(*) FROM outbound_messages WHERE last_error LIKE '%may have been delivered%'")
psql "$URL" -At -F ',' -c "SELECT to_char(date_trunc('minute', i.received_at), 'HH24:MI'),
         count(*),
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM o.sent_at - i.received_at) * 1000)),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM o.sent_at - i.received_at) * 1000))
    FROM outbound_messages o JOIN inbound_messages i ON i.id = o.inbound_id AND i.day = o.day
   WHERE o.status = 'sent' AND i.user_id <> 'old'
   GROUP BY 1 ORDER BY 1" >"$WORK/minutes.csv"
FAULTS=$(tail -n +2 "$WORK/events.csv" | grep -cE "^[0-9]+,(kill9|pgrestart|drop|1008|retention):" || true)
MAX_RSS=$(tail -n +2 "$WORK/samples.csv" | awk -F, '{m = ($2 > m ? $2 : m); m = ($3 > m ? $3 : m)} END {printf "%.0f", m / 1024}')
MAX_FDS=$(tail -n +2 "$WORK/samples.csv" | awk -F, '{m = ($4 > m ? $4 : m); m = ($5 > m ? $5 : m)} END {print m}')
MAX_PG=$(tail -n +2 "$WORK/samples.csv" | awk -F, '{m = ($6 > m ? $6 : m)} END {print m}')
PNG="${REPORT%.md}.png"
python3 scripts/soak-chart.py "$WORK/samples.csv" "$WORK/minutes.csv" "$WORK/events.csv" "$WORK/chart.svg"
CHART="chart: chromium not found"
for b in chromium chromium-browser; do
  if command -v $b >/dev/null; then
    $b --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,900 \
      --screenshot="$PNG" "file://$WORK/chart.svg" >/dev/null 2>&1 && CHART="![soak chart]($(basename "$PNG"))"
    break
  fi
done
DAYS=$(tail -n +2 "$WORK/days.csv" | wc -l)
ONE_A_DAY=$(tail -n +2 "$WORK/days.csv" | awk -F, '$2 == 1' | wc -l)
VERDICT=ok
[ "${LOST:-1}" -eq 0 ] || VERDICT="LOST PUSHES"
[ "${DUPS:-0}" -le "$COUNTED" ] || VERDICT="DUPLICATES OUTSIDE A COUNTED WINDOW"
[ "$ONE_A_DAY" -eq "$DAYS" ] || VERDICT="A DAY WITHOUT ITS ONE BROADCAST, OR WITH TWO"
{
  echo "# Soak: $MINUTES minutes at $RATE pushes/s under random faults ($STAMP)"
  echo
  echo "\`./scripts/soak.sh $MINUTES $RATE\` on $(nproc) cores ($(uname -r)); two replicas of"
  echo "pubbot $(git rev-parse --short HEAD) behind a round-robin balancer, one PostgreSQL"
  echo "(throwaway cluster, fsync off), pubbot-sim as platform and load generator."
  echo "Verdict: **$VERDICT**."
  echo
  echo "| what | count |"
  echo "|---|---|"
  echo "| pushes | $PUSHES |"
  echo "| acknowledged by pubbot | $ACKED |"
  echo "| replied (distinct pushes) | $REPLIED |"
  echo "| lost (acknowledged, never replied) | **$LOST** |"
  echo "| duplicates the platform received | $DUPS |"
  echo "| counted windows (pubbot's counters): retried after a lost answer / recovered from a dead sender | $AMBIGUOUS / $RECOVERED |"
  echo "| replies whose last error names such a window | $ROWS_NAMED |"
  echo "| simulated days / with exactly one mass send accepted | $DAYS / $ONE_A_DAY |"
  echo "| mass sends the platform refused | $REFUSED |"
  echo "| faults | $FAULTS |"
  echo "| peak RSS of a replica | $MAX_RSS MiB |"
  echo "| peak open descriptors of a replica / PostgreSQL sessions | $MAX_FDS / $MAX_PG |"
  echo
  echo "$CHART"
  echo
  echo "## Faults"
  echo
  echo "| t (s) | event |"; echo "|---|---|"
  tail -n +2 "$WORK/events.csv" | awk -F, '{print "| " $1 " | " $2 " |"}'
  echo
  echo "## Latency per minute (push received -> reply sent, from pubbot's rows)"
  echo
  echo "| minute (UTC) | replies | p50 ms | p99 ms |"; echo "|---|---|---|---|"
  awk -F, '{print "| " $1 " | " $2 " | " $3 " | " $4 " |"}' "$WORK/minutes.csv"
  echo
  echo "## The load generator's report"
  echo
  echo '```'
  cat "$WORK/load.out"
  echo '```'
  echo
  echo "## Broadcasts per simulated day"
  echo
  echo "| day | mass sends accepted |"; echo "|---|---|"
  tail -n +2 "$WORK/days.csv" | awk -F, '{print "| " $1 " | " $2 " |"}'
  echo "$LAST_DAY" | awk -F, '{print "| " $1 " (cut short by the end of the run, not judged) | " $2 " |"}'
} >"$REPORT"
log "report: $REPORT"
[ "$VERDICT" = ok ]
