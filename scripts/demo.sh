#!/usr/bin/env bash
# The demo: brings up PostgreSQL (DATABASE_URL if it answers, else a
# throwaway cluster), then `pubbot demo`: the platform simulator, the daemon
# and config/demo-rules.toml, with a scripted conversation. Ctrl-C stops and
# removes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg.sh
ensure_postgres
export PUBBOT__DATABASE__URL="$DATABASE_URL"
cargo run --quiet -p pubbot -- demo "$@"
