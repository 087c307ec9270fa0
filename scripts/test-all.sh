#!/usr/bin/env bash
# Runs every check and test of the workspace: rustfmt, clippy (warnings are
# errors) and `cargo test --workspace` against a real PostgreSQL.
#
# PostgreSQL: if DATABASE_URL is set and answers, it is used (each test gets
# its own fresh database through #[sqlx::test]). Otherwise a throwaway
# cluster is created from the machine's PostgreSQL install (initdb/pg_ctl on
# PATH or under /usr/lib/postgresql/*/bin), listening on a free loopback port
# with a socket in a temp folder, and removed when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

source "$(dirname "$0")/pg.sh"
ensure_postgres

# The console's tests drive a real headless Chromium through WebDriver:
# Debian's chromium and chromium-driver, and CJK fonts (without them every
# Chinese character in a screenshot is an empty box). Installed when
# missing.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -d /usr/share/fonts/opentype/noto ]; then
    return
  fi
  log "installing chromium, chromium-driver and fonts-noto-cjk (console tests)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium chromium-driver fonts-noto-cjk >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium chromium-driver fonts-noto-cjk >/dev/null; }
}
ensure_browser

export SQLX_OFFLINE="${SQLX_OFFLINE:-true}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test --workspace (unit, integration and doc tests)"
TEST_LOG=$(mktemp /tmp/pubbot-test-log.XXXXXX)
status=0
{ cargo test --workspace --doc && cargo test --workspace --all-targets; } 2>&1 | tee "$TEST_LOG" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$TEST_LOG"
rm -f "$TEST_LOG"
exit "$status"
