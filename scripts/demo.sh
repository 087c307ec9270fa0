#!/usr/bin/env bash
# The demo: brings up PostgreSQL (DATABASE_URL if it answers, else a
# throwaway cluster), then `pubbot demo`: the platform simulator, the daemon
# and config/demo-rules.toml, with a scripted conversation, then a prompt to
# talk to the bot yourself. /quit, end of input or Ctrl-C stops and removes
# everything it started (daemon, simulator, its database, a throwaway
# cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
ensure_postgres
# Its own database, dropped on the way out.
DEMO_DB="pubbot_demo_$$"
BASE_URL="$DATABASE_URL"
psql "$BASE_URL" -qc "CREATE DATABASE $DEMO_DB"
drop_demo_db() { psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'drop_demo_db; type stop_throwaway_pg >/dev/null 2>&1 && [ -n "${PG_TMP:-}" ] && stop_throwaway_pg' EXIT
export PUBBOT__DATABASE__URL="${BASE_URL%/*}/$DEMO_DB"
# Build against the committed query data (.sqlx): with DATABASE_URL set (as
# ensure_postgres leaves it, to a database without our tables) sqlx's macros
# would check every query against that database instead, and fail.
export SQLX_OFFLINE="${SQLX_OFFLINE:-true}"
cargo run --quiet -p pubbot --features demo -- demo "$@"
