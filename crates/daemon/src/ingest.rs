//! Ingest: the webhook's [`Inbox`] backed by PostgreSQL, with group commit.
//!
//! Each push waits in a channel; when one of `ingest.concurrent_flushes`
//! flush slots is free (one by default), a batcher takes everything that
//! has arrived meanwhile (up to `ingest.batch_max`; optionally waiting
//! `ingest.flush_micros` for more) and commits it in one
//! `INSERT ... ON CONFLICT DO NOTHING`, so throughput is not capped by one
//! commit per request: the longer a commit takes, the larger the next
//! batch. A push is acknowledged only
//! after its batch committed; a duplicate (R6 key already stored) is
//! acknowledged as such; a failed commit answers every push of the batch
//! `Unavailable` (503), and the platform retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pubbot_webhook::{Accepted, Inbox, InboxError, Push};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::IngestSettings;

struct Pending {
    row: Row,
    done: oneshot::Sender<Result<Accepted, InboxError>>,
}

struct Row {
    app_key: String,
    mcid: String,
    user_id: String,
    msg_type: String,
    dedup_key: String,
    msg_id: Option<String>,
    create_time: Option<i64>,
    message: String,
    raw: String,
    trace_id: String,
}

/// The PostgreSQL inbox. Cheap to clone.
#[derive(Clone)]
pub struct PgInbox {
    tx: mpsc::Sender<Pending>,
}

/// A new trace id, carried from push to reply in logs and rows.
pub fn trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl PgInbox {
    /// Starts the batcher; it stops when `token` is cancelled, after
    /// committing what it holds.
    pub fn start(
        pool: PgPool,
        settings: IngestSettings,
        token: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.batch_max * settings.concurrent_flushes * 4);
        let handle = tokio::spawn(batcher(pool, settings, rx, token));
        (Self { tx }, handle)
    }
}

impl Inbox for PgInbox {
    async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
        let m = &push.message;
        let trace = trace_id();
        let row = Row {
            app_key: push.app_key.clone(),
            mcid: m.to.0.clone(),
            user_id: m.from.0.clone(),
            msg_type: m.msg_type().to_owned(),
            dedup_key: push.dedup_key.to_string(),
            msg_id: m.msg_id.as_ref().map(|i| i.0.clone()),
            create_time: m.create_time.map(|c| c.0),
            message: serde_json::to_string(m).map_err(|e| InboxError::Refused(e.to_string()))?,
            raw: String::from_utf8_lossy(&push.raw).into_owned(),
            trace_id: trace.clone(),
        };
        tracing::debug!(trace_id = %trace, app_key = %push.app_key, mcid = %m.to, msg_type = m.msg_type(), "push received");
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { row, done })
            .await
            .map_err(|_| InboxError::Unavailable("ingest is shutting down".into()))?;
        wait.await
            .map_err(|_| InboxError::Unavailable("ingest dropped the push".into()))?
    }
}

async fn batcher(
    pool: PgPool,
    settings: IngestSettings,
    mut rx: mpsc::Receiver<Pending>,
    token: CancellationToken,
) {
    let flushes = Arc::new(Semaphore::new(settings.concurrent_flushes));
    let wait = Duration::from_micros(settings.flush_micros);
    loop {
        let first = tokio::select! {
            () = token.cancelled() => break,
            item = rx.recv() => match item {
                Some(p) => p,
                None => break,
            },
        };
        // Group commit: wait for a flush slot, then take everything that
        // arrived meanwhile (and, with `flush_micros`, wait a little for
        // more). While the slots are busy committing, the next batch grows
        // by itself; an idle daemon commits a lone push at once. (Measured
        // against gathering first and then waiting for a slot with a timer:
        // larger batches, less PostgreSQL CPU, more pushes per second and a
        // lower reply latency; BENCHMARKS.md.)
        let Ok(permit) = Arc::clone(&flushes).acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            flush(&pool, batch).await;
            drop(permit);
        });
    }
    // Let the flushes in flight finish.
    let _ = flushes
        .acquire_many(u32::try_from(settings.concurrent_flushes).unwrap_or(u32::MAX))
        .await;
}

async fn flush(pool: &PgPool, batch: Vec<Pending>) {
    let started = Instant::now();
    let n = batch.len();
    let mut cols = Columns::with_capacity(n);
    let mut waiters = Vec::with_capacity(n);
    for p in batch {
        waiters.push(((p.row.app_key.clone(), p.row.dedup_key.clone()), p.done));
        cols.push(p.row);
    }
    let inserted = sqlx::query!(
        r#"INSERT INTO inbound_messages
               (app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id)
           SELECT a, m, u, t, d, i, c, j::json, r, tr
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::int8[], $8::text[], $9::text[], $10::text[])
                  AS x(a, m, u, t, d, i, c, j, r, tr)
           ON CONFLICT (app_key, dedup_key) DO NOTHING
           RETURNING app_key, dedup_key"#,
        &cols.app_key,
        &cols.mcid,
        &cols.user_id,
        &cols.msg_type,
        &cols.dedup_key,
        &cols.msg_id as &[Option<String>],
        &cols.create_time as &[Option<i64>],
        &cols.message,
        &cols.raw,
        &cols.trace_id,
    )
    .fetch_all(pool)
    .await;
    metrics::histogram!("pubbot_ingest_batch_size").record(n as f64);
    metrics::histogram!("pubbot_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    match inserted {
        Ok(rows) => {
            let mut new: HashSet<(String, String)> =
                rows.into_iter().map(|r| (r.app_key, r.dedup_key)).collect();
            for (key, done) in waiters {
                // The first of several equal pushes in one batch is the new one.
                let outcome = if new.remove(&key) {
                    metrics::counter!("pubbot_inbound_messages_total", "outcome" => "stored")
                        .increment(1);
                    Accepted::New
                } else {
                    metrics::counter!("pubbot_inbound_messages_total", "outcome" => "duplicate")
                        .increment(1);
                    Accepted::Duplicate
                };
                let _ = done.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, pushes = n, "ingest commit failed; answering 503");
            metrics::counter!("pubbot_ingest_failures_total").increment(1);
            for (_, done) in waiters {
                let _ = done.send(Err(InboxError::Unavailable(format!("database: {e}"))));
            }
        }
    }
}

#[derive(Default)]
struct Columns {
    app_key: Vec<String>,
    mcid: Vec<String>,
    user_id: Vec<String>,
    msg_type: Vec<String>,
    dedup_key: Vec<String>,
    msg_id: Vec<Option<String>>,
    create_time: Vec<Option<i64>>,
    message: Vec<String>,
    raw: Vec<String>,
    trace_id: Vec<String>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            app_key: Vec::with_capacity(n),
            mcid: Vec::with_capacity(n),
            user_id: Vec::with_capacity(n),
            msg_type: Vec::with_capacity(n),
            dedup_key: Vec::with_capacity(n),
            msg_id: Vec::with_capacity(n),
            create_time: Vec::with_capacity(n),
            message: Vec::with_capacity(n),
            raw: Vec::with_capacity(n),
            trace_id: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: Row) {
        self.app_key.push(r.app_key);
        self.mcid.push(r.mcid);
        self.user_id.push(r.user_id);
        self.msg_type.push(r.msg_type);
        self.dedup_key.push(r.dedup_key);
        self.msg_id.push(r.msg_id);
        self.create_time.push(r.create_time);
        self.message.push(r.message);
        self.raw.push(r.raw);
        self.trace_id.push(r.trace_id);
    }
}
