# Sourced by test-all.sh and demo.sh: makes DATABASE_URL point at a
# PostgreSQL that answers. If DATABASE_URL is set and answers, it is kept;
# otherwise a throwaway cluster is created from the machine's PostgreSQL
# install (initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin), on a
# free loopback port with its socket in a temp folder, run as the postgres
# user when we are root, and removed when the calling script exits.
# PG_EXTRA_OPTS adds server options to the throwaway cluster (diagnosis:
# "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=1000";
# its log is $PG_TMP/server.log).

log() { printf '==> %s\n' "$*" >&2; }

pg_answers() {
  command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$1" -t 3 && return 0
  command -v psql >/dev/null 2>&1 && psql "$1" -qAtc 'select 1' >/dev/null 2>&1
}

find_pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/bin 2>/dev/null | sort -rV); do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
  done
  return 1
}

start_throwaway_pg() {
  local initdb pg_ctl
  initdb=$(find_pg_bin initdb) && pg_ctl=$(find_pg_bin pg_ctl) || {
    echo "error: no reachable DATABASE_URL and no PostgreSQL install found." >&2
    echo "       Install PostgreSQL (Debian: apt-get install postgresql) so that initdb and" >&2
    echo "       pg_ctl are on PATH or under /usr/lib/postgresql/*/bin, or set DATABASE_URL." >&2
    exit 1
  }
  PG_TMP=$(mktemp -d /tmp/pubbot-pg.XXXXXX)
  local run_as=()
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root: use the postgres user.
    id postgres >/dev/null 2>&1 || { echo "error: running as root and there is no postgres user" >&2; exit 1; }
    chown postgres "$PG_TMP"
    run_as=(runuser -u postgres --)
  fi
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
  log "starting a throwaway PostgreSQL ($initdb) on 127.0.0.1:$PG_PORT in $PG_TMP"
  "${run_as[@]}" "$initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-sync >"$PG_TMP/initdb.log" 2>&1 || {
    cat "$PG_TMP/initdb.log" >&2; exit 1; }
  PG_CTL=("${run_as[@]}" "$pg_ctl")
  "${PG_CTL[@]}" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 ${PG_EXTRA_OPTS:-}" >/dev/null || {
    cat "$PG_TMP/server.log" >&2; exit 1; }
  trap stop_throwaway_pg EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_throwaway_pg() {
  "${PG_CTL[@]}" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && pg_answers "$DATABASE_URL"; then
    log "using DATABASE_URL from the environment"
  else
    [ -n "${DATABASE_URL:-}" ] && log "DATABASE_URL is set but does not answer; starting a throwaway cluster"
    start_throwaway_pg
  fi
}
