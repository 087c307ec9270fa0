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
