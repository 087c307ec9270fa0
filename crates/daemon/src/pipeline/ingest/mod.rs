//! Ingest: the webhook's [`Inbox`] backed by PostgreSQL, with group commit.
//!
//! Each push waits in a channel; when one of `ingest.concurrent_flushes`
//! flush slots is free (two by default; a batch sharing a user with one
//! still committing waits for that commit), a batcher takes everything that
//! has arrived meanwhile (up to `ingest.batch_max`; waiting up to
//! `ingest.flush_micros` from the first push's arrival for more, while
//! they keep coming) and commits it in one
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
//! ([`crate::pipeline::spool`]) and answered from there; the spool drains into the
//! table when the database answers. Only a push that neither can take
//! gets no answer ([`InboxError::Unavailable`]), and the platform retries.
//!
//! A user with a push in the spool has their later pushes spooled too,
//! until the drain has stored them, so that a user's pushes are stored
//! (and decided, and answered) in the order they came.
//!
//! # Decided at receipt
//!
//! With `ingest.decide_at_receipt` (the default), a push is decided as it
//! is received, by the rules in force, before it joins a batch — when they
//! need nothing from the database for it: no rule reads or sets
//! conversation state or calls a handler, and it is not a follow event.
//! The batch's one statement then stores the push `done` and plans its
//! replies (the outbox rows, [`crate::pipeline::outbox`] invariant 1) in the same
//! commit, leasing them to this process's senders when nothing earlier of
//! their user is open, or only replies this process holds (they then
//! follow those in process: "Following a reply held here" in
//! [`crate::pipeline::outbox`]) — so such a push costs no decide claim, no update of
//! its row and no NOTIFY. The statement stores it `pending` instead, for a
//! decide worker, when its user has an undecided push or an open handler
//! call in the table, or an undecided push earlier in the same batch
//! (invariant 5: a user's pushes are decided in order).
//!
//! # Ingest first
//!
//! While ingest is behind ([`crate::progress::IngestFirst`]: a group
//! commit's oldest push waited `ingest.yield_after_ms`), pushes are stored
//! undecided, `pending`, as if `decide_at_receipt` were off: one insert a
//! push and no probes of the user's open replies, so the database's time
//! goes to storing pushes, and the decide workers (which yield meanwhile)
//! decide them later in order. Measured at 10,000 pushes/s for 60 s on two
//! cores (BENCHMARKS.md, "Ingest first under overload"): deciding at
//! receipt throughout, 23% of the pushes were never acknowledged within the
//! platform's tries; stored undecided, every one was. Counted in
//! `pubbot_ingest_undecided_behind_total`.

mod flush;
pub(crate) mod moved;
pub(crate) mod pending;
mod routed;
mod statement;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pubbot_webhook::{Accepted, Inbox, InboxError, Push};
use sqlx::PgPool;

use crate::pipeline::spool::{Spool, SpooledPush};
use crate::progress::{Progress, Stage};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::IngestSettings;
use crate::pipeline::decision::{AtReceipt, Receipt};
use crate::pipeline::outbox::{Held, Leases};
use crate::pipeline::wakeups::Wakeups;
use flush::flush_part;
pub(crate) use routed::Routed;
use statement::{insert, Committing};

struct Pending {
    /// Shared with `accept`, which spools the same row if the commit fails.
    row: Arc<Row>,
    /// When it joined the queue (a batch waits for company at most
    /// `ingest.flush_micros` from its first push's arrival).
    at: Instant,
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
    /// Decided at receipt (`None`: by a decide worker).
    decided: Option<AtReceipt>,
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
            decided: None,
        }
    }
}

/// Longest id (account, user, `MsgId`, type) kept, in bytes: far beyond any
/// real id, and far below what a btree index row can hold.
const MAX_ID_BYTES: usize = 512;

/// A push PostgreSQL could not keep: which field, and why.
#[derive(Debug, thiserror::Error)]
#[error("{field} {problem}")]
struct Unstorable {
    field: &'static str,
    problem: String,
}

/// Whether PostgreSQL can keep the push's columns: `text` refuses NUL, and
/// an index row has a size limit. The parsed message is stored as `json`,
/// whose escapes (`\u0000`) are fine, and the body as bytes.
///
/// # Errors
/// Names the field that cannot be stored.
fn storable(row: &Row) -> Result<(), Unstorable> {
    for (field, value) in [
        ("ToUserName", row.mcid.as_str()),
        ("FromUserName", row.user_id.as_str()),
        ("MsgType", row.msg_type.as_str()),
        ("MsgId", row.msg_id.as_deref().unwrap_or("")),
        ("dedup key", row.dedup_key.as_str()),
    ] {
        if value.contains('\0') {
            return Err(Unstorable {
                field,
                problem: "contains a NUL character".into(),
            });
        }
        if value.len() > MAX_ID_BYTES {
            return Err(Unstorable {
                field,
                problem: format!("is {} bytes, at most {MAX_ID_BYTES} are kept", value.len()),
            });
        }
    }
    Ok(())
}

/// When a push of a user the spool holds may be written there.
///
/// While a push of the user waits for its own turn (`on_its_way`), this one
/// waits as long as a push the database failed: until its arrival plus
/// `spool_after` (`deadline`), after every earlier push's turn. Otherwise
/// each earlier push of the user is in the spool already, or arrived before
/// the hold began and went to the database, where by its own arrival plus
/// `spool_after` it is stored or sent to the spool: so once the hold has
/// lasted `spool_after` (twice, for a task a busy runtime polls late), this
/// one goes at once. After an outage a user's new pushes are then answered
/// in milliseconds, not `spool_after` later each (with the drain and the
/// backlog's replies competing for the cores, that wait took some past the
/// platform's five seconds: unanswered, R15).
fn spool_turn(
    holding: crate::pipeline::spool::Holding,
    deadline: tokio::time::Instant,
    spool_after: Duration,
) -> tokio::time::Instant {
    if holding.on_its_way {
        return deadline;
    }
    tokio::time::Instant::from_std(holding.since + spool_after * 2).min(deadline)
}

/// The PostgreSQL inbox. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgInbox {
    tx: mpsc::Sender<Pending>,
    spool: Option<Spool>,
    spool_after: Duration,
    progress: Arc<Progress>,
    receipt: Option<Receipt>,
}

/// Deciding at receipt: the rules, and where the replies it plans go
/// after their commit.
#[derive(Clone)]
pub(crate) struct DecideAtReceipt {
    /// The rules and the hosted accounts.
    pub receipt: Receipt,
    /// This process's lease identity.
    pub worker_id: String,
    /// Lease of rows handed to this process's senders.
    pub lease: Duration,
    /// This process's senders (no senders: replies are planned `pending`).
    pub handoff: Option<mpsc::Sender<Vec<Held>>>,
    /// The leases this process's senders hold.
    pub leases: Option<Arc<Leases>>,
    /// Wakes decide workers (pushes left to them) and senders.
    pub wake: Arc<Wakeups>,
}

/// A new trace id, carried from push to reply in logs and rows.
pub(crate) fn trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl PgInbox {
    /// Starts the batcher; it stops when `token` is cancelled, after
    /// committing what it holds.
    /// `at_receipt`: decide pushes as they are received (see "Decided at
    /// receipt"); `None`: every push waits for a decide worker.
    pub(crate) fn start(
        pool: PgPool,
        settings: IngestSettings,
        spool: Option<Spool>,
        progress: Arc<Progress>,
        at_receipt: Option<DecideAtReceipt>,
        token: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.batch_max * settings.concurrent_flushes * 4);
        let spool_after = Duration::from_millis(settings.spool_after_ms);
        let receipt = at_receipt.as_ref().map(|a| a.receipt.clone());
        let sink = Sink {
            pool,
            progress: Arc::clone(&progress),
            at_receipt,
        };
        let handle = tokio::spawn(batcher(Arc::new(sink), settings, rx, token));
        (
            Self {
                tx,
                spool,
                spool_after,
                progress,
                receipt,
            },
            handle,
        )
    }

    async fn via_database(&self, row: Arc<Row>) -> Result<Accepted, InboxError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                row,
                done,
                at: Instant::now(),
            })
            .await
            .map_err(|_| InboxError::Unavailable("ingest is shutting down".into()))?;
        wait.await
            .map_err(|_| InboxError::Unavailable("ingest dropped the push".into()))?
    }

    /// The database within `ingest.spool_after_ms`, else the spool.
    ///
    /// A push the database failed is spooled at that deadline too, not at
    /// once: when the database goes away, a user's earlier push may be in
    /// a commit that hangs until its deadline while their next one fails
    /// at once (no connection); spooled at once, the later push would be
    /// drained, and answered, first (seen with a cluster stopped by
    /// `pg_ctl stop -m immediate`). Spooled at arrival + `spool_after`,
    /// each user's pushes reach the spool in the order they arrived (a
    /// push that follows its user's earlier ones into the spool waits as
    /// long).
    async fn via_database_in_time(
        &self,
        row: &Arc<Row>,
        deadline: tokio::time::Instant,
    ) -> Result<Accepted, InboxError> {
        match tokio::time::timeout_at(deadline, self.via_database(Arc::clone(row))).await {
            Ok(Ok(accepted)) => Ok(accepted),
            Ok(Err(InboxError::Refused(why))) => Err(InboxError::Refused(why)),
            // The trace id stays; a later commit of the same push (it may
            // still be in a batch) and the drain are deduplicated.
            Ok(Err(InboxError::Unavailable(why))) => {
                let _held = self
                    .spool
                    .as_ref()
                    .map(|s| s.reserve(&row.app_key, &row.mcid, &row.user_id));
                tokio::time::sleep_until(deadline).await;
                self.via_spool(row, &why).await
            }
            Err(_) => {
                self.via_spool(row, "database commit not done in time")
                    .await
            }
        }
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
/// The database error.
pub(crate) async fn store_spooled(
    pool: &PgPool,
    pushes: Vec<SpooledPush>,
    progress: &Progress,
) -> Result<(), sqlx::Error> {
    let rows: Vec<Row> = pushes.into_iter().map(Row::from_spooled).collect();
    let rows: Vec<&Row> = rows.iter().collect();
    insert(pool, &rows, None, progress.days.since())
        .await
        .map(|_| ())
}

impl Inbox for PgInbox {
    async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
        let trace = trace_id();
        self.accept_traced(push, trace).await
    }
}

impl PgInbox {
    /// Stores one push. The message's span starts here, with the trace id
    /// it keeps through decide and send (see `crate::telemetry`).
    #[tracing::instrument(name = "message", level = "debug", skip_all, fields(trace_id = %trace, app_key = %push.app_key))]
    async fn accept_traced(&self, push: Push, trace: String) -> Result<Accepted, InboxError> {
        let m = &push.message;
        let mut row = Row {
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
            decided: None,
        };
        if let Err(why) = storable(&row) {
            tracing::warn!(trace_id = %trace, app_key = %push.app_key, reason = %why, "push cannot be stored; refused");
            metrics::counter!("pubbot_inbound_messages_total", "outcome" => "unstorable")
                .increment(1);
            return Err(InboxError::Refused(why.to_string()));
        }
        tracing::debug!(trace_id = %trace, app_key = %push.app_key, mcid = %m.to, msg_type = m.msg_type(), "push received");
        // While ingest is behind, pushes are stored undecided (see "Ingest
        // first"): no decision to make here either.
        if let Some(receipt) = self
            .receipt
            .as_ref()
            .filter(|_| !self.progress.ingest_first.behind())
        {
            row.decided = receipt.decide(&row.app_key, &row.dedup_key, m);
        }
        // Counted while it waits for the database; uncounted on every way
        // out, a dropped future included (the platform hung up, or the
        // webhook's deadline passed): a push counted forever made an idle
        // daemon report its ingest stuck.
        let waiting = Waiting::new(&self.progress.ingest_waiting);
        let row = Arc::new(row);
        let started = Instant::now();
        // A user's push follows their earlier ones into the spool while
        // any is there (the database came back, the drain has not stored
        // them yet): stored directly, it would be decided before them. If
        // the spool refuses it (full), the database as usual.
        let deadline = tokio::time::Instant::now() + self.spool_after;
        let holding = self.spool.as_ref().and_then(|spool| {
            spool
                .holds(&row.app_key, &row.mcid, &row.user_id)
                .map(|holding| (spool, holding))
        });
        let spooled = match holding {
            Some((spool, holding)) => {
                // Its turn (`spool_turn`): at once after an outage, or as
                // late as a push the database failed while an earlier push
                // of the user may still be on its way to the spool. Held
                // meanwhile, so that the user's next push cannot reach the
                // database before this one reaches the spool (the drain may
                // empty it meanwhile).
                let turn = spool_turn(holding, deadline, self.spool_after);
                let reserved = (turn > tokio::time::Instant::now())
                    .then(|| spool.reserve(&row.app_key, &row.mcid, &row.user_id));
                if reserved.is_some() {
                    tokio::time::sleep_until(turn).await;
                }
                let outcome = self
                    .via_spool(&row, "an earlier push of the user is in the spool")
                    .await;
                if outcome.is_ok() {
                    metrics::counter!("pubbot_ingest_spilled_total").increment(1);
                }
                outcome.ok().map(Ok)
            }
            None => None,
        };
        let outcome = match spooled {
            Some(outcome) => outcome,
            None => self.via_database_in_time(&row, deadline).await,
        };
        drop(waiting);
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

/// What a flush needs: the pool, and where pushes decided at receipt go.
struct Sink {
    pool: PgPool,
    progress: Arc<Progress>,
    at_receipt: Option<DecideAtReceipt>,
}

async fn batcher(
    sink: Arc<Sink>,
    settings: IngestSettings,
    mut rx: mpsc::Receiver<Pending>,
    token: CancellationToken,
) {
    let flushes = Arc::new(Semaphore::new(settings.concurrent_flushes));
    let mut committing = Committing::default();
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
        // At most `wait` after the first push arrived (under load it has
        // waited for the previous commit already, and the batch goes at
        // once), and no longer than a quarter of it without a new push:
        // when pushes stop coming (every sender waits for this batch, as in
        // a closed loop), waiting longer only delays them.
        let deadline = tokio::time::Instant::from_std(first.at + wait);
        let gap = wait / 4;
        let mut batch = vec![first];
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if wait.is_zero() => break,
                Err(_) => {
                    let until = deadline.min(tokio::time::Instant::now() + gap);
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(p)) => batch.push(p),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let (before, done) = committing.begin(batch.iter().map(|p| &*p.row));
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let _done = done.drop_guard();
            for b in before {
                b.cancelled().await;
            }
            flush(&sink, batch).await;
            sink.progress.advance(Stage::Ingest);
            drop(permit);
        });
    }
    // Let the flushes in flight finish.
    let _ = flushes
        .acquire_many(u32::try_from(settings.concurrent_flushes).unwrap_or(u32::MAX))
        .await;
}

async fn flush(sink: &Sink, batch: Vec<Pending>) {
    let started = Instant::now();
    let n = batch.len();
    metrics::histogram!("pubbot_ingest_batch_size").record(n as f64);
    // Batch fill: each push's wait for a flush slot and for company.
    let queued = metrics::histogram!("pubbot_ingest_queue_seconds");
    for p in &batch {
        queued.record(started.duration_since(p.at).as_secs_f64());
    }
    let oldest = batch.iter().map(|p| p.at).min().unwrap_or(started);
    flush_part(sink, batch).await;
    metrics::histogram!("pubbot_ingest_commit_seconds").record(started.elapsed().as_secs_f64());
    sink.progress.ingest_first.batch(oldest.elapsed());
}

/// One push waiting for the database, counted in
/// [`crate::admin::health::Progress::ingest_waiting`] until dropped.
struct Waiting<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicI64) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests_support {
    use super::Row;

    pub(super) fn row(user: &str, key: &str) -> Row {
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
            decided: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::statement::decidable;
    use super::tests_support::row;
    use super::*;

    #[test]
    fn a_held_users_push_goes_to_the_spool_at_once_unless_an_earlier_one_may_still_be_on_its_way() {
        use crate::pipeline::spool::Holding;
        let after = Duration::from_millis(1500);
        let now = tokio::time::Instant::now();
        let deadline = now + after;
        let held_since = |ago: Duration| Holding {
            on_its_way: false,
            since: (now - ago).into_std(),
        };
        // Held long enough (the database came back after an outage): now.
        assert!(spool_turn(held_since(Duration::from_secs(60)), deadline, after) <= now);
        // A push of the user waits for its turn: after it, as late as a
        // push the database failed.
        let waiting = Holding {
            on_its_way: true,
            ..held_since(Duration::from_secs(60))
        };
        assert_eq!(spool_turn(waiting, deadline, after), deadline);
        // Held just now: an earlier push may still be in a commit.
        assert_eq!(
            spool_turn(held_since(Duration::ZERO), deadline, after),
            deadline
        );
        // Held for a while: once twice `spool_after` has passed since.
        let turn = spool_turn(
            held_since(after * 2 - Duration::from_millis(100)),
            deadline,
            after,
        );
        assert_eq!(turn, now + Duration::from_millis(100));
    }

    #[test]
    fn what_text_cannot_keep_is_named_before_the_batch() {
        assert!(storable(&row("alice", "k")).is_ok());
        let e = storable(&row("al\0ice", "k")).unwrap_err();
        assert!(e.to_string().contains("FromUserName"), "{e}");
        let e = storable(&row(&"x".repeat(MAX_ID_BYTES + 1), "k")).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn a_push_behind_an_undecided_one_of_its_user_in_the_batch_is_not_stored_decided() {
        let decided = |user: &str, key: &str| Row {
            decided: Some(AtReceipt::default()),
            ..row(user, key)
        };
        let rows = [
            decided("alice", "k1"),
            // A follow event: left to a decide worker ...
            row("bob", "k2"),
            // ... and so is every later push of bob's in the batch.
            decided("bob", "k3"),
            // The second of two equal pushes is a duplicate.
            decided("alice", "k1"),
            decided("carol", "k4"),
            decided("alice", "k5"),
        ];
        let rows: Vec<&Row> = rows.iter().collect();
        assert_eq!(decidable(&rows), [true, false, false, false, true, true]);
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
                at: Instant::now(),
            });
            waits.push(wait);
        }
        let sink = Sink {
            pool: pool.clone(),
            progress: Arc::default(),
            at_receipt: None,
        };
        flush(&sink, batch).await;
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

#[cfg(test)]
mod committing {
    use super::statement::Committing;
    use super::tests_support::row;

    #[test]
    fn a_batch_waits_only_for_the_commits_in_flight_that_hold_one_of_its_users() {
        let mut c = Committing::default();
        let (before, first) = c.begin([&row("ann", "1"), &row("bob", "2")]);
        assert!(before.is_empty());
        // Another user: no wait. Ann again: waits for the first batch.
        let (before, _second) = c.begin([&row("cat", "3")]);
        assert!(before.is_empty());
        let (before, third) = c.begin([&row("dan", "4"), &row("ann", "5")]);
        assert_eq!(before.len(), 1);
        assert!(!before[0].is_cancelled());
        // The first commit ends (its guard drops): whoever waits goes on,
        // and a later batch of ann's waits only for the third.
        drop(first.drop_guard());
        assert!(before[0].is_cancelled());
        let (before, _) = c.begin([&row("ann", "6")]);
        assert_eq!(before.len(), 1);
        drop(third.drop_guard());
        assert!(before[0].is_cancelled());
    }
}
