//! Queue depths: how much work waits in the two queue tables, as gauges
//! (`pubbot_queue_depth{database,queue}`, `pubbot_queue_oldest_seconds{database,queue}`),
//! read every `workers.depth_secs` by every process. The oldest pending
//! push's age is the one to alert on: it grows when deciding stalls,
//! whatever the load.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows waiting, by queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueDepths {
    /// Stored pushes not decided yet.
    pub inbound_pending: i64,
    /// Seconds since the oldest of them was stored (0 when none).
    pub inbound_oldest_secs: f64,
    /// Replies waiting to be sent, due or not (retries wait here).
    pub outbound_pending: i64,
    /// Of those, the ones due now.
    pub outbound_due: i64,
    /// Replies being sent (leased to a sender).
    pub outbound_sending: i64,
    /// Seconds since the oldest pending reply was planned (0 when none).
    pub outbound_oldest_secs: f64,
}

/// Reads the depths (one statement; every count runs on a partial index).
///
/// # Errors
/// Database errors.
pub async fn depths(pool: &PgPool) -> Result<QueueDepths, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT
             (SELECT count(*) FROM inbound_messages WHERE status = 'pending') AS "inbound_pending!",
             (SELECT coalesce(extract(epoch FROM now() - min(received_at))::float8, 0)
                FROM inbound_messages WHERE status = 'pending') AS "inbound_oldest!",
             (SELECT count(*) FROM outbound_messages WHERE status = 'pending') AS "outbound_pending!",
             (SELECT count(*) FROM outbound_messages
               WHERE status = 'pending' AND next_attempt_at <= now()) AS "outbound_due!",
             (SELECT count(*) FROM outbound_messages WHERE status = 'sending') AS "outbound_sending!",
             (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
                FROM outbound_messages WHERE status = 'pending') AS "outbound_oldest!""#
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueDepths {
        inbound_pending: r.inbound_pending,
        inbound_oldest_secs: r.inbound_oldest,
        outbound_pending: r.outbound_pending,
        outbound_due: r.outbound_due,
        outbound_sending: r.outbound_sending,
        outbound_oldest_secs: r.outbound_oldest,
    })
}

/// Sets the gauges every `every` until `token` is cancelled.
pub(crate) async fn report(
    database: &'static str,
    pool: PgPool,
    every: Duration,
    token: CancellationToken,
) {
    while !token.is_cancelled() {
        match depths(&pool).await {
            Ok(d) => {
                let depth = |queue: &'static str, n: i64| {
                    metrics::gauge!("pubbot_queue_depth", "database" => database, "queue" => queue)
                        .set(n as f64);
                };
                depth("inbound_pending", d.inbound_pending);
                depth("outbound_pending", d.outbound_pending);
                depth("outbound_due", d.outbound_due);
                depth("outbound_sending", d.outbound_sending);
                metrics::gauge!("pubbot_queue_oldest_seconds", "database" => database, "queue" => "inbound_pending")
                    .set(d.inbound_oldest_secs);
                metrics::gauge!("pubbot_queue_oldest_seconds", "database" => database, "queue" => "outbound_pending")
                    .set(d.outbound_oldest_secs);
            }
            Err(e) => tracing::warn!(error = %e, "reading queue depths failed"),
        }
        tokio::select! {
            () = token.cancelled() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}
