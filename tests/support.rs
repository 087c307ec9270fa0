//! Helpers for the end-to-end tests: a simulator, daemons on a fresh
//! database, a TCP proxy that can cut the database away, and polling.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pubbot::config::{AppSettings, Hosted, Settings, TimestampUnit};
use pubbot::Running;
use pubbot_sim::{AppCredentials, PushConfig, RunningSim, SimConfig};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The app every test uses.
pub const KEY: &str = "e2e-app";
/// Its secret.
pub const SECRET: &str = "e2e-secret";
/// The account every test uses.
pub const SHOP: &str = "shop";

/// Every text is answered with its echo, so each user's inbox shows the
/// order of the replies.
pub const ECHO: &str = r#"
[[rule]]
name = "echo"
kind = "default"
replies = [{ type = "text", text = "re: {{ text }}" }]
"#;

/// A simulator and what the tests need to drive it.
pub struct World {
    /// The platform.
    pub sim: RunningSim,
    /// Control API client.
    pub http: reqwest::Client,
    /// The test's database.
    pub connect: PgConnectOptions,
}

impl World {
    /// Starts a simulator (pushes time out after 1 s, 300 ms between tries,
    /// three tries as the platform does).
    pub async fn new(connect: PgConnectOptions) -> Self {
        Self::with_push_tries(connect, 3).await
    }

    /// As [`Self::new`] with more tries per push, for tests whose daemon is
    /// meant to fail for a while.
    pub async fn with_push_tries(connect: PgConnectOptions, tries: u32) -> Self {
        Self::with_push(connect, Duration::from_secs(1), tries).await
    }

    /// As [`Self::new`] with the push's timeout and tries given (the
    /// platform's own: 5 s, three tries, READING R15).
    pub async fn with_push(connect: PgConnectOptions, timeout: Duration, tries: u32) -> Self {
        let sim = RunningSim::start(SimConfig {
            apps: vec![AppCredentials {
                key: KEY.into(),
                secret: SECRET.into(),
            }],
            push: PushConfig {
                timeout,
                retry_delay: Duration::from_millis(300),
                tries,
                ..PushConfig::default()
            },
            ..SimConfig::default()
        })
        .await
        .expect("simulator");
        Self {
            sim,
            http: reqwest::Client::new(),
            connect,
        }
    }

    /// Settings for a test daemon: fast polls, short leases.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::load_from(None, Vec::new()).expect("defaults");
        s.workers.decide = 1;
        s.workers.send = 2;
        s.workers.poll_ms = 100;
        s.workers.lease_secs = 4;
        s.sender.backoff_min_ms = 100;
        s.sender.backoff_max_ms = 600;
        s.sender.max_attempts = 20;
        s.sender.request_timeout_ms = 2500;
        s.http.accept_deadline_ms = 800;
        s.database.acquire_timeout_secs = 1;
        s.rules.reload_check_secs = 1;
        s.shutdown_deadline_secs = 5;
        s.http.admin_listen = "127.0.0.1:0".parse().expect("addr");
        s.http.unanswered_hold_ms = 1200;
        s.ingest.spool_after_ms = 500;
        s.apps = vec![AppSettings {
            key: KEY.into(),
            secret: Some(SecretString::from(SECRET)),
            secret_file: None,
            secrets: Vec::new(),
            api_base_url: self.sim.base_url(),
            rate_limit_per_sec: 500,
            accounts: Hosted::Only(vec![SHOP.into()]),
            timestamp_unit: TimestampUnit::Seconds,
            database: None,
            move_to: None,
        }];
        s
    }

    /// A pool on the test database (through `via` when given).
    pub async fn pool(&self, via: Option<SocketAddr>) -> PgPool {
        let mut opts = pubbot::db::guarded(self.connect.clone(), Duration::from_secs(2));
        if let Some(addr) = via {
            opts = opts.host(&addr.ip().to_string()).port(addr.port());
        }
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(1))
            .connect_with(opts)
            .await
            .expect("pool")
    }

    /// Starts a daemon on a loopback port. A daemon left with the default
    /// `ingest.spool_dir` gets a fresh one of its own.
    pub async fn daemon(
        &self,
        mut settings: Settings,
        pool: PgPool,
    ) -> (Running, CancellationToken) {
        if settings.ingest.spool_dir == "spool" {
            settings.ingest.spool_dir = fresh_dir("spool").display().to_string();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let token = CancellationToken::new();
        let running = pubbot::start(settings, pool, listener, token.clone())
            .await
            .expect("daemon starts");
        (running, token)
    }

    /// Creates the account on the platform with its routeUrl.
    pub async fn add_account(&self, route_to: SocketAddr) {
        self.add_account_of(KEY, SECRET, webhook_url(route_to))
            .await;
    }

    /// Creates the account of another app (`key`, `secret`) with its
    /// routeUrl.
    pub async fn add_account_of(&self, key: &str, secret: &str, route_url: String) {
        let client = pubbot_api_client::Client::builder(
            key,
            SecretString::from(secret),
            self.sim.base_url(),
        )
        .build()
        .expect("client");
        client
            .add_account(&pubbot_api_client::NewAccount {
                mcid: SHOP.into(),
                profile: pubbot_api_client::AccountProfile {
                    display_name: "Shop".into(),
                    portrait_url: "http://x/p.png".into(),
                    ui_type: 0,
                    introduction: "e2e".into(),
                },
                is_follow: false,
                route_url,
            })
            .await
            .expect("account");
    }

    /// `POST /_sim/{what}` with `body`.
    pub async fn control(&self, what: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_sim/{what}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .expect("control");
        assert_eq!(r.status(), 200, "control {what}");
        r.json().await.expect("json")
    }

    /// A user writes a text and waits for the push to end.
    pub async fn say(&self, user: &str, text: &str) -> Value {
        self.control(
            "message",
            json!({"mcid": SHOP, "user": user, "type": "text", "content": text, "wait": true}),
        )
        .await
    }

    /// `PUT /_sim/{what}`.
    pub async fn put(&self, what: &str, body: Value) {
        let r = self
            .http
            .put(format!("{}/_sim/{what}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }

    /// `GET /_sim/{what}` as JSON.
    pub async fn get(&self, what: &str) -> Value {
        self.http
            .get(format!("{}/_sim/{what}", self.sim.base_url()))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// What the user received.
    pub async fn inbox(&self, user: &str) -> Vec<Value> {
        self.get(&format!("inbox/{user}"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The texts the user received, in order.
    pub async fn texts(&self, user: &str) -> Vec<String> {
        self.inbox(user)
            .await
            .iter()
            .map(|d| {
                d["payload"]["content"]
                    .as_str()
                    .map_or_else(|| d["msgtype"].to_string(), str::to_owned)
            })
            .collect()
    }

    /// Waits until every push the simulator made has ended, then checks
    /// that each ended with exactly one answer, a `200` (R15). Returns the
    /// pushes.
    pub async fn pushes_answered_once(&self) -> Vec<Value> {
        let mut pushes = Vec::new();
        for _ in 0..1200 {
            pushes = self
                .get("pushes")
                .await
                .as_array()
                .cloned()
                .unwrap_or_default();
            if pushes.iter().all(|p| p["state"] != "pending") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in &pushes {
            assert_eq!(p["state"], "delivered", "{p}");
            let answered: Vec<&Value> = p["attempts"]
                .as_array()
                .expect("attempts")
                .iter()
                .filter(|a| !a["status"].is_null())
                .collect();
            assert_eq!(answered.len(), 1, "exactly one answer (R15): {p}");
            assert_eq!(answered[0]["status"], 200, "{p}");
        }
        pushes
    }

    /// The API call log for one path.
    pub async fn calls(&self, path: &str) -> Vec<Value> {
        self.get(&format!("calls?path={path}"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The routeUrl of a daemon.
pub fn webhook_url(addr: SocketAddr) -> String {
    format!("http://{addr}/webhook/{KEY}")
}

/// One scrape of a daemon's `/metrics` (its admin listener).
pub async fn scrape(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("the admin listener answers")
        .text()
        .await
        .expect("a text body")
}

/// The sum of every series in `scrape` whose line starts with `prefix`
/// (a name, or a name with some labels): 0 when there is none.
pub fn metric(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 50 ms until it returns true, for at most 20 s.
///
/// # Panics
/// When it never does, with `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A TCP proxy to PostgreSQL that a test can cut (live connections die,
/// new ones are refused) and restore.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Proxies to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, live2) = (Arc::clone(&up), Arc::clone(&live));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                live2.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self { addr, up, live }
    }

    /// The database "goes down".
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.live.lock().expect("lock").drain(..) {
            t.abort();
        }
    }

    /// The database is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The database's address from its connect options.
pub fn db_addr(opts: &PgConnectOptions) -> SocketAddr {
    let host = match opts.get_host() {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{}", opts.get_port())
        .parse()
        .expect("the test database is on TCP")
}

/// A new empty folder under the temp folder.
pub fn fresh_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pubbot-e2e-{what}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A PostgreSQL cluster of the test's own (initdb, pg_ctl), for a database
/// that can really be stopped and started again: a second cluster beside
/// the one `DATABASE_URL` names. Removed when dropped.
pub struct Cluster {
    /// Its data folder's parent (socket, log).
    dir: std::path::PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    pg_ctl: std::path::PathBuf,
}

impl Cluster {
    /// initdb and start, as the `postgres` user when we are root (as
    /// scripts/pg.sh does).
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                let mut v: Vec<_> = d
                    .filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .collect();
                v.sort();
                v.pop()
            })
            .filter(|b| b.join("initdb").exists())
            .expect("a PostgreSQL install under /usr/lib/postgresql (apt-get install postgresql)");
        let dir = fresh_dir("cluster");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cluster = Self {
            dir,
            port,
            pg_ctl: bin.join("pg_ctl"),
        };
        if cluster.as_root() {
            std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&cluster.dir)
                .status()
                .expect("chown");
        }
        let ok = cluster
            .command(&bin.join("initdb"))
            .arg("-D")
            .arg(cluster.dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        cluster.up();
        cluster
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    }

    fn command(&self, program: &std::path::Path) -> std::process::Command {
        if self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        }
    }

    /// Starts the server (again). `fsync` is off (an immediate stop is not
    /// a machine crash: what was written survives in the page cache), but
    /// commits wait for their WAL write: with `synchronous_commit = off`,
    /// a stop loses commits already acknowledged to pubbot.
    pub fn up(&self) {
        let ok = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
                self.port,
                self.dir.display()
            ))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(ok.success(), "the cluster did not start");
    }

    /// Stops the server at once, as a crash would.
    pub fn down(&self) {
        let _ = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Log lines written to a buffer, as the daemon writes them to stderr.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's log lines (the test's runtime is one thread,
    /// so every task of its daemon) as the daemon's JSON format writes
    /// them, at `filter`, until the guard is dropped.
    ///
    /// One capture at a time in a test process: tracing's callsite cache
    /// and level hint are the process's, and captures at different levels
    /// on several threads at once lost lines (seen in CI, where a binary's
    /// tests are threads of one process). A second capture waits for the
    /// first to end.
    pub fn start(filter: &str) -> (Self, CaptureGuard) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let logs = Self::default();
        let writer = logs.clone();
        let default = tracing::subscriber::set_default(
            pubbot::telemetry::json(tracing_subscriber::EnvFilter::new(filter), move || {
                writer.clone()
            })
            .finish(),
        );
        tracing::callsite::rebuild_interest_cache();
        (
            logs,
            CaptureGuard {
                _default: default,
                _turn: turn,
            },
        )
    }

    /// The lines captured so far, parsed.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Ends a capture when dropped (the subscriber first, then the turn).
pub struct CaptureGuard {
    _default: tracing::subscriber::DefaultGuard,
    _turn: std::sync::MutexGuard<'static, ()>,
}
