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
//! acknowledged as such.
//!
//! # What no push may do to another
//!
//! A row PostgreSQL would refuse fails the whole multi-row `INSERT`, and
//! with it every push in the batch. So a push is checked before it joins a
//! batch (`storable`: no NUL in the columns `text` keeps, ids of a sane
//! length; the body is kept as bytes, whatever they are), and a batch that
//! still fails for a row-level reason (SQLSTATE class 22, or 54000) is
//! split in halves and retried until the one push at fault is found and
//! refused (`422`, counted as `unstorable`) alone.
//!
//! # When the database cannot take a push in time (R15)
//!
//! A push not committed within `ingest.spool_after_ms` (the database is
//! down, or far behind a burst) is written to the local spool
//! ([`crate::spool`]) and answered from there; the spool drains into the
//! table when the database answers. Only a push that neither can take
//! gets no answer ([`InboxError::Unavailable`]), and the platform retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pubbot_webhook::{Accepted, Inbox, InboxError, Push};
use sqlx::PgPool;

use crate::health::{Progress, Stage};
use crate::spool::{Spool, SpooledPush};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::IngestSettings;

struct Pending {
    /// Shared with `accept`, which spools the same row if the commit fails.
    row: Arc<Row>,
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
    raw: Vec<u8>,
    trace_id: String,
}

impl Row {
    fn spooled(&self) -> SpooledPush {
        SpooledPush {
            app_key: self.app_key.clone(),
            mcid: self.mcid.clone(),
            user_id: self.user_id.clone(),
            msg_type: self.msg_type.clone(),
            dedup_key: self.dedup_key.clone(),
            msg_id: self.msg_id.clone(),
            create_time: self.create_time,
            message: self.message.clone(),
            raw_hex: hex::encode(&self.raw),
            trace_id: self.trace_id.clone(),
        }
    }

    fn from_spooled(p: SpooledPush) -> Self {
        Self {
            raw: hex::decode(&p.raw_hex).unwrap_or_default(),
            app_key: p.app_key,
            mcid: p.mcid,
            user_id: p.user_id,
            msg_type: p.msg_type,
            dedup_key: p.dedup_key,
            msg_id: p.msg_id,
            create_time: p.create_time,
            message: p.message,
            trace_id: p.trace_id,
        }
    }
}

/// Longest id (account, user, `MsgId`, type) kept, in bytes: far beyond any
/// real id, and far below what a btree index row can hold.
const MAX_ID_BYTES: usize = 512;

/// Whether PostgreSQL can keep the push's columns: `text` refuses NUL, and
/// an index row has a size limit. The parsed message is stored as `json`,
/// whose escapes (`\u0000`) are fine, and the body as bytes.
///
/// # Errors
/// Names the field that cannot be stored.
fn storable(row: &Row) -> Result<(), String> {
    for (field, value) in [
        ("ToUserName", row.mcid.as_str()),
        ("FromUserName", row.user_id.as_str()),
        ("MsgType", row.msg_type.as_str()),
        ("MsgId", row.msg_id.as_deref().unwrap_or("")),
        ("dedup key", row.dedup_key.as_str()),
    ] {
        if value.contains('\0') {
            return Err(format!("{field} contains a NUL character"));
        }
        if value.len() > MAX_ID_BYTES {
            return Err(format!(
                "{field} is {} bytes, at most {MAX_ID_BYTES} are kept",
                value.len()
            ));
        }
    }
    Ok(())
}

/// The PostgreSQL inbox. Cheap to clone.
#[derive(Clone)]
pub struct PgInbox {
    tx: mpsc::Sender<Pending>,
    spool: Option<Spool>,
    spool_after: Duration,
    progress: Arc<Progress>,
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
        spool: Option<Spool>,
        progress: Arc<Progress>,
        token: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.batch_max * settings.concurrent_flushes * 4);
        let spool_after = Duration::from_millis(settings.spool_after_ms);
        let handle = tokio::spawn(batcher(pool, settings, Arc::clone(&progress), rx, token));
        (
            Self {
                tx,
                spool,
                spool_after,
                progress,
            },
            handle,
        )
    }

    async fn via_database(&self, row: Arc<Row>) -> Result<Accepted, InboxError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { row, done })
            .await
            .map_err(|_| InboxError::Unavailable("ingest is shutting down".into()))?;
        wait.await
            .map_err(|_| InboxError::Unavailable("ingest dropped the push".into()))?
    }

    async fn via_spool(&self, row: &Row, why: &str) -> Result<Accepted, InboxError> {
        let Some(spool) = &self.spool else {
            return Err(InboxError::Unavailable(format!(
                "{why}; no spool configured"
            )));
        };
        match spool.append(&row.spooled()).await {
            Ok(()) => {
                tracing::info!(trace_id = %row.trace_id, reason = why, "push spooled; stored when the database answers");
                metrics::counter!("pubbot_spool_pushes_total", "outcome" => "spooled").increment(1);
                metrics::counter!("pubbot_inbound_messages_total", "outcome" => "spooled")
                    .increment(1);
                self.progress.advance(Stage::Ingest);
                Ok(Accepted::New)
            }
            Err(e) => {
                metrics::counter!("pubbot_spool_pushes_total", "outcome" => "refused").increment(1);
                Err(InboxError::Unavailable(format!("{why}; spool: {e}")))
            }
        }
    }
}

/// Inserts pushes drained from the spool (deduplicated by the R6 key).
///
/// # Errors
/// The database error, as text.
pub async fn store_spooled(pool: &PgPool, pushes: Vec<SpooledPush>) -> Result<(), String> {
    let rows: Vec<Row> = pushes.into_iter().map(Row::from_spooled).collect();
    let rows: Vec<&Row> = rows.iter().collect();
    insert(pool, &rows)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Inbox for PgInbox {
    async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
        let m = &push.message;
        let trace = trace_id();
        let row = Row {
            app_key: push.app_key.clone(),
            mcid: m.to.to_string(),
            user_id: m.from.to_string(),
            msg_type: m.msg_type().to_owned(),
            dedup_key: push.dedup_key.to_string(),
            msg_id: m.msg_id.as_ref().map(ToString::to_string),
            create_time: m.create_time.map(|c| c.0),
            message: serde_json::to_string(m).map_err(|e| InboxError::Refused(e.to_string()))?,
            raw: push.raw.to_vec(),
            trace_id: trace.clone(),
        };
        if let Err(why) = storable(&row) {
            tracing::warn!(trace_id = %trace, app_key = %push.app_key, reason = %why, "push cannot be stored; refused");
            metrics::counter!("pubbot_inbound_messages_total", "outcome" => "unstorable")
                .increment(1);
            return Err(InboxError::Refused(why));
        }
        tracing::debug!(trace_id = %trace, app_key = %push.app_key, mcid = %m.to, msg_type = m.msg_type(), "push received");
        self.progress
            .ingest_waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = Arc::new(row);
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.spool_after, self.via_database(Arc::clone(&row))).await;
        self.progress
            .ingest_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = match outcome {
            Ok(Ok(accepted)) => Ok(accepted),
            Ok(Err(InboxError::Refused(why))) => Err(InboxError::Refused(why)),
            // The trace id stays; a later commit of the same push (it may
            // still be in a batch) and the drain are deduplicated.
            Ok(Err(InboxError::Unavailable(why))) => self.via_spool(&row, &why).await,
            Err(_) => {
                self.via_spool(&row, "database commit not done in time")
                    .await
            }
        };
        // One line per push (target `pubbot::push`: RUST_LOG=info,pubbot::push=warn
        // turns it down).
        let result = match &outcome {
            Ok(Accepted::New) => "stored",
            Ok(Accepted::Duplicate) => "duplicate",
            Err(InboxError::Refused(_)) => "refused",
            Err(InboxError::Unavailable(_)) => "not stored",
        };
        tracing::info!(target: "pubbot::push", trace_id = %trace, app_key = %push.app_key, mcid = %m.to, user = %m.from, msg_type = m.msg_type(), outcome = result, latency_ms = started.elapsed().as_millis() as u64, "push");
        outcome
    }
}

async fn batcher(
    pool: PgPool,
    settings: IngestSettings,
    progress: Arc<Progress>,
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
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            flush(&pool, batch).await;
            progress.advance(Stage::Ingest);
            drop(permit);
        });
    }
    // Let the flushes in flight finish.
    let _ = flushes
        .acquire_many(u32::try_from(settings.concurrent_flushes).unwrap_or(u32::MAX))
        .await;
}

/// Inserts rows in one statement; returns the R6 keys that were new.
async fn insert(pool: &PgPool, rows: &[&Row]) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut cols = Columns::with_capacity(rows.len());
    for r in rows {
        cols.push(r);
    }
    let inserted = sqlx::query!(
        r#"INSERT INTO inbound_messages
               (app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw, trace_id)
           SELECT a, m, u, t, d, i, c, j::json, r, tr
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::int8[], $8::text[], $9::bytea[], $10::text[])
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
    .await?;
    Ok(inserted
        .into_iter()
        .map(|r| (r.app_key, r.dedup_key))
        .collect())
}

/// Whether an error is about a row's data (one push at fault), not the
/// database being away: class 22 (data exception: a NUL, an encoding) and
/// 54000 (an index row too large).
fn row_level(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c == "54000")
}

async fn flush(pool: &PgPool, batch: Vec<Pending>) {
    let started = Instant::now();
    let n = batch.len();
    metrics::histogram!("pubbot_ingest_batch_size").record(n as f64);
    flush_part(pool, batch).await;
    metrics::histogram!("pubbot_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
}

/// Commits `batch`; on a row-level failure, each half on its own, until
/// the push at fault is alone and refused.
fn flush_part(
    pool: &PgPool,
    mut batch: Vec<Pending>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let rows: Vec<&Row> = batch.iter().map(|p| &*p.row).collect();
        let inserted = insert(pool, &rows).await;
        drop(rows);
        match inserted {
            Ok(new) => {
                let mut new: HashSet<(String, String)> = new.into_iter().collect();
                for p in batch {
                    let key = (p.row.app_key.clone(), p.row.dedup_key.clone());
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
                    let _ = p.done.send(Ok(outcome));
                }
            }
            Err(e) if row_level(&e) && batch.len() > 1 => {
                tracing::warn!(error = %e, pushes = batch.len(), "a push in the batch cannot be stored; committing the rest without it");
                let second = batch.split_off(batch.len() / 2);
                flush_part(pool, batch).await;
                flush_part(pool, second).await;
            }
            Err(e) if row_level(&e) => {
                for p in batch {
                    tracing::warn!(trace_id = %p.row.trace_id, error = %e, "push cannot be stored; refused");
                    metrics::counter!("pubbot_inbound_messages_total", "outcome" => "unstorable")
                        .increment(1);
                    let _ = p
                        .done
                        .send(Err(InboxError::Refused(format!("cannot be stored: {e}"))));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pushes = batch.len(), "ingest commit failed; spooling the batch");
                metrics::counter!("pubbot_ingest_failures_total").increment(1);
                for p in batch {
                    let _ = p
                        .done
                        .send(Err(InboxError::Unavailable(format!("database: {e}"))));
                }
            }
        }
    })
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
    raw: Vec<Vec<u8>>,
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

    /// Copies the row's fields into the statement's arrays (the one copy
    /// a push's fields make on their way to PostgreSQL).
    fn push(&mut self, r: &Row) {
        self.app_key.push(r.app_key.clone());
        self.mcid.push(r.mcid.clone());
        self.user_id.push(r.user_id.clone());
        self.msg_type.push(r.msg_type.clone());
        self.dedup_key.push(r.dedup_key.clone());
        self.msg_id.push(r.msg_id.clone());
        self.create_time.push(r.create_time);
        self.message.push(r.message.clone());
        self.raw.push(r.raw.clone());
        self.trace_id.push(r.trace_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, key: &str) -> Row {
        Row {
            app_key: "a".into(),
            mcid: "shop".into(),
            user_id: user.into(),
            msg_type: "text".into(),
            dedup_key: key.into(),
            msg_id: Some(key.into()),
            create_time: None,
            message: "{}".into(),
            raw: b"<xml/>".to_vec(),
            trace_id: "t".into(),
        }
    }

    #[test]
    fn what_text_cannot_keep_is_named_before_the_batch() {
        assert!(storable(&row("alice", "k")).is_ok());
        let e = storable(&row("al\0ice", "k")).unwrap_err();
        assert!(e.contains("FromUserName"), "{e}");
        let e = storable(&row(&"x".repeat(MAX_ID_BYTES + 1), "k")).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_row_postgres_refuses_is_split_out_of_its_batch(pool: PgPool) {
        // Past the check (as a future column might be): the batch fails as
        // a whole, is split, and only the row at fault is refused.
        let mut waits = Vec::new();
        let mut batch = Vec::new();
        for i in 0..9 {
            let user = if i == 4 {
                "bad\0".to_owned()
            } else {
                format!("u{i}")
            };
            let (done, wait) = oneshot::channel();
            batch.push(Pending {
                row: Arc::new(row(&user, &format!("k{i}"))),
                done,
            });
            waits.push(wait);
        }
        flush(&pool, batch).await;
        for (i, w) in waits.into_iter().enumerate() {
            let r = w.await.unwrap();
            if i == 4 {
                assert!(matches!(r, Err(InboxError::Refused(_))), "{r:?}");
            } else {
                assert_eq!(r, Ok(Accepted::New), "push {i}");
            }
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 8);
    }
}
