//! One database's pipeline: everything `serve` runs per database
//! (`config::Placement`), on that database's own pools.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::{watch_rules, Shared};
use crate::admin::health::Readiness;
use crate::admin::{health, queue, retention};
use crate::config::{self, Settings};
use crate::db::Pools;
use crate::pipeline::decide::DecideWorker;
use crate::pipeline::ingest::PgInbox;
use crate::pipeline::outbox::{Leases, Recorder, RetryPolicy};
use crate::pipeline::rules::RuleStore;
use crate::pipeline::send::SendWorker;
use crate::pipeline::wakeups::Wakeups;
use crate::pipeline::{handlers, ingest, outbox, spool, wakeups};
use crate::progress::Progress;
use crate::{db, mass};

/// One database's pipeline, started.
pub(super) struct Cell {
    pub(super) name: String,
    pub(super) inbox: PgInbox,
    pub(super) ingest: Option<tokio::task::JoinHandle<()>>,
    pub(super) recorder: Option<tokio::task::JoinHandle<()>>,
    pub(super) readiness: Readiness,
}

/// Starts the pipeline of one database: `settings` as
/// [`Settings::for_placement`] made them (this database as `[database]`,
/// its apps only). Ingest, decide and send, the recorder, recovery, the
/// scheduler, day partitions, retention, LISTEN and the gauges: all on
/// this database's own pools, so another database's outage does not
/// reach them.
pub(super) async fn start_cell(
    name: &str,
    settings: Settings,
    pool: PgPool,
    shared: &Shared,
    housekeeping: &mut JoinSet<()>,
    workers: &mut JoinSet<()>,
) -> anyhow::Result<Cell> {
    db::check_schema(&pool).await?;
    let pools = Pools::split(&pool.connect_options(), &settings.database);
    let worker_id = shared.worker_id.clone();
    let database: &'static str = Box::leak(name.to_owned().into_boxed_str());
    crate::admin::catalog::announce(&crate::admin::catalog::Known {
        accounts: settings
            .apps
            .iter()
            .map(|a| (a.key.clone(), a.accounts.listed().to_vec()))
            .collect(),
        handlers: sqlx::query_scalar!("SELECT name FROM handlers ORDER BY name")
            .fetch_all(&pool)
            .await?,
        pools: pools.named().iter().map(|(name, _)| *name).collect(),
        database: name.to_owned(),
    });
    // It answered the schema check just now (`health::watch` keeps this).
    metrics::gauge!("pubbot_database_up", "database" => database).set(1.0);
    let options =
        pubbot_rules::Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;

    for app in &settings.apps {
        for mcid in app.accounts.listed() {
            sqlx::query!(
                "INSERT INTO accounts (app_key, mcid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                app.key,
                mcid
            )
            .execute(&pool)
            .await?;
        }
    }

    let apps = Arc::clone(&shared.apps);
    let hosted: Arc<HashMap<String, config::Hosted>> = Arc::new(
        settings
            .apps
            .iter()
            .map(|a| (a.key.clone(), a.accounts.clone()))
            .collect(),
    );
    let unhosted_seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    // The apps of this database in key order: claims name one at a time.
    let mut keys: Vec<String> = settings.apps.iter().map(|a| a.key.clone()).collect();
    keys.sort();
    let app_keys: Arc<[String]> = keys.clone().into();

    let spool = match settings.spool_dir() {
        Some(dir) => Some(
            spool::Spool::open(&dir, settings.ingest.spool_max_bytes)
                .with_context(|| format!("ingest.spool_dir {}", dir.display()))?,
        ),
        None => None,
    };

    let store = Arc::new(RuleStore::new(options).of_database(database));
    let n = store.reload(&pool).await.context("loading rules")?;
    tracing::info!(rules = n, worker_id, database = name, "rules loaded");

    let progress = Arc::new(Progress::default());
    progress
        .ingest_first
        .set_threshold(Duration::from_millis(settings.ingest.yield_after_ms));
    // Today's partitions (a daemon down for days comes back to none) and
    // the open window, before the first push (`pipeline::days`).
    crate::pipeline::days::prepare(&pool, &progress.days)
        .await
        .context("creating day partitions")?;
    let wake = Arc::new(Wakeups::default());
    let housekeeping_token = shared.housekeeping_token.clone();
    let token = shared.token.clone();
    let leases = Arc::new(Leases::default());

    let readiness = Readiness {
        database,
        pool: pools.housekeeping.clone(),
        progress: Arc::clone(&progress),
        stall: Duration::from_secs(settings.workers.stall_secs),
        started: Arc::clone(&shared.started),
        token: token.clone(),
    };
    housekeeping.spawn(crate::pipeline::moves::watch(
        database,
        pools.housekeeping.clone(),
        Arc::clone(&shared.moves),
        housekeeping_token.clone(),
    ));
    housekeeping.spawn(wakeups::listen(
        pools.housekeeping.clone(),
        Arc::clone(&wake),
        housekeeping_token.clone(),
    ));
    housekeeping.spawn(watch_rules(
        pools.housekeeping.clone(),
        Arc::clone(&store),
        Arc::clone(&wake),
        settings.rules.reload_check_secs,
        housekeeping_token.clone(),
    ));
    if settings.workers.depth_secs > 0 {
        housekeeping.spawn(queue::report(
            database,
            pools.housekeeping.clone(),
            Duration::from_secs(settings.workers.depth_secs),
            housekeeping_token.clone(),
        ));
    }
    housekeeping.spawn(health::watch(
        database,
        pools.clone(),
        keys,
        Arc::clone(&progress),
        Duration::from_secs(settings.workers.stall_secs),
        Duration::from_secs(settings.workers.stall_secs.clamp(1, 15)),
        housekeeping_token.clone(),
    ));
    if let Some(spool) = &spool {
        let ingest_pool = pools.ingest.clone();
        let drain_progress = Arc::clone(&progress);
        housekeeping.spawn(spool.clone().drain(
            database,
            Duration::from_secs(1),
            housekeeping_token.clone(),
            move |chunk| {
                let pool = ingest_pool.clone();
                let progress = Arc::clone(&drain_progress);
                async move { ingest::store_spooled(&pool, chunk, &progress).await }
            },
        ));
    }

    housekeeping.spawn(
        mass::Scheduler {
            pool: pools.housekeeping.clone(),
            apps: Arc::clone(&apps),
            clock: Arc::clone(&shared.clock),
            worker_id: worker_id.clone(),
            grace: Duration::from_secs(settings.broadcast.grace_secs),
            lease: Duration::from_secs(settings.broadcast.lease_secs),
            tick: Duration::from_millis(settings.broadcast.tick_ms),
            backoff: settings.sender.backoff(),
            max_attempts: settings.sender.max_attempts,
        }
        .run(housekeeping_token.clone()),
    );

    housekeeping.spawn(crate::pipeline::days::maintain(
        pools.housekeeping.clone(),
        Arc::clone(&progress),
        Arc::clone(&wake.days),
        housekeeping_token.clone(),
    ));
    if settings.retention.days > 0 {
        housekeeping.spawn(retention::run(
            pools.housekeeping.clone(),
            settings.retention.days,
            Duration::from_secs(settings.retention.every_secs.max(1)),
            Arc::clone(&progress),
            housekeeping_token.clone(),
        ));
    }

    let poll = Duration::from_millis(settings.workers.poll_ms);
    // The fast path from deciding (at receipt, or by a decide worker) to
    // send inside this process (see decide.rs): whole units, bounded; off
    // when this process sends nothing.
    let (handoff_tx, handoff_rx) = tokio::sync::mpsc::channel(64);
    let handoff_tx = (settings.workers.send > 0).then_some(handoff_tx);
    let handoff_rx = Arc::new(tokio::sync::Mutex::new(handoff_rx));

    let at_receipt = settings
        .ingest
        .decide_at_receipt
        .then(|| ingest::DecideAtReceipt {
            receipt: crate::pipeline::decision::Receipt {
                rules: Arc::clone(&store),
                hosted: Arc::clone(&hosted),
                unhosted_seen: Arc::clone(&unhosted_seen),
                database,
                moves: Arc::clone(&shared.moves),
            },
            worker_id: worker_id.clone(),
            lease: settings.lease(),
            handoff: handoff_tx.clone(),
            leases: (settings.workers.send > 0).then(|| Arc::clone(&leases)),
            wake: Arc::clone(&wake),
        });
    let (inbox, ingest) = PgInbox::start(
        pools.ingest.clone(),
        settings.ingest.clone(),
        spool,
        Arc::clone(&progress),
        at_receipt,
        shared.ingest_token.clone(),
    );

    let (outcomes_tx, outcomes_rx) = tokio::sync::mpsc::channel(4096);
    let recorder = tokio::spawn(
        Recorder {
            pool: pools.settle.clone(),
            worker_id: worker_id.clone(),
            policy: RetryPolicy {
                max_attempts: settings.sender.max_attempts,
                backoff: settings.sender.backoff(),
            },
            leases: Arc::clone(&leases),
            wake: Arc::clone(&wake),
            progress: Arc::clone(&progress),
            linger: Duration::from_micros(settings.sender.settle_micros),
        }
        .run(outcomes_rx),
    );
    if settings.workers.send > 0 {
        housekeeping.spawn(outbox::heartbeat(
            pools.housekeeping.clone(),
            Arc::clone(&leases),
            worker_id.clone(),
            settings.lease(),
            housekeeping_token.clone(),
        ));
        housekeeping.spawn(
            outbox::Recovery {
                pool: pools.housekeeping.clone(),
                worker_id: worker_id.clone(),
                leases: Arc::clone(&leases),
                lease: settings.lease(),
                wake: Arc::clone(&wake),
                progress: Arc::clone(&progress),
                apps: app_keys.to_vec(),
            }
            .run(housekeeping_token.clone()),
        );
    }
    for _ in 0..settings.workers.decide {
        let w = DecideWorker {
            pool: pools.decide.clone(),
            rules: Arc::clone(&store),
            wake: Arc::clone(&wake),
            batch: settings.workers.claim_batch,
            worker_id: worker_id.clone(),
            lease: settings.lease(),
            handoff: handoff_tx.clone(),
            leases: (settings.workers.send > 0).then(|| Arc::clone(&leases)),
            poll,
            progress: Arc::clone(&progress),
            hosted: Arc::clone(&hosted),
            apps: Arc::clone(&app_keys),
            database,
            moves: Arc::clone(&shared.moves),
            state_ttl: Duration::from_secs(settings.state.ttl_secs),
            takeover_idle: Duration::from_secs(settings.console.takeover_idle_secs),
            unhosted_seen: Arc::clone(&unhosted_seen),
        };
        workers.spawn(w.run(token.clone()));
    }
    drop(handoff_tx);
    let handler_runner = Arc::new(handlers::HandlerRunner::new(
        pools.settle.clone(),
        worker_id.clone(),
        handlers::HandlerPolicy {
            max_attempts: settings.handlers.max_attempts,
            backoff: settings.handlers.backoff(),
            breaker_failures: settings.handlers.breaker_failures,
            breaker_open: Duration::from_secs(settings.handlers.breaker_open_secs),
            state_ttl: Duration::from_secs(settings.state.ttl_secs),
        },
        Arc::clone(&leases),
        Arc::clone(&wake),
    ));
    let sweep = Arc::new(outbox::Sweep::new(app_keys.to_vec()));
    for _ in 0..settings.workers.send {
        let w = SendWorker {
            pool: pools.send.clone(),
            apps: Arc::clone(&apps),
            wake: Arc::clone(&wake),
            worker_id: worker_id.clone(),
            batch: settings.workers.claim_batch,
            lease: settings.lease(),
            poll,
            max_attempts: settings.sender.max_attempts,
            merge_batchsend: settings.sender.merge_batchsend,
            retry_ambiguous: settings.sender.retry_ambiguous,
            max_reply_age: (settings.sender.max_reply_age_secs > 0)
                .then(|| Duration::from_secs(settings.sender.max_reply_age_secs)),
            call_budget: settings.call_budget(),
            leases: Arc::clone(&leases),
            in_flight: Arc::clone(&shared.in_flight),
            outcomes: outcomes_tx.clone(),
            handlers: Arc::clone(&handler_runner),
            sweep: Arc::clone(&sweep),
            progress: Arc::clone(&progress),
        };
        workers.spawn(w.clone().run_handoff(Arc::clone(&handoff_rx)));
        workers.spawn(w.run(token.clone()));
    }
    drop(outcomes_tx);
    Ok(Cell {
        name: name.to_owned(),
        inbox,
        ingest: Some(ingest),
        recorder: Some(recorder),
        readiness,
    })
}
