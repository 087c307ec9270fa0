//! Health, liveness and the admin listener: `/metrics` (Prometheus),
//! `/healthz` (the process answers) and `/readyz` (the database answers
//! within a deadline, the schema is current, rules are loaded, workers run,
//! and no stage with work due has gone without progress for
//! `workers.stall_secs`). Served on `http.admin_listen`, never on the
//! webhook port.
//!
//! With apps on several databases (`[databases.NAME]`), each database's
//! pipeline is checked on its own and `/readyz` names the database of each
//! problem. The process stays ready while any database is: taking it out
//! of the balancer would stop the healthy apps too, and the stopped
//! database's pushes are spooled and answered meanwhile.
//! `/readyz?database=NAME` answers for one database alone, and
//! `pubbot_database_up{database}` tells which one is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::Pools;
use crate::progress::{Progress, Stage};

/// The process-wide Prometheus recorder. The `metrics` facade has one
/// global recorder, so every daemon in a process (tests run several)
/// shares it.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .and_then(|b| {
                // A count, not a duration.
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("pubbot_ingest_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only this one's"
            );
        }
        metrics::gauge!("pubbot_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// What `/readyz` checks, for one database's pipeline.
#[derive(Clone)]
pub(crate) struct Readiness {
    /// The database's name (`default` for `[database]`).
    pub database: &'static str,
    /// The housekeeping pool.
    pub pool: PgPool,
    /// Stage progress.
    pub progress: Arc<Progress>,
    /// How long a stage may stall.
    pub stall: Duration,
    /// Set once rules are loaded and workers started.
    pub started: Arc<AtomicBool>,
    /// Cancelled when the daemon stops.
    pub token: CancellationToken,
}

impl Readiness {
    /// Every reason the daemon is not ready (empty: ready).
    pub(crate) async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.token.is_cancelled() {
            problems.push("shutting down".to_owned());
        }
        if !self.started.load(Ordering::Relaxed) {
            problems.push("starting: rules not loaded or workers not running".to_owned());
        }
        let db = tokio::time::timeout(Duration::from_secs(2), crate::db::check_schema(&self.pool));
        match db.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("database: {e}")),
            Err(_) => problems.push("database: no answer within 2 s".to_owned()),
        }
        for (stage, secs) in self.progress.stalled(self.stall) {
            problems.push(format!(
                "stage {stage} stuck: work due, no progress for {secs} s"
            ));
        }
        problems
    }
}

#[derive(serde::Deserialize)]
struct ReadyQuery {
    database: Option<String>,
}

async fn readyz(
    State(cells): State<Arc<[Readiness]>>,
    Query(q): Query<ReadyQuery>,
) -> impl IntoResponse {
    let asked: Vec<&Readiness> = match &q.database {
        Some(name) => cells.iter().filter(|c| c.database == name).collect(),
        None => cells.iter().collect(),
    };
    if asked.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no database {:?} is configured\n",
                q.database.unwrap_or_default()
            ),
        );
    }
    let several = cells.len() > 1;
    let mut lines = Vec::new();
    let mut ready = 0;
    for c in &asked {
        let problems = c.problems().await;
        if problems.is_empty() {
            ready += 1;
        }
        for p in problems {
            lines.push(if several {
                format!("database {}: {p}", c.database)
            } else {
                p
            });
        }
    }
    // Ready while any database asked about is: see the module's doc.
    if ready > 0 && !cells[0].token.is_cancelled() {
        let head = if lines.is_empty() {
            "ready".to_owned()
        } else {
            format!("ready ({ready} of {} databases)", asked.len())
        };
        (StatusCode::OK, format!("{head}\n{}", lines.join("\n")))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", lines.join("\n")),
        )
    }
}

/// The admin router: `/metrics`, `/healthz`, `/readyz` over every
/// database's pipeline (the default one first).
pub(crate) fn router(readiness: Vec<Readiness>) -> Router {
    let readiness: Arc<[Readiness]> = readiness.into();
    Router::new()
        .route("/metrics", get(|| async { prometheus().render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Every `every`: reads whether work is due for decide and send, sets the
/// stall gauges, and the pool gauges. Runs until `token` is cancelled.
pub(crate) async fn watch(
    database: &'static str,
    pools: Pools,
    apps: Vec<String>,
    progress: Arc<Progress>,
    stall: Duration,
    every: Duration,
    token: CancellationToken,
) {
    loop {
        let due = async {
            let inbound: bool = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM inbound_messages WHERE status = 'pending' AND day >= $1) AS "due!""#,
                progress.days.since()
            )
            .fetch_one(&pools.housekeeping)
            .await?;
            let outbound =
                crate::pipeline::outbox::any_due(&pools.housekeeping, &apps, progress.days.since())
                    .await?;
            Ok::<_, sqlx::Error>((inbound, outbound))
        };
        let up = match due.await {
            Ok((inbound, outbound)) => {
                progress.set_due(Stage::Decide, inbound);
                progress.set_due(Stage::Send, outbound);
                1.0
            }
            Err(e) => {
                tracing::warn!(database, error = %e, "reading due work failed");
                0.0
            }
        };
        metrics::gauge!("pubbot_database_up", "database" => database).set(up);
        progress.report(database, stall);
        if let Some(n) = listen_overflows() {
            metrics::counter!("pubbot_webhook_listen_overflows_total").absolute(n);
        }
        for (stage, pool) in pools.named() {
            let size = f64::from(pool.size());
            let idle = pool.num_idle() as f64;
            metrics::gauge!("pubbot_db_pool_connections", "database" => database, "pool" => stage, "state" => "open")
                .set(size);
            metrics::gauge!("pubbot_db_pool_connections", "database" => database, "pool" => stage, "state" => "idle")
                .set(idle);
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Connections the kernel dropped because a listen queue was full
/// (`TcpExtListenOverflows` of `/proc/net/netstat`): pushes that never
/// reached pubbot, so it could not count them itself. The count is the
/// network namespace's — the pod's on Kubernetes, the host's under
/// systemd (where other servers' queues count too). `None` off Linux.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_stuck_only_with_work_due_and_no_progress() {
        let p = Progress::default();
        let zero = Duration::ZERO;
        // Let the clock move past the start.
        std::thread::sleep(Duration::from_millis(5));
        assert!(p.stalled(zero).is_empty(), "nothing due");
        p.set_due(Stage::Send, true);
        assert_eq!(p.stalled(zero).len(), 1);
        assert_eq!(p.stalled(zero)[0].0, "send");
        assert!(
            p.stalled(Duration::from_secs(60)).is_empty(),
            "not for long"
        );
        p.ingest_waiting.store(3, Ordering::Relaxed);
        let names: Vec<&str> = p.stalled(zero).iter().map(|s| s.0).collect();
        assert_eq!(names, ["ingest", "send"]);
        p.advance(Stage::Send);
        p.advance(Stage::Ingest);
        assert!(p.stalled(Duration::from_secs(1)).is_empty(), "progress");
    }
}
