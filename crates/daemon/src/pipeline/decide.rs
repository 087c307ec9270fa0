//! Decide: pushes the rules can decide without the database are decided
//! at receipt ([`Receipt`], stored decided by [`crate::pipeline::ingest`]); workers
//! claim every other stored push, run the rule set, and — in the same
//! transaction that claims the push and marks it done — plan the replies as
//! outbound rows (a transactional outbox: a reply is never planned twice,
//! nor lost; [`crate::pipeline::outbox`] invariant 1).
//!
//! A planned reply is leased to this process's own senders in the same
//! transaction (the fast path: no NOTIFY, no second claim) when nothing
//! earlier of its user is still open — no undecided earlier push, no
//! unsettled earlier reply (outbox invariant 5) — or when the latest open
//! reply of its user is leased to this process too, which it then follows
//! in process ("Following a reply held here" in [`crate::pipeline::outbox`]);
//! otherwise it is planned `pending` and the claim takes it in its turn. Every reply one
//! transaction leases is handed over as one unit, so one sender sends a
//! user's replies in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pubbot_protocol::{McId, UserId};
use pubbot_rules::{Context, IncomingKind};
use pubbot_webhook::InboundMessage;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Hosted;
use crate::pipeline::decision::{incoming, note_decision, note_unhosted, push_random};
use crate::pipeline::ingest;
use crate::pipeline::outbox::{self, Claimed, Held, Leases};
use crate::pipeline::rules::RuleStore;
use crate::pipeline::wakeups::{work_loop, Wakeups};
use crate::progress::{Progress, Stage};

/// A user of an account of an app: whose conversation state a push reads.
type UserKey = (String, McId, UserId);

/// What a decide worker needs.
#[derive(Clone)]
pub(crate) struct DecideWorker {
    /// The pool.
    pub pool: PgPool,
    /// The rule set in force.
    pub rules: Arc<RuleStore>,
    /// Wake-ups.
    pub wake: Arc<Wakeups>,
    /// Rows per claim.
    pub batch: i64,
    /// This process's lease identity.
    pub worker_id: String,
    /// Lease of rows handed to this process's senders.
    pub lease: Duration,
    /// This process's senders, when the fast path is on: planned rows are
    /// leased to them in the deciding transaction itself and handed over
    /// after commit (no NOTIFY, no second claim). When the hand-off is full,
    /// rows are planned `pending` for any sender to claim.
    pub handoff: Option<tokio::sync::mpsc::Sender<Vec<Held>>>,
    /// The leases this process's senders hold, when the fast path is on.
    pub leases: Option<Arc<Leases>>,
    /// Poll interval.
    pub poll: Duration,
    /// Progress of the decide stage.
    pub progress: Arc<Progress>,
    /// The accounts each app hosts (R16).
    pub hosted: Arc<HashMap<String, Hosted>>,
    /// The configured apps: a claim names one at a time.
    pub apps: Arc<[String]>,
    /// This pipeline's database (`default`, or a `[databases.NAME]`).
    pub database: &'static str,
    /// Moves of apps between databases: a parked app is not claimed.
    pub moves: Arc<crate::pipeline::moves::Moves>,
    /// How long conversation state lives after its last change.
    pub state_ttl: Duration,
    /// A person's hold keeps the bot silent this long after their last
    /// message ([`crate::pipeline::takeover`]).
    pub takeover_idle: Duration,
    /// (app, account) pairs already logged as not hosted: logged once each.
    pub unhosted_seen: Arc<std::sync::Mutex<HashSet<(String, String)>>>,
}

impl DecideWorker {
    /// Runs until `token` is cancelled.
    pub(crate) async fn run(self, token: CancellationToken) {
        work_loop(
            &self.wake.inbound,
            self.poll,
            self.batch,
            &token,
            "decide",
            &self.progress.ingest_first,
            || self.once(),
        )
        .await;
    }

    /// Claims one batch and decides it, in one transaction: the rows are
    /// locked (`FOR UPDATE SKIP LOCKED`) for as long as deciding takes —
    /// pure CPU, no network — so other workers and replicas skip them, and
    /// a worker that dies releases them with its aborted transaction. One
    /// commit per batch covers the claim, the planned replies, the follower
    /// changes and the push's `done`. Returns how many pushes it took.
    ///
    /// # Errors
    /// Database errors; the transaction rolls back and the batch is taken
    /// again.
    pub(crate) async fn once(&self) -> Result<usize, sqlx::Error> {
        // Before the transaction, whose start is the leases' `now()`: never
        // later than the leases of the rows handed over.
        let since = std::time::Instant::now();
        let mut conn = crate::db::acquire(&self.pool, "decide").await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // An app arriving from another database waits undecided until its
        // move is done (`pipeline::moves`).
        let apps: std::borrow::Cow<'_, [String]> = if self.moves.any_parked(self.database) {
            self.apps
                .iter()
                .filter(|a| !self.moves.parked(self.database, a))
                .cloned()
                .collect::<Vec<_>>()
                .into()
        } else {
            (&*self.apps).into()
        };
        let claimed =
            ingest::pending::claim(&mut tx, self.batch, self.progress.days.since(), &apps).await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let rules = self.rules.current();
        let now = chrono::Utc::now();
        // Conversation state of the batch's users, locked in key order.
        let mut keys: Vec<UserKey> = claimed
            .iter()
            .map(|r| (r.app_key.clone(), r.mcid.clone(), r.user_id.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        let (ka, (km, ku)): (Vec<String>, (Vec<String>, Vec<String>)) = keys
            .into_iter()
            .map(|(a, m, u)| (a, (m.into_string(), u.into_string())))
            .unzip();
        let mut states: HashMap<UserKey, serde_json::Value> = if !rules.uses_state() {
            HashMap::new()
        } else {
            sqlx::query!(
                "SELECT s.app_key, s.mcid, s.user_id, s.state FROM conversation_state s
               JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(a, m, u)
                 ON s.app_key = k.a AND s.mcid = k.m AND s.user_id = k.u
              WHERE s.expires_at > now()
              ORDER BY s.app_key, s.mcid, s.user_id FOR UPDATE OF s",
                &ka,
                &km,
                &ku
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                (
                    (r.app_key, McId::new(r.mcid), UserId::new(r.user_id)),
                    r.state,
                )
            })
            .collect()
        };
        // Conversations a person holds: decided without a reply.
        let held =
            crate::pipeline::takeover::held(&mut tx, &ka, &km, &ku, self.takeover_idle).await?;
        let mut changed_states: Vec<UserKey> = Vec::new();
        let mut planned = outbox::Plan::default();
        let mut follows: Vec<(String, String, String, bool)> = Vec::new();
        let mut ids = Vec::with_capacity(claimed.len());
        // What each push did to its user's state (the conversation view).
        let mut state_changes: Vec<Option<String>> = Vec::with_capacity(claimed.len());
        for row in &claimed {
            // The message's span: the same name and trace id at ingest,
            // here, and at send (see `crate::telemetry`).
            let _message =
                tracing::debug_span!("message", trace_id = %row.trace_id, push = row.id).entered();
            ids.push(row.id);
            state_changes.push(None);
            let message: &InboundMessage = match &row.message {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(trace_id = %row.trace_id, error = %e, "stored push does not parse; marked done without reply");
                    continue;
                }
            };
            // R16: a push for an account this app does not host is kept
            // (it may be a configuration gap) but not answered.
            let hosts = self
                .hosted
                .get(&row.app_key)
                .is_some_and(|h| h.hosts(message.to.as_str()));
            if !hosts {
                note_unhosted(
                    &self.unhosted_seen,
                    &row.app_key,
                    message.to.as_str(),
                    &row.trace_id,
                );
                continue;
            }
            let incoming = incoming(
                &row.app_key,
                message,
                states.get(&(row.app_key.clone(), row.mcid.clone(), row.user_id.clone())),
            );
            let kind = incoming.kind;
            // Deterministic per push, so a re-decided push picks the same.
            let ctx = Context {
                now,
                random: push_random(&row.app_key, &row.dedup_key),
            };
            let key = (row.app_key.clone(), row.mcid.clone(), row.user_id.clone());
            let decision = if held.contains(&(
                row.app_key.clone(),
                row.mcid.as_str().to_owned(),
                row.user_id.as_str().to_owned(),
            )) {
                tracing::debug!(trace_id = %row.trace_id, "held by a person; the bot stays silent");
                metrics::counter!("pubbot_held_pushes_total").increment(1);
                pubbot_rules::Decision::default()
            } else {
                rules.decide(&incoming, &ctx)
            };
            let state_now = if decision.state_set.is_empty() && decision.state_clear.is_empty() {
                states.get(&key).cloned()
            } else {
                let next = pubbot_rules::next_state(states.get(&key), &decision);
                states.insert(key.clone(), next.clone());
                changed_states.push(key);
                if let Some(last) = state_changes.last_mut() {
                    *last = Some(
                        serde_json::json!({"set": decision.state_set, "clear": decision.state_clear})
                            .to_string(),
                    );
                }
                Some(next)
            };
            note_decision(&row.trace_id, &decision.matched, &decision.problems);
            let rule_name = decision
                .matched
                .first()
                .map(|m| m.rule.clone())
                .unwrap_or_default();
            for (i, reply) in decision.replies.iter().enumerate() {
                // A handler call carries the event it is sent.
                let reply = match reply {
                    pubbot_rules::PlannedReply::Handler {
                        handler,
                        rule,
                        captures,
                        named,
                        fallback,
                        ..
                    } => {
                        planned.handler.push(Some(handler.clone()));
                        pubbot_rules::PlannedReply::Handler {
                            handler: handler.clone(),
                            rule: rule.clone(),
                            captures: captures.clone(),
                            named: named.clone(),
                            fallback: fallback.clone(),
                            event: serde_json::json!({
                                "id": format!("push-{}", row.id),
                                "app_key": row.app_key,
                                "account": row.mcid,
                                "user": row.user_id,
                                "message": message,
                                "rule": rule,
                                "captures": captures,
                                "named": named,
                                "state": state_now.clone().unwrap_or_else(|| serde_json::json!({})),
                            }),
                        }
                    }
                    other => {
                        planned.handler.push(None);
                        other.clone()
                    }
                };
                let reply = &reply;
                planned.inbound_id.push(row.id);
                planned
                    .reply_index
                    .push(i32::try_from(i).unwrap_or(i32::MAX));
                planned.app_key.push(row.app_key.clone());
                planned.mcid.push(message.to.to_string());
                planned.user_id.push(message.from.to_string());
                planned.rule_name.push(rule_name.clone());
                planned
                    .payload
                    .push(serde_json::to_string(reply).unwrap_or_default());
                planned.trace_id.push(row.trace_id.clone());
            }
            tracing::debug!(trace_id = %row.trace_id, rule = %rule_name, replies = decision.replies.len(), "decided");
            match kind {
                IncomingKind::Subscribe => follows.push((
                    row.app_key.clone(),
                    message.to.to_string(),
                    message.from.to_string(),
                    true,
                )),
                IncomingKind::Unsubscribe => follows.push((
                    row.app_key.clone(),
                    message.to.to_string(),
                    message.from.to_string(),
                    false,
                )),
                _ => {}
            }
        }

        // One unit of the hand-off per transaction (outbox invariant 5).
        let permit = match &self.handoff {
            Some(tx) if !planned.inbound_id.is_empty() => tx.try_reserve().ok(),
            _ => None,
        };
        let direct = permit.is_some();
        let mut leased: Vec<(Claimed, Option<i64>)> = Vec::new();
        if !planned.inbound_id.is_empty() {
            // A row goes straight to this process's senders when no earlier
            // reply of its user is open, or the latest open one is leased
            // here too (it follows that one in process). Every earlier push
            // of the user is decided: the claim above takes a user's pushes
            // one at a time, in order.
            leased = outbox::plan(
                &mut tx,
                &planned,
                direct,
                &self.worker_id,
                self.lease,
                self.progress.days.since(),
            )
            .await?;
        }
        // The conversation state the batch changed, in the same transaction
        // (a step is applied once: a retried push is a duplicate at ingest).
        changed_states.sort();
        changed_states.dedup();
        for key in &changed_states {
            if let Some(state) = states.get(key) {
                crate::pipeline::handlers::save_state(
                    &mut tx,
                    &key.0,
                    &key.1,
                    &key.2,
                    state,
                    self.state_ttl,
                )
                .await?;
            }
        }
        crate::account::followers::record_events(&mut tx, &mut follows).await?;
        ingest::pending::mark_decided(&mut tx, &ids, &state_changes).await?;
        tx.commit().await?;
        self.progress.advance(Stage::Decide);
        // How long each push waited in the table for a decide worker.
        let waited = metrics::histogram!("pubbot_stored_to_decided_seconds");
        let decided_at = chrono::Utc::now();
        for row in &claimed {
            waited.record((decided_at - row.received_at).as_seconds_f64().max(0.0));
        }
        // Rows planned `pending` (no hand-off, or held back behind an earlier
        // open row of their user) wait for a claim.
        // Claimable now (no room in the hand-off) unless held back behind
        // an earlier open reply of their user; then they go when that one
        // is recorded.
        let pending = leased.iter().map(|(r, _)| r).filter(|r| r.attempts == 0);
        if !direct {
            self.wake.add_pending(pending.clone().count());
        }
        self.wake
            .behind(pending.map(|r| (r.app_key.clone(), r.mcid.clone(), r.user_id.clone())));
        if let Some(permit) = permit {
            // Only rows inserted now and leased (not planned before, not
            // held back behind an earlier open row) are handed over.
            crate::pipeline::outbox::hand_over(permit, self.leases.as_deref(), leased, since);
        }
        metrics::counter!("pubbot_decided_total").increment(ids.len() as u64);
        metrics::counter!("pubbot_replies_planned_total")
            .increment(planned.inbound_id.len() as u64);
        Ok(claimed.len())
    }
}
