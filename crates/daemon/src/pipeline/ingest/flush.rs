//! One group commit: the batch's statement, and what each push is told
//! (stored, a duplicate, refused alone, or unavailable); a batch that fails
//! for one row's data is split until that push is alone.

use std::collections::HashSet;
use std::time::Instant;

use pubbot_webhook::{Accepted, InboxError};

use super::statement::{insert, row_level};
use super::{DecideAtReceipt, Pending, Row, Sink};
use crate::progress::Stage;

/// Commits `batch`; on a row-level failure, each half on its own, until
/// the push at fault is alone and refused.
pub(super) fn flush_part(
    sink: &Sink,
    mut batch: Vec<Pending>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let rows: Vec<&Row> = batch.iter().map(|p| &*p.row).collect();
        // Replies go straight to this process's senders when the hand-off
        // has room for one more unit (reserved before the statement, taken
        // before it began: never later than the leases it sets).
        let since = Instant::now();
        // Ingest first: while behind, the batch is stored undecided, the
        // one insert a push needs (see "Ingest first" above).
        let behind = sink.progress.ingest_first.behind();
        let plans = !behind
            && rows
                .iter()
                .any(|r| r.decided.as_ref().is_some_and(|d| !d.replies.is_empty()));
        let permit = match &sink.at_receipt {
            Some(DecideAtReceipt {
                handoff: Some(tx), ..
            }) if plans => tx.try_reserve().ok(),
            _ => None,
        };
        let direct = permit.is_some();
        let at = sink
            .at_receipt
            .as_ref()
            .filter(|_| !behind)
            .map(|a| (a, direct));
        let deferred = if behind && sink.at_receipt.is_some() {
            rows.len()
        } else {
            0
        };
        let inserted = insert(&sink.pool, &rows, at, sink.progress.days.since()).await;
        drop(rows);
        match inserted {
            Ok(stored) => {
                let mut new: HashSet<(String, String)> = stored.new.iter().cloned().collect();
                // Counted once per push stored decided (not again for an
                // equal push later in the batch).
                let mut decided: HashSet<&(String, String)> = stored.decided.iter().collect();
                let mut planned = 0usize;
                for p in &batch {
                    let key = (p.row.app_key.clone(), p.row.dedup_key.clone());
                    let Some(d) = p.row.decided.as_ref().filter(|_| decided.remove(&key)) else {
                        continue;
                    };
                    planned += d.replies.len();
                    if let (true, Some(at)) = (d.unhosted, &sink.at_receipt) {
                        crate::pipeline::decision::note_unhosted(
                            &at.receipt.unhosted_seen,
                            &p.row.app_key,
                            &p.row.mcid,
                            &p.row.trace_id,
                        );
                    }
                    crate::pipeline::decision::note_decision(
                        &p.row.trace_id,
                        &d.matched,
                        &d.problems,
                    );
                    tracing::debug!(trace_id = %p.row.trace_id, rule = %d.rule, replies = d.replies.len(), "decided at receipt");
                }
                let (mut stored_n, mut duplicates) = (0u64, 0u64);
                for p in batch {
                    let key = (p.row.app_key.clone(), p.row.dedup_key.clone());
                    // The first of several equal pushes in one batch is the new one.
                    let outcome = if new.remove(&key) {
                        stored_n += 1;
                        Accepted::New
                    } else {
                        duplicates += 1;
                        Accepted::Duplicate
                    };
                    let _ = p.done.send(Ok(outcome));
                }
                // Counted once a batch, not once a push (each count is a
                // registry lookup).
                if stored_n > 0 {
                    metrics::counter!("pubbot_inbound_messages_total", "outcome" => "stored")
                        .increment(stored_n);
                }
                if duplicates > 0 {
                    metrics::counter!("pubbot_inbound_messages_total", "outcome" => "duplicate")
                        .increment(duplicates);
                }
                if deferred > 0 {
                    metrics::counter!("pubbot_ingest_undecided_behind_total")
                        .increment(deferred as u64);
                }
                if let Some(at) = &sink.at_receipt {
                    if !stored.decided.is_empty() {
                        sink.progress.advance(Stage::Decide);
                        metrics::counter!("pubbot_decided_total")
                            .increment(stored.decided.len() as u64);
                        metrics::counter!("pubbot_decided_at_receipt_total")
                            .increment(stored.decided.len() as u64);
                        metrics::counter!("pubbot_replies_planned_total").increment(planned as u64);
                    }
                    if stored.undecided > 0 {
                        at.wake.inbound.notify_one();
                    }
                    // Replies planned `pending`: not handed over (no room),
                    // and so claimable now unless held back behind an
                    // earlier open reply of their user — then they go when
                    // that one is recorded.
                    if !direct {
                        at.wake.add_pending(stored.pending_replies.len());
                    }
                    at.wake.behind(stored.pending_replies);
                    if let Some(permit) = permit {
                        crate::pipeline::outbox::hand_over(
                            permit,
                            at.leases.as_deref(),
                            stored.leased,
                            since,
                        );
                    }
                }
            }
            Err(e) if row_level(&e) && batch.len() > 1 => {
                drop(permit);
                tracing::warn!(error = %e, pushes = batch.len(), "a push in the batch cannot be stored; committing the rest without it");
                let second = batch.split_off(batch.len() / 2);
                flush_part(sink, batch).await;
                flush_part(sink, second).await;
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
