//! LISTEN/NOTIFY wake-ups. One connection listens on the four channels and
//! wakes the tasks waiting on them. Notifications are lost while the
//! connection is down (a database restart), so every waiter also polls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pubbot_protocol::{McId, UserId};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the listener wakes.
#[derive(Default)]
pub(crate) struct Wakeups {
    /// New inbound messages.
    pub inbound: Notify,
    /// New outbound messages.
    pub outbound: Notify,
    /// Rules changed.
    pub rules: Notify,
    /// A settled day was reopened: read the open window again
    /// ([`crate::pipeline::days`]; one waiter, the maintenance task, so a
    /// permit is kept while it is busy).
    pub days: Arc<Notify>,
    /// About how many replies wait in the table to be claimed (planned
    /// `pending`, deferred, retried, recovered, notified by another
    /// process), less those this process claimed. A recorded outcome wakes
    /// a sender only while it is above zero: otherwise every batch of
    /// outcomes cost an empty claim (measured: 460 µs of planning each, a
    /// seventh of a core at 1,000 msgs/s). It may drift; the senders' poll
    /// covers what it misses.
    pub pending: std::sync::atomic::AtomicI64,
    /// Users with a reply planned `pending` only because an earlier reply
    /// of theirs was open (outbox invariant 5): when this process records
    /// an outcome for one of them, their next reply is claimed by user
    /// ([`crate::pipeline::outbox::claim_next`]) instead of by scanning the queue.
    behind: std::sync::Mutex<HashSet<Conversation>>,
    /// Users whose next reply may now be claimable (taken from `behind`
    /// when an outcome of theirs was recorded).
    successors: std::sync::Mutex<Vec<Conversation>>,
    /// Users with an outcome recorded in the last moments (two generations
    /// of [`RECENT`]): a reply planned behind a reply whose outcome was
    /// recorded while it was being planned is a successor at once.
    recent: std::sync::Mutex<Recent>,
}

/// Users recorded lately, in two generations.
#[derive(Default)]
struct Recent {
    since: Option<std::time::Instant>,
    now: HashSet<Conversation>,
    before: HashSet<Conversation>,
}

/// How long a generation of `Wakeups::recent` lasts.
const RECENT: Duration = Duration::from_millis(250);

/// (app, account, user): one conversation.
pub(crate) type Conversation = (String, McId, UserId);

/// Most users remembered in `behind`: past it the set is dropped, and the
/// senders' poll takes what it would have (a reply whose earlier one was
/// recorded by another replica is taken that way too).
const BEHIND_MAX: usize = 100_000;

impl Wakeups {
    /// Replies that wait to be claimed were added.
    pub(crate) fn add_pending(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_add(
                i64::try_from(n).unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.outbound.notify_one();
        }
    }

    /// How many replies are counted as waiting (read before a claim, for
    /// [`Wakeups::claimed`]).
    pub(crate) fn waiting(&self) -> i64 {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A claim of up to `asked` rows took `n`; `before` were counted as
    /// waiting when it began. One that took fewer found nothing more it
    /// could take then (rows held back behind an earlier open reply, or
    /// not due yet): those `before` are forgotten, so that recorded
    /// outcomes stop waking futile scans of the queue (held back rows come
    /// by [`Wakeups::behind`], the rest by the poll); rows counted while it
    /// ran stay counted.
    pub(crate) fn claimed(&self, n: usize, asked: usize, before: i64) {
        let n = if n < asked {
            before.max(i64::try_from(n).unwrap_or(i64::MAX))
        } else {
            i64::try_from(n).unwrap_or(i64::MAX)
        };
        let _ = self.pending.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |p| Some((p - n).max(0)),
        );
    }

    /// Whether a reply of this user waits behind an open one of theirs
    /// (the recorder records such an outcome without lingering).
    pub(crate) fn waits_on(&self, user: &Conversation) -> bool {
        self.behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(user)
    }

    /// Replies of these users were planned `pending`, perhaps behind an
    /// earlier open reply of theirs.
    pub(crate) fn behind(&self, users: impl IntoIterator<Item = Conversation>) {
        let users: Vec<Conversation> = users.into_iter().collect();
        if users.is_empty() {
            return;
        }
        // The earlier reply may have been recorded while these were being
        // planned: then they are next already.
        let ready: Vec<Conversation> = {
            let recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            users
                .iter()
                .filter(|u| recent.now.contains(*u) || recent.before.contains(*u))
                .cloned()
                .collect()
        };
        self.still_behind(users);
        self.successor(ready);
    }

    /// These users may still have replies held back (a claim by user found
    /// none of theirs next, or took one and more may follow): remembered
    /// until their next outcome is recorded.
    pub(crate) fn still_behind(&self, users: Vec<Conversation>) {
        let mut set = self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.extend(users);
        if set.len() > BEHIND_MAX {
            set.clear();
        }
    }

    fn successor(&self, users: Vec<Conversation>) {
        if !users.is_empty() {
            self.successors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(users);
            self.outbound.notify_one();
        }
    }

    /// Outcomes of these users' replies were recorded: those with a reply
    /// held back behind one become successors to claim, and a sender is
    /// woken for them.
    pub(crate) fn recorded<'a>(
        &self,
        users: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) {
        let users: Vec<Conversation> = users
            .into_iter()
            .map(|(a, m, u)| (a.to_owned(), McId::from(m), UserId::from(u)))
            .collect();
        if users.is_empty() {
            return;
        }
        let next: Vec<Conversation> = {
            let mut set = self
                .behind
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            users.iter().filter_map(|u| set.take(u)).collect()
        };
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            if recent.since.is_none_or(|t| now.duration_since(t) > RECENT) {
                recent.before = std::mem::take(&mut recent.now);
                recent.since = Some(now);
            }
            recent.now.extend(users);
        }
        self.successor(next);
    }

    /// The users whose next reply may be claimable, taken.
    pub(crate) fn take_successors(&self) -> Vec<Conversation> {
        std::mem::take(
            &mut *self
                .successors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Wakes a sender if replies may wait to be claimed.
    pub(crate) fn outbound_if_pending(&self) {
        if self.pending.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.outbound.notify_one();
        }
    }

    fn all(&self) {
        self.inbound.notify_waiters();
        self.outbound.notify_waiters();
        self.rules.notify_waiters();
        // Reopened days may have been missed while the connection was down.
        self.days.notify_one();
    }
}

/// Listens until `token` is cancelled; reconnects after errors and wakes
/// everyone after a reconnect, since notifications may have been missed.
pub(crate) async fn listen(pool: PgPool, wake: Arc<Wakeups>, token: CancellationToken) {
    while !token.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling meanwhile");
                pause(&token).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([
                "pubbot_inbound",
                "pubbot_outbound",
                "pubbot_rules",
                "pubbot_days",
            ])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; polling meanwhile");
            pause(&token).await;
            continue;
        }
        wake.all();
        loop {
            let next = tokio::select! {
                () = token.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => match n.channel() {
                    // One worker per notification (the longest waiting):
                    // waking them all made every other one claim nothing.
                    // A worker that takes a full batch goes again at once.
                    "pubbot_inbound" => wake.inbound.notify_one(),
                    "pubbot_outbound" => wake.add_pending(1),
                    "pubbot_days" => wake.days.notify_one(),
                    _ => wake.rules.notify_waiters(),
                },
                Ok(None) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    wake.all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                    break;
                }
            }
        }
        pause(&token).await;
    }
}

async fn pause(token: &CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// Runs `round` until `token` is cancelled: again at once after a round
/// that took a full batch (`batch` rows; more may be waiting), otherwise
/// after a wake-up, the poll interval, or cancellation. A round that took
/// less found the queue empty of rows it could lock, so going again at once
/// would only be an empty claim. The wake-up is registered before the round
/// starts, so a notification that arrives while the round runs is not lost.
pub(crate) async fn work_loop<F, Fut>(
    notify: &Notify,
    poll: Duration,
    batch: i64,
    token: &CancellationToken,
    worker: &'static str,
    ingest_first: &crate::progress::IngestFirst,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, sqlx::Error>>,
{
    while !token.is_cancelled() {
        // No new round while pushes wait to be stored.
        ingest_first.wait(worker, token).await;
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match round().await {
            Ok(n) if i64::try_from(n).unwrap_or(i64::MAX) >= batch.max(1) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, worker, "round failed; retrying");
                metrics::counter!("pubbot_worker_failures_total", "worker" => worker).increment(1);
            }
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(poll) => {}
            () = token.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> Conversation {
        ("app".into(), "shop".into(), u.into())
    }

    #[test]
    fn a_reply_held_back_is_a_successor_once_the_one_before_is_recorded() {
        let w = Wakeups::default();
        w.behind([user("ann")]);
        assert!(w.take_successors().is_empty());
        // Another user's outcome lets nobody go.
        w.recorded([("app", "shop", "bob")]);
        assert!(w.take_successors().is_empty());
        w.recorded([("app", "shop", "ann")]);
        assert_eq!(w.take_successors(), [user("ann")]);
        // Taken: a second outcome of ann's finds nothing held back.
        w.recorded([("app", "shop", "ann")]);
        assert!(w.take_successors().is_empty());
    }

    #[test]
    fn a_reply_planned_while_the_one_before_was_recorded_is_a_successor_at_once() {
        let w = Wakeups::default();
        w.recorded([("app", "shop", "cat")]);
        w.behind([user("cat")]);
        assert_eq!(w.take_successors(), [user("cat")]);
        // A sender keeping a user remembered does not loop back at once.
        w.still_behind(vec![user("cat")]);
        assert!(w.take_successors().is_empty());
    }

    #[test]
    fn a_claim_that_took_less_than_asked_forgets_what_was_counted_before_it() {
        let w = Wakeups::default();
        w.add_pending(5);
        let before = w.waiting();
        // Counted while the claim ran.
        w.add_pending(2);
        w.claimed(1, 64, before);
        assert_eq!(w.waiting(), 2);
        // A full claim counts off what it took.
        w.claimed(2, 2, w.waiting());
        assert_eq!(w.waiting(), 0);
    }
}
