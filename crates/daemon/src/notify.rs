//! LISTEN/NOTIFY wake-ups. One connection listens on the three channels and
//! wakes the tasks waiting on them. Notifications are lost while the
//! connection is down (a database restart), so every waiter also polls.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the listener wakes.
#[derive(Default)]
pub struct Wakeups {
    /// New inbound messages.
    pub inbound: Notify,
    /// New outbound messages.
    pub outbound: Notify,
    /// Rules changed.
    pub rules: Notify,
    /// About how many replies wait in the table to be claimed (planned
    /// `pending`, deferred, retried, recovered, notified by another
    /// process), less those this process claimed. A recorded outcome wakes
    /// a sender only while it is above zero: otherwise every batch of
    /// outcomes cost an empty claim (measured: 460 µs of planning each, a
    /// seventh of a core at 1,000 msgs/s). It may drift; the senders' poll
    /// covers what it misses.
    pub pending: std::sync::atomic::AtomicI64,
}

impl Wakeups {
    /// Replies that wait to be claimed were added.
    pub fn add_pending(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_add(
                i64::try_from(n).unwrap_or(i64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.outbound.notify_one();
        }
    }

    /// `n` replies were claimed.
    pub fn claimed(&self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let _ = self.pending.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |p| Some((p - n).max(0)),
        );
    }

    /// Wakes a sender if replies may wait to be claimed.
    pub fn outbound_if_pending(&self) {
        if self.pending.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.outbound.notify_one();
        }
    }

    fn all(&self) {
        self.inbound.notify_waiters();
        self.outbound.notify_waiters();
        self.rules.notify_waiters();
    }
}

/// Listens until `token` is cancelled; reconnects after errors and wakes
/// everyone after a reconnect, since notifications may have been missed.
pub async fn listen(pool: PgPool, wake: Arc<Wakeups>, token: CancellationToken) {
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
            .listen_all(["pubbot_inbound", "pubbot_outbound", "pubbot_rules"])
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
pub async fn work_loop<F, Fut>(
    notify: &Notify,
    poll: Duration,
    batch: i64,
    token: &CancellationToken,
    worker: &'static str,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, sqlx::Error>>,
{
    while !token.is_cancelled() {
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
