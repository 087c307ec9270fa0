//! Configuration: `config/default.toml`, then an overlay file, then
//! `PUBBOT__...` environment variables, registered last so they win.
//! Unknown keys and invalid values fail at start, naming the key.

mod apps;
mod console;
mod databases;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The compiled-in defaults (the same text as `config/default.toml`).
pub use apps::{AppSettings, Hosted, TimestampUnit};
pub use console::ConsoleSettings;
pub use databases::{target, OtherDatabase, Placement, DEFAULT_DATABASE};

/// The built-in defaults.
pub const DEFAULTS: &str = include_str!("../../../../config/default.toml");

/// Everything `pubbot serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Lease identity; unset: hostname-pid-random.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Natural day and default rule time zone.
    pub timezone: String,
    /// Graceful shutdown budget, seconds.
    pub shutdown_deadline_secs: u64,
    /// PostgreSQL: the default database, where every app lives unless it
    /// names another.
    pub database: DatabaseSettings,
    /// Further databases, `[databases.NAME]`, each usually on a cluster of
    /// its own; an app placed there says `database = "NAME"`. Fields left
    /// out are taken from `[database]` (see [`Settings::placements`]).
    #[serde(default)]
    pub databases: BTreeMap<String, OtherDatabase>,
    /// The webhook listener.
    pub http: HttpSettings,
    /// Group commit of pushes.
    pub ingest: IngestSettings,
    /// Worker counts and claims.
    pub workers: WorkerSettings,
    /// Reply sending.
    pub sender: SenderSettings,
    /// Rule reloading.
    pub rules: RuleSettings,
    /// Log output.
    pub log: LogSettings,
    /// Broadcasts and campaigns.
    pub broadcast: BroadcastSettings,
    /// How long processed rows are kept.
    pub retention: RetentionSettings,
    /// Handler bots.
    pub handlers: HandlerSettings,
    /// Conversation state.
    pub state: StateSettings,
    /// The web console.
    pub console: ConsoleSettings,
    /// Apps and their accounts.
    #[serde(default)]
    pub apps: Vec<AppSettings>,
    /// Where `database.url` came from (for logs and `--help`): one of
    /// `PUBBOT__DATABASE__URL`, `PUBBOT__DATABASE__URL_FILE`,
    /// `DATABASE_URL`, `database.url_file`, `database.url`.
    #[serde(skip)]
    pub database_url_source: &'static str,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The PostgreSQL URL (`postgres://` or `postgresql://`). Also from
    /// `url_file`, `DATABASE_URL` or `PUBBOT__DATABASE__URL`; see
    /// [`Settings::load_from`] for which wins.
    pub url: SecretString,
    /// A file holding the URL (a Kubernetes secret, a systemd credential).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connections in all, split into a fixed share per stage (ingest,
    /// decide, send, settle, housekeeping; [`crate::db::Pools`]) so that no
    /// stage can starve another. At least 10.
    pub max_connections: u32,
    /// Pool wait, seconds.
    pub acquire_timeout_secs: u64,
    /// Seconds a connection may sit idle inside a transaction before the
    /// server ends its session (frees rows a hung process holds).
    pub idle_in_transaction_timeout_secs: u64,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Webhook address.
    pub listen: SocketAddr,
    /// Body cap.
    pub max_body_bytes: usize,
    /// Milliseconds a push may take to be made durable (stored or
    /// spooled); past it, it gets no answer (R15).
    pub accept_deadline_ms: u64,
    /// Milliseconds from its arrival that a push which could not be made
    /// durable is held unanswered: past the platform's 5 s timeout, so the
    /// platform retries it (R15).
    pub unanswered_hold_ms: u64,
    /// Webhook connections open at once; more wait in the listen backlog
    /// (no answer, so the platform retries): bounds memory under a burst.
    pub max_connections: usize,
    /// Connections the kernel queues for the webhook before it accepts
    /// them (the `listen(2)` backlog; the kernel caps it at
    /// `net.core.somaxconn`). A connection arriving at a full queue is
    /// dropped unseen by pubbot, and the platform's try times out.
    pub listen_backlog: u32,
    /// Webhook connections one peer address may hold at once (0: no cap),
    /// so that one source cannot take every slot. Addresses in
    /// `trusted_proxies` are not capped.
    pub max_connections_per_peer: usize,
    /// Milliseconds a connection has to send complete request headers,
    /// counted from its accept or, on a kept-alive connection, from the
    /// previous answer: so it is also how long an idle kept-alive
    /// connection stays open.
    pub header_timeout_ms: u64,
    /// Milliseconds a request has to send its whole body once its headers
    /// are in (with `max_body_bytes`, a minimum rate); a slower one is
    /// answered 408 and its connection closed.
    pub body_timeout_ms: u64,
    /// Source networks allowed to connect (`["203.0.113.0/24"]`); empty:
    /// everyone. Behind a proxy, the client address is read from
    /// `client_ip_header` of requests that come from `trusted_proxies`.
    #[serde(default)]
    pub allow_from: Vec<ipnet::IpNet>,
    /// Proxies in front of pubbot (`["10.0.0.0/8"]`): not capped per peer,
    /// and the client address of their requests is taken from
    /// `client_ip_header`. Empty: the TCP peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy puts the client address in; the last
    /// address not itself a trusted proxy is the client.
    pub client_ip_header: String,
    /// Seconds between the summaries of refused pushes and closed
    /// connections in the log (one WARN line with counts by reason and
    /// app, instead of one line each; `/metrics` counts every one).
    pub rejection_log_secs: u64,
    /// Where metrics (`/metrics`), `/healthz` and `/readyz` are served;
    /// never on the webhook port.
    pub admin_listen: SocketAddr,
    /// The public base URL of the webhook (`https://bot.example.com`): the
    /// default route URL of `pubbot account apply` is
    /// `{public_base_url}/webhook/{app_key}`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Signature window, s.
    pub signature_window_secs: u64,
    /// Replay memory.
    pub replay_capacity: usize,
}

/// `[ingest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Rows per INSERT.
    pub batch_max: usize,
    /// Batch wait, µs.
    pub flush_micros: u64,
    /// Concurrent commits.
    pub concurrent_flushes: usize,
    /// Milliseconds a push waits for its database commit before it is
    /// written to the local spool instead (less than
    /// `http.accept_deadline_ms`).
    pub spool_after_ms: u64,
    /// The local spool: pushes the database cannot take in time, kept on
    /// disk and drained into PostgreSQL when it is back. Relative paths are
    /// under `$STATE_DIRECTORY` (systemd) when set, else the working
    /// directory. Empty: no spool (such pushes get no answer).
    pub spool_dir: String,
    /// Largest size of the spool on disk, bytes; past it, pushes get no
    /// answer.
    pub spool_max_bytes: u64,
    /// Decide a push as it is stored, in the same statement, when the
    /// rules in force can decide it without the database (no conversation
    /// state, no handler, not a follow event); otherwise, and when off, a
    /// decide worker takes it (see "Decided at receipt" in
    /// [`crate::pipeline::ingest`]).
    #[serde(default = "yes")]
    pub decide_at_receipt: bool,
    /// A group commit whose oldest push waited this long (ms) makes decide
    /// and send yield to ingest for a second (0: never; see
    /// [`crate::progress::IngestFirst`]).
    pub yield_after_ms: u64,
}

/// `[workers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Threads that run every task (the runtime's workers); 0: one per
    /// core.
    pub threads: usize,
    /// Decide tasks.
    pub decide: usize,
    /// Send tasks.
    pub send: usize,
    /// Rows per claim.
    pub claim_batch: i64,
    /// Lease, s.
    pub lease_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
    /// Seconds between queue depth readings (0: none).
    pub depth_secs: u64,
    /// Seconds a stage with work due may go without progress before
    /// `/readyz` and `pubbot_stage_stalled{stage}` say it is stuck.
    pub stall_secs: u64,
}

/// `[sender]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderSettings {
    /// Tries before failing.
    pub max_attempts: i32,
    /// First backoff, ms.
    pub backoff_min_ms: u64,
    /// Longest backoff, ms.
    pub backoff_max_ms: u64,
    /// API call timeout, ms.
    pub request_timeout_ms: u64,
    /// Merge replies with the same payload from the same account, held by
    /// one sender at once, into `batchsend` calls of up to 100 users.
    pub merge_batchsend: bool,
    /// Retry a call whose answer was lost (a timeout or a connection
    /// broken after the request was written): the platform may have
    /// delivered it, so a retry may deliver it twice; each such retry is
    /// counted in `pubbot_outbound_ambiguous_retries_total`. Off: such a
    /// reply is marked failed ("may have been delivered").
    pub retry_ambiguous: bool,
    /// Seconds after which a reply not yet sent is `expired` instead (a
    /// late answer in a chat is worse than none). 0: never.
    pub max_reply_age_secs: u64,
    /// Platform calls one process has in flight at once.
    pub max_in_flight: usize,
    /// Microseconds the recorder waits, after the first outcome, for more
    /// to record in the same statement (0: records what has arrived).
    #[serde(default)]
    pub settle_micros: u64,
}

/// `[rules]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Fallback reload check, s.
    pub reload_check_secs: u64,
}

/// `[broadcast]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastSettings {
    /// Seconds a broadcast whose time passed while every replica was down
    /// may still go out; past it, it is `missed`.
    pub grace_secs: u64,
    /// Milliseconds between scheduler rounds.
    pub tick_ms: u64,
    /// Seconds a replica holds a broadcast or campaign chunk it sends
    /// (longer than a call).
    pub lease_secs: u64,
    /// Time zone of schedules that name none.
    pub timezone: String,
}

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days a decided push and a settled reply are kept (0: forever).
    pub days: u32,
    /// Seconds between prunes.
    pub every_secs: u64,
}

/// The longest pause between two tries of one handler call: the user's
/// conversation waits behind the call.
pub const HANDLER_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl SenderSettings {
    /// Pauses between tries of a reply or a campaign chunk.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(
            Duration::from_millis(self.backoff_min_ms),
            Duration::from_millis(self.backoff_max_ms),
        )
    }
}

impl HandlerSettings {
    /// Pauses between tries of one handler call.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(Duration::from_millis(self.backoff_ms), HANDLER_BACKOFF_MAX)
    }
}

/// `[handlers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSettings {
    /// Tries of one handler call before the fallback.
    pub max_attempts: u32,
    /// First pause between tries, ms (doubles, with jitter, up to
    /// [`HANDLER_BACKOFF_MAX`]).
    pub backoff_ms: u64,
    /// Failures in a row that open a handler's breaker.
    pub breaker_failures: u32,
    /// Seconds an open breaker stays open.
    pub breaker_open_secs: u64,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// Seconds a user's conversation state lives after its last change.
    pub ttl_secs: u64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (ANSI colours only on a terminal) or `json` (one object per
    /// line). Logs always go to stderr; stdout is for command output.
    pub format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or variable did not parse, or a key is unknown.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range; names the key.
    #[error("configuration: {key}: {problem}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Settings {
    /// Loads defaults, the overlay file if any, then the environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn load(overlay: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(overlay, std::env::vars())
    }

    /// As [`Self::load`], with the environment given (for tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn load_from(
        overlay: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = overlay {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let database_url = env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .map(|(_, v)| v.clone());
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PUBBOT__"))
            .collect();
        let env_url = vars.contains_key("PUBBOT__DATABASE__URL");
        let env_url_file = vars.contains_key("PUBBOT__DATABASE__URL_FILE");
        // Registered last so the environment wins.
        builder = builder.add_source(
            config::Environment::with_prefix("PUBBOT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let mut settings: Self = builder.build()?.try_deserialize()?;
        // The database URL, first found wins: PUBBOT__DATABASE__URL,
        // PUBBOT__DATABASE__URL_FILE, DATABASE_URL (as the ecosystem
        // expects), database.url_file, then database.url of the files.
        let from_file = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|t| SecretString::from(t.trim().to_owned()))
                .map_err(|e| invalid("database.url_file", format!("{}: {e}", path.display())))
        };
        settings.database_url_source = if env_url {
            "PUBBOT__DATABASE__URL"
        } else if let (true, Some(path)) = (env_url_file, settings.database.url_file.clone()) {
            settings.database.url = from_file(&path)?;
            "PUBBOT__DATABASE__URL_FILE"
        } else if let Some(url) = database_url.filter(|u| !u.trim().is_empty()) {
            settings.database.url = SecretString::from(url);
            "DATABASE_URL"
        } else if let Some(path) = settings.database.url_file.clone() {
            settings.database.url = from_file(&path)?;
            "database.url_file"
        } else {
            "database.url"
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Where the database is, for messages: host and port, never the
    /// password.
    pub fn database_target(&self) -> String {
        target(&self.database, self.database_url_source)
    }
}

impl Settings {
    /// Checks values the types cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        pubbot_rules::Options::with_timezone(&self.timezone).map_err(|p| invalid("timezone", p))?;
        let url = self.database.url.expose_secret().trim();
        if url.is_empty() {
            return Err(invalid(self.database_url_source_key(), "must not be empty"));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let scheme = url.split("://").next().unwrap_or("");
            return Err(invalid(
                self.database_url_source_key(),
                format!("pubbot needs PostgreSQL (postgres://...), not {scheme:?}"),
            ));
        }
        if self.database.max_connections < 10 {
            return Err(invalid(
                "database.max_connections",
                "at least 10 (two for each of the five stages)",
            ));
        }
        self.validate_placements()?;
        if self.ingest.spool_after_ms >= self.http.accept_deadline_ms {
            return Err(invalid(
                "ingest.spool_after_ms",
                "must be less than http.accept_deadline_ms (a spooled push must still be answered in time)",
            ));
        }
        if self.http.unanswered_hold_ms <= self.http.accept_deadline_ms {
            return Err(invalid(
                "http.unanswered_hold_ms",
                "must be longer than http.accept_deadline_ms (and than the platform's 5 s timeout)",
            ));
        }
        if self.broadcast.lease_secs * 1000 <= self.sender.request_timeout_ms + 1000 {
            return Err(invalid(
                "broadcast.lease_secs",
                "must be longer than sender.request_timeout_ms plus a second",
            ));
        }
        if let Some(at) = self.console.listen {
            if at == self.http.listen || (at.port() != 0 && at.port() == self.http.listen.port()) {
                return Err(invalid(
                    "console.listen",
                    "must not be the webhook's address (http.listen): the console gets a listener of its own",
                ));
            }
        }
        let prefix = &self.console.path_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return Err(invalid(
                "console.path_prefix",
                "starts with / and does not end with one (\"/pubbot\"), or is empty",
            ));
        }
        if !matches!(
            self.console.proxy_default_role.as_str(),
            "" | "viewer" | "editor" | "admin"
        ) {
            return Err(invalid(
                "console.proxy_default_role",
                "one of viewer, editor, admin, or empty",
            ));
        }
        if self.console.session_hours == 0 {
            return Err(invalid("console.session_hours", "at least 1"));
        }
        if self.broadcast.tick_ms == 0 {
            return Err(invalid("broadcast.tick_ms", "at least 1"));
        }
        pubbot_rules::Options::with_timezone(&self.broadcast.timezone)
            .map_err(|p| invalid("broadcast.timezone", p))?;
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "at least 1"));
        }
        if self.http.max_connections_per_peer > self.http.max_connections {
            return Err(invalid(
                "http.max_connections_per_peer",
                "at most http.max_connections (0 for no cap)",
            ));
        }
        if self.http.header_timeout_ms == 0 || self.http.body_timeout_ms == 0 {
            return Err(invalid(
                if self.http.header_timeout_ms == 0 {
                    "http.header_timeout_ms"
                } else {
                    "http.body_timeout_ms"
                },
                "at least 1 (a connection that never has to finish holds a slot forever)",
            ));
        }
        if self.http.rejection_log_secs == 0 {
            return Err(invalid("http.rejection_log_secs", "at least 1"));
        }
        if self.retention.every_secs == 0 {
            return Err(invalid("retention.every_secs", "at least 1"));
        }
        if self.sender.max_in_flight == 0 {
            return Err(invalid("sender.max_in_flight", "at least 1"));
        }
        if self.ingest.batch_max == 0 {
            return Err(invalid("ingest.batch_max", "at least 1"));
        }
        if self.ingest.concurrent_flushes == 0 {
            return Err(invalid("ingest.concurrent_flushes", "at least 1"));
        }
        if self.workers.claim_batch < 1 {
            return Err(invalid("workers.claim_batch", "at least 1"));
        }
        if self.workers.lease_secs * 1000 <= self.sender.request_timeout_ms + 1000 {
            return Err(invalid(
                "workers.lease_secs",
                "must be longer than sender.request_timeout_ms plus a second (a lease must outlast a call)",
            ));
        }
        if self.sender.max_attempts < 1 {
            return Err(invalid("sender.max_attempts", "at least 1"));
        }
        if self.sender.backoff_min_ms > self.sender.backoff_max_ms {
            return Err(invalid(
                "sender.backoff_min_ms",
                "must not exceed sender.backoff_max_ms",
            ));
        }
        let mut keys = std::collections::HashSet::new();
        for app in &self.apps {
            if app.key.trim().is_empty() {
                return Err(invalid("apps.key", "must not be empty"));
            }
            if !keys.insert(app.key.clone()) {
                return Err(invalid(format!("apps.{}", app.key), "app key listed twice"));
            }
            app.signing_secret()?;
            if !url_check(&app.api_base_url) {
                return Err(invalid(
                    format!("apps.{}.api_base_url", app.key),
                    format!(
                        "must start with http:// or https://, got {:?}",
                        app.api_base_url
                    ),
                ));
            }
            match &app.accounts {
                Hosted::Unset | Hosted::Only(_) if app.accounts.listed().is_empty() => {
                    return Err(invalid(
                        format!("apps.{}.accounts", app.key),
                        "list the accounts pubbot answers for, or accounts = \"*\" for every account of the app key (R16)",
                    ));
                }
                _ => {}
            }
            if app.rate_limit_per_sec == 0 {
                return Err(invalid(
                    format!("apps.{}.rate_limit_per_sec", app.key),
                    "at least 1",
                ));
            }
        }
        Ok(())
    }

    fn database_url_source_key(&self) -> &'static str {
        if self.database_url_source.is_empty() {
            "database.url"
        } else {
            self.database_url_source
        }
    }

    /// The route URL of an app's accounts: `{http.public_base_url}/webhook/{app}`.
    ///
    /// # Errors
    /// When `http.public_base_url` is not set.
    pub fn route_url(&self, app_key: &str) -> Result<String, ConfigError> {
        match &self.http.public_base_url {
            Some(base) => Ok(format!("{}/webhook/{app_key}", base.trim_end_matches('/'))),
            None => Err(invalid(
                "http.public_base_url",
                "not set: give each account a route_url, or set the daemon's public base URL",
            )),
        }
    }

    /// The spool directory, resolved (see `ingest.spool_dir`); `None` when
    /// the spool is off.
    pub fn spool_dir(&self) -> Option<PathBuf> {
        let dir = self.ingest.spool_dir.trim();
        if dir.is_empty() {
            return None;
        }
        let path = PathBuf::from(dir);
        if path.is_absolute() {
            return Some(path);
        }
        // systemd's StateDirectory= sets STATE_DIRECTORY (several, colon
        // separated: the first is ours).
        match std::env::var("STATE_DIRECTORY") {
            Ok(state) if !state.is_empty() => {
                let first = state.split(':').next().unwrap_or(&state);
                Some(Path::new(first).join(path))
            }
            _ => Some(path),
        }
    }

    /// `workers.lease_secs` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.workers.lease_secs)
    }

    /// The longest a call may take, with a second of room: a sender renews
    /// a lease that has less than this left before calling.
    pub fn call_budget(&self) -> Duration {
        Duration::from_millis(self.sender.request_timeout_ms + 1000)
    }
}

fn url_check(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_and_env_wins() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PUBBOT__DATABASE__URL", "postgres://x/y"),
                ("PUBBOT__WORKERS__SEND", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://x/y");
        assert_eq!(s.workers.send, 9);
        assert_eq!(s.timezone, "Asia/Shanghai");
        assert_eq!(s.workers.threads, 0, "one thread per core by default");
        assert_eq!(s.http.max_connections, 2048);
        let one = Settings::load_from(None, env(&[("PUBBOT__WORKERS__THREADS", "1")])).unwrap();
        assert_eq!(one.workers.threads, 1);
    }

    #[test]
    fn the_console_is_off_by_default_and_never_on_the_webhooks_address() {
        let s = Settings::load_from(None, Vec::new()).unwrap();
        assert!(
            s.console.listen.is_none(),
            "off unless console.listen is set"
        );
        assert!(s.console.secure_cookies);
        let e = Settings::load_from(None, env(&[("PUBBOT__CONSOLE__LISTEN", "0.0.0.0:8080")]))
            .unwrap_err();
        assert!(
            e.to_string().contains("console.listen") && e.to_string().contains("http.listen"),
            "{e}"
        );
        let e = Settings::load_from(None, env(&[("PUBBOT__CONSOLE__PATH_PREFIX", "pubbot/")]))
            .unwrap_err();
        assert!(e.to_string().contains("console.path_prefix"), "{e}");
        let e = Settings::load_from(
            None,
            env(&[("PUBBOT__CONSOLE__PROXY_DEFAULT_ROLE", "root")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("console.proxy_default_role"), "{e}");
        let ok = Settings::load_from(None, env(&[("PUBBOT__CONSOLE__LISTEN", "127.0.0.1:8091")]))
            .unwrap();
        assert_eq!(ok.console.listen, Some("127.0.0.1:8091".parse().unwrap()));
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let e = Settings::load_from(None, env(&[("PUBBOT__WORKERS__SENDERS", "9")])).unwrap_err();
        assert!(e.to_string().contains("senders"), "{e}");
        let e = Settings::load_from(None, env(&[("PUBBOT__WORKERS__SEND", "many")])).unwrap_err();
        assert!(e.to_string().contains("send"), "{e}");
        let e = Settings::load_from(None, env(&[("PUBBOT__TIMEZONE", "Mars/Base")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: timezone: unknown time zone \"Mars/Base\""
        );
        // A lease that a call could outlast would let recovery send a
        // reply a second time while the call is still going.
        let e =
            Settings::load_from(None, env(&[("PUBBOT__WORKERS__LEASE_SECS", "10")])).unwrap_err();
        assert!(
            e.to_string().contains("workers.lease_secs")
                && e.to_string().contains("sender.request_timeout_ms"),
            "{e}"
        );
        let e =
            Settings::load_from(None, env(&[("PUBBOT__RETENTION__EVERY_SECS", "0")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: retention.every_secs: at least 1"
        );
        // The webhook's slow-client limits (issue 28).
        let e = Settings::load_from(
            None,
            env(&[("PUBBOT__HTTP__MAX_CONNECTIONS_PER_PEER", "4096")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("http.max_connections_per_peer"),
            "{e}"
        );
        let e = Settings::load_from(None, env(&[("PUBBOT__HTTP__HEADER_TIMEOUT_MS", "0")]))
            .unwrap_err();
        assert!(e.to_string().contains("http.header_timeout_ms"), "{e}");
        let overlay =
            std::env::temp_dir().join(format!("pubbot-allow-{}.toml", std::process::id()));
        std::fs::write(&overlay, "[http]\nallow_from = [\"10.0.0.0/33\"]\n").unwrap();
        let e = Settings::load_from(Some(&overlay), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("allow_from"), "{e}");
        std::fs::write(
            &overlay,
            "[http]\nallow_from = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&overlay), Vec::new()).unwrap();
        assert_eq!(s.http.allow_from.len(), 1);
        assert_eq!(s.http.max_connections_per_peer, 0);
        assert_eq!(s.http.header_timeout_ms, 10_000);
        std::fs::remove_file(&overlay).unwrap();
    }

    #[test]
    fn database_url_precedence_and_only_postgres() {
        let s =
            Settings::load_from(None, env(&[("DATABASE_URL", "postgres://from-env/db")])).unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://from-env/db");
        assert_eq!(s.database_url_source, "DATABASE_URL");
        let s = Settings::load_from(
            None,
            env(&[
                ("DATABASE_URL", "postgres://from-env/db"),
                ("PUBBOT__DATABASE__URL", "postgres://ours/db"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://ours/db");
        assert_eq!(s.database_url_source, "PUBBOT__DATABASE__URL");
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.database_url_source, "database.url");
        assert!(
            s.database_target().starts_with("127.0.0.1:5432"),
            "{}",
            s.database_target()
        );
        let e = Settings::load_from(None, env(&[("DATABASE_URL", "mysql://x/y")])).unwrap_err();
        assert!(
            e.to_string().contains("DATABASE_URL") && e.to_string().contains("mysql"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("pubbot-cfg-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://u:pw@from-file:6543/db\n").unwrap();
        let s = Settings::load_from(
            None,
            env(&[
                ("PUBBOT__DATABASE__URL_FILE", file.to_str().unwrap()),
                ("DATABASE_URL", "postgres://from-env/db"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://u:pw@from-file:6543/db"
        );
        assert!(
            !s.database_target().contains("pw"),
            "{}",
            s.database_target()
        );
        assert!(s.database_target().starts_with("from-file:6543"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn apps_are_placed_on_the_databases_they_name_and_a_typo_is_refused() {
        let dir = std::env::temp_dir().join(format!("pubbot-cfg-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("two.toml");
        let app = |key: &str, db: &str| {
            format!("[[apps]]\nkey = \"{key}\"\nsecret = \"s\"\napi_base_url = \"http://127.0.0.1:8090\"\naccounts = \"*\"\n{db}\n")
        };
        let write = |text: String| std::fs::write(&file, text).unwrap();
        write(format!(
            "[ingest]\nspool_dir = \"{}\"\n[databases.east]\nurl = \"postgres://east/pubbot\"\nmax_connections = 12\n{}{}",
            dir.join("spool").display(),
            app("a", ""),
            app("b", "database = \"east\"")
        ));
        let s = Settings::load_from(
            Some(&file),
            env(&[("DATABASE_URL", "postgres://main/pubbot")]),
        )
        .unwrap();
        let p = s.placements().unwrap();
        let names: Vec<(&str, Vec<&str>)> = p
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.apps.iter().map(|a| a.key.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(names, [("default", vec!["a"]), ("east", vec!["b"])]);
        // Left out: taken from [database].
        assert_eq!(p[1].database.max_connections, 12);
        assert_eq!(
            p[1].database.acquire_timeout_secs,
            s.database.acquire_timeout_secs
        );
        let east = s.for_placement(&p[1]);
        assert_eq!(east.database.url.expose_secret(), "postgres://east/pubbot");
        assert_eq!(
            east.spool_dir().unwrap(),
            dir.join("spool").join("east"),
            "a spool of its own"
        );
        assert_eq!(
            s.for_placement(&p[0]).spool_dir().unwrap(),
            dir.join("spool")
        );
        assert!(crate::config::target(&east.database, "databases.east").contains("east:5432"));

        // An app naming a database that is not configured.
        write(app("b", "database = \"esat\""));
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("apps.b.database") && e.to_string().contains("[databases.esat]"),
            "{e}"
        );
        // move_to: a configured database other than the app's own; the
        // moving app is served by both.
        write(format!(
            "[databases.east]\nurl = \"postgres://east/pubbot\"\n{}",
            app("b", "move_to = \"east\"")
        ));
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        let p = s.placements().unwrap();
        assert!(p.iter().all(|p| p.apps.iter().any(|a| a.key == "b")));
        write(format!(
            "[databases.east]\nurl = \"postgres://east/pubbot\"\n{}",
            app("b", "database = \"east\"\nmove_to = \"east\"")
        ));
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("apps.b.move_to"), "{e}");
        write(app("b", "move_to = \"west\""));
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("apps.b.move_to") && e.to_string().contains("[databases.west]"),
            "{e}"
        );
        // "default" is [database]'s name; a database without a URL.
        write("[databases.default]\nurl = \"postgres://x/y\"\n".into());
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("databases.default"), "{e}");
        write("[databases.east]\nmax_connections = 20\n".into());
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("databases.east.url"), "{e}");
        write("[databases.east]\nurl = \"mysql://x/y\"\n".into());
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("databases.east.url") && e.to_string().contains("PostgreSQL"),
            "{e}"
        );
        write("[databases.east]\nurl = \"postgres://x/y\"\nmax_conections = 20\n".into());
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlay_file_apps_and_secret_files() {
        let dir = std::env::temp_dir().join(format!("pubbot-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let file = dir.join("prod.toml");
        std::fs::write(
            &file,
            format!(
                "[[apps]]\nkey = \"a\"\nsecret_file = \"{}\"\nsecrets = [\"old\"]\napi_base_url = \"http://127.0.0.1:8090\"\naccounts = [\"shop\"]\n",
                secret.display()
            ),
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        let secrets: Vec<String> = s.apps[0]
            .push_secrets()
            .unwrap()
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect();
        assert_eq!(secrets, ["from-file", "old"]);

        std::fs::write(
            &file,
            "[[apps]]\nkey = \"a\"\napi_base_url = \"ftp://x\"\nsecret = \"s\"\naccounts = \"*\"\n",
        )
        .unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("apps.a.api_base_url"), "{e}");
        std::fs::write(
            &file,
            "[[apps]]\nkey = \"a\"\napi_base_url = \"http://x\"\naccounts = \"*\"\n",
        )
        .unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("secret or secret_file is required"),
            "{e}"
        );
        // R16: an app must say which accounts it hosts.
        std::fs::write(
            &file,
            "[[apps]]\nkey = \"a\"\napi_base_url = \"http://x\"\nsecret = \"s\"\n",
        )
        .unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("apps.a.accounts") && e.to_string().contains("R16"),
            "{e}"
        );
        std::fs::write(
            &file,
            "[[apps]]\nkey = \"a\"\napi_base_url = \"http://x\"\nsecret = \"s\"\naccounts = \"*\"\ntimestamp_unit = \"milliseconds\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&file), env(&[])).unwrap();
        assert!(s.apps[0].accounts.hosts("anything"));
        assert_eq!(s.apps[0].timestamp_unit, TimestampUnit::Milliseconds);
        std::fs::write(
            &file,
            "[[apps]]\nkey = \"a\"\napi_base_url = \"http://x\"\nsecret = \"s\"\naccounts = \"all\"\n",
        )
        .unwrap();
        let e = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("accounts"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
