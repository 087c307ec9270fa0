//! Wiring: builds each room from the settings, starts them, and stops them
//! in order ([`Running::shutdown`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pubbot_api_client::Client;
use pubbot_webhook::{Verifier, Webhook, WebhookConfig};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::health;
use crate::config::{self, Settings, DEFAULT_DATABASE};
use crate::pipeline::ingest;
use crate::pipeline::rules::RuleStore;
use crate::pipeline::send::AppClient;
use crate::pipeline::wakeups::Wakeups;
use crate::{clock, db, pipeline};

mod cell;
use cell::start_cell;

/// This process's identity in leases: `worker_id` from the settings, else
/// hostname-pid-random (replicas that shared one identity would steal each
/// other's leases).
pub fn worker_id(settings: &Settings) -> String {
    settings.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "pubbot".into());
        format!(
            "{host}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xFF_FFFF
        )
    })
}

/// A running daemon.
pub struct Running {
    /// Where the webhook listens.
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    /// Where the web console is served (`console.listen`), when it is on.
    pub console_addr: Option<SocketAddr>,
    /// The lease identity.
    pub worker_id: String,
    token: CancellationToken,
    ingest_token: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    /// Each database's group commit.
    ingest: Vec<tokio::task::JoinHandle<()>>,
    /// Decide workers and the hand-off senders: stop on `token`, then
    /// drain.
    workers: JoinSet<()>,
    /// Each database's recorder: ends once every sender has stopped and
    /// every outcome is recorded.
    recorders: Vec<tokio::task::JoinHandle<()>>,
    /// Housekeeping (heartbeat, recovery, LISTEN, rules, gauges, admin,
    /// spool drain): stopped last, so leases are kept until outcomes are
    /// recorded.
    housekeeping_token: CancellationToken,
    housekeeping: JoinSet<()>,
    deadline: Duration,
    liveness: crate::progress::Liveness,
}

impl Running {
    /// Graceful stop: stop taking pushes and drain HTTP, commit what the
    /// ingest holds, let workers finish their batch and the recorder record
    /// every outcome; all within the configured deadline.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        let drained = async {
            let _ = (&mut self.http).await;
            self.ingest_token.cancel();
            for ingest in &mut self.ingest {
                let _ = ingest.await;
            }
            while self.workers.join_next().await.is_some() {}
            for recorder in &mut self.recorders {
                let _ = recorder.await;
            }
        };
        if tokio::time::timeout(self.deadline, drained).await.is_err() {
            tracing::warn!(deadline = ?self.deadline, "shutdown deadline passed; stopping what is left (held leases expire and are recovered)");
            self.workers.abort_all();
            self.http.abort();
            self.ingest.iter().for_each(tokio::task::JoinHandle::abort);
            self.recorders
                .iter()
                .for_each(tokio::task::JoinHandle::abort);
        }
        self.housekeeping_token.cancel();
        self.housekeeping.abort_all();
        while self.housekeeping.join_next().await.is_some() {}
    }

    /// Stops everything at once, as a crash would: leases are left to
    /// expire. For tests of recovery.
    pub fn abort(mut self) {
        self.token.cancel();
        self.ingest_token.cancel();
        self.housekeeping_token.cancel();
        self.http.abort();
        self.ingest.iter().for_each(tokio::task::JoinHandle::abort);
        self.recorders
            .iter()
            .for_each(tokio::task::JoinHandle::abort);
        self.workers.abort_all();
        self.housekeeping.abort_all();
    }

    /// The liveness check (`/readyz`'s stuck stages), for a watchdog.
    pub(crate) fn health(&self) -> crate::progress::Liveness {
        self.liveness.clone()
    }

    /// Waits until the daemon stops (its token cancelled), then drains.
    pub async fn wait(self) {
        self.token.cancelled().await;
        self.shutdown().await;
    }
}

/// Starts the daemon: the webhook on `listener`, the admin listener on
/// `http.admin_listen`, workers on stage pools built from `pool`'s connect
/// options ([`Pools`]); it runs until `token` is cancelled (then call
/// [`Running::shutdown`]).
///
/// # Errors
/// An unmigrated or newer schema, rules that do not compile, an app whose
/// client cannot be built, a spool directory that cannot be opened, an
/// admin address that cannot be bound.
pub async fn start(
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_clock(
        settings,
        pool,
        listener,
        token,
        Arc::new(clock::SystemClock),
    )
    .await
}

/// As [`start`], with the clock broadcasts are scheduled by (tests move
/// it across days).
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    token: CancellationToken,
    clock: Arc<dyn clock::Clock>,
) -> anyhow::Result<Running> {
    health::prometheus();
    let placements = settings.placements()?;
    let worker_id = worker_id(&settings);
    let addr = listener.local_addr()?;

    let http_client = reqwest_client()?;
    let mut apps = HashMap::new();
    let mut secrets = HashMap::new();
    for app in &settings.apps {
        let client = Client::builder(
            app.key.clone(),
            app.signing_secret()?,
            app.api_base_url.clone(),
        )
        .timeout(Duration::from_millis(settings.sender.request_timeout_ms))
        // R2: the unit is the operator's to set.
        .timestamp_unit(app.timestamp_unit.into())
        .http_client(http_client.clone())
        .build()
        .with_context(|| format!("client for app {}", app.key))?;
        apps.insert(
            app.key.clone(),
            AppClient::new(client, app.rate_limit_per_sec),
        );
        secrets.insert(app.key.clone(), app.push_secrets()?);
    }
    let shared = Shared {
        worker_id: worker_id.clone(),
        apps: Arc::new(apps),
        clock: Arc::clone(&clock),
        started: Arc::new(AtomicBool::new(false)),
        token: token.clone(),
        housekeeping_token: CancellationToken::new(),
        ingest_token: CancellationToken::new(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(settings.sender.max_in_flight)),
        moves: Arc::default(),
    };
    let mut housekeeping = JoinSet::new();
    let mut workers = JoinSet::new();

    // A pipeline per database (`config::Placement`): the default one on
    // `pool`, the others on pools of their own, opened as needed.
    let mut cells = Vec::new();
    for placement in &placements {
        let pool = if placement.name == DEFAULT_DATABASE {
            pool.clone()
        } else {
            db::connect_lazy(&placement.database).with_context(|| {
                format!(
                    "databases.{}: {}",
                    placement.name,
                    config::target(&placement.database, "databases")
                )
            })?
        };
        let cell = start_cell(
            &placement.name,
            settings.for_placement(placement),
            pool,
            &shared,
            &mut housekeeping,
            &mut workers,
        )
        .await
        .with_context(|| format!("database {}", placement.name))?;
        cells.push(cell);
    }
    let housekeeping_token = shared.housekeeping_token.clone();

    let admin = TcpListener::bind(settings.http.admin_listen)
        .await
        .with_context(|| format!("binding http.admin_listen {}", settings.http.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    {
        let stop = housekeeping_token.clone();
        let router = health::router(cells.iter().map(|c| c.readiness.clone()).collect());
        housekeeping.spawn(async move {
            let serve = axum::serve(admin, router)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
    }
    // The console edits what the default database holds (its apps, rules,
    // users): see README "Apps on several databases".
    let console_addr = crate::console::start(
        Arc::new(settings.for_placement(&placements[0])),
        cells[0].readiness.pool.clone(),
        Arc::clone(&clock),
        housekeeping_token.clone(),
        &mut housekeeping,
    )
    .await?;

    let verifier = Verifier::new(
        secrets,
        Duration::from_secs(settings.http.signature_window_secs),
        settings.http.replay_capacity,
    );
    let log_every = Duration::from_secs(settings.http.rejection_log_secs);
    // Each app's pushes go to the ingest of its database; an app moving
    // (`move_to`) to its destination's once its move has begun.
    let inbox_of = |name: &str| {
        cells
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.inbox.clone())
    };
    let mut by_app = HashMap::new();
    let mut moving = HashMap::new();
    for app in &settings.apps {
        let home = app.database.as_deref().unwrap_or(DEFAULT_DATABASE);
        if let Some(inbox) = inbox_of(home) {
            by_app.insert(app.key.clone(), inbox);
        }
        if let Some(inbox) = app.move_to.as_deref().and_then(inbox_of) {
            moving.insert(app.key.clone(), (home.to_owned(), inbox));
        }
    }
    let inbox = ingest::Routed::new(
        by_app,
        moving,
        Arc::clone(&shared.moves),
        cells[0].inbox.clone(),
    );
    let hook = Webhook::new(
        WebhookConfig {
            max_body_bytes: settings.http.max_body_bytes,
            accept_deadline: Duration::from_millis(settings.http.accept_deadline_ms),
            unanswered_hold: Duration::from_millis(settings.http.unanswered_hold_ms),
            body_timeout: Duration::from_millis(settings.http.body_timeout_ms),
            rejection_log_every: log_every,
        },
        verifier,
        inbox,
    );
    let closed_log = Arc::new(pubbot_webhook::LogSummary::new(
        "webhook connections closed",
        log_every,
    ));
    {
        // The summaries' tails: a burst that stopped is summed up too.
        let summaries = [hook.rejections(), Arc::clone(&closed_log)];
        let stop = housekeeping_token.clone();
        housekeeping.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(log_every) => {}
                }
                for s in &summaries {
                    s.flush();
                }
            }
        });
    }
    let router = hook.router();
    let http = tokio::spawn(pipeline::listener::serve(
        listener,
        router,
        pipeline::listener::Limits::from_settings(&settings.http),
        closed_log,
        token.clone(),
    ));
    shared
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let databases: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
    tracing::info!(%addr, %admin_addr, worker_id, ?databases, "pubbot serving: POST /webhook/{{app_key}}; /metrics, /healthz, /readyz on the admin address");
    if let Some(at) = console_addr {
        tracing::info!(%at, prefix = %settings.console.path_prefix, "web console serving");
    }
    Ok(Running {
        addr,
        admin_addr,
        console_addr,
        worker_id,
        token,
        ingest_token: shared.ingest_token.clone(),
        http,
        liveness: crate::progress::Liveness {
            progress: cells
                .iter()
                .map(|c| Arc::clone(&c.readiness.progress))
                .collect(),
            stall: Duration::from_secs(settings.workers.stall_secs),
        },
        ingest: cells.iter_mut().filter_map(|c| c.ingest.take()).collect(),
        recorders: cells.iter_mut().filter_map(|c| c.recorder.take()).collect(),
        workers,
        housekeeping_token,
        housekeeping,
        deadline: Duration::from_secs(settings.shutdown_deadline_secs),
    })
}

/// What every database's pipeline shares: the process's identity, the
/// platform clients, the clock, the stop tokens and the cap on calls in
/// flight.
struct Shared {
    worker_id: String,
    apps: Arc<HashMap<String, AppClient>>,
    clock: Arc<dyn clock::Clock>,
    started: Arc<AtomicBool>,
    token: CancellationToken,
    housekeeping_token: CancellationToken,
    ingest_token: CancellationToken,
    in_flight: Arc<tokio::sync::Semaphore>,
    moves: Arc<crate::pipeline::moves::Moves>,
}

fn reqwest_client() -> anyhow::Result<pubbot_api_client::HttpClient> {
    pubbot_api_client::http_builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .context("building the HTTP client")
}

async fn watch_rules(
    pool: PgPool,
    store: Arc<RuleStore>,
    wake: Arc<Wakeups>,
    check_secs: u64,
    token: CancellationToken,
) {
    let every = Duration::from_secs(check_secs.max(1));
    while !token.is_cancelled() {
        let notified = tokio::select! {
            () = wake.rules.notified() => true,
            () = tokio::time::sleep(every) => false,
            () = token.cancelled() => return,
        };
        let result = if notified {
            store.reload(&pool).await.map(|_| true)
        } else {
            store.reload_if_changed(&pool).await
        };
        match result {
            Ok(true) => tracing::info!(rules = store.current().len(), "rules reloaded"),
            Ok(false) => {}
            Err(e) => {
                metrics::counter!("pubbot_rules_reloads_total", "outcome" => "error").increment(1);
                tracing::error!(error = %e, "rules changed but were not loaded; the previous rules stay in force");
            }
        }
    }
}
