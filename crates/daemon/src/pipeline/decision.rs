//! A push before the rules in force: the engine's view of it ([`incoming`]),
//! its random draw (the same wherever it is decided), the log lines of a
//! decision, and deciding at receipt ([`Receipt`]) for pushes the rules
//! can decide without the database. Shared by ingest (at receipt), the
//! decide workers and the operator's retry.

use crate::config::Hosted;
use crate::pipeline::rules::RuleStore;
use pubbot_rules::{Context, Incoming, IncomingKind, Matched, PlannedReply, Problem};
use pubbot_webhook::{Event, InboundMessage, MessageBody};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the rule engine needs of a push: its kind, its text (for a text)
/// and its event name (for an event the document does not list).
fn incoming_parts(m: &InboundMessage) -> (IncomingKind, &str, &str) {
    let text = match &m.body {
        MessageBody::Text { content } => content.as_str(),
        _ => "",
    };
    let event = match &m.body {
        MessageBody::Event {
            event: Event::Other(name),
        } => name.as_str(),
        _ => "",
    };
    (kind_of(m), text, event)
}

/// The rule engine's view of a push, with the conversation state it is
/// decided by.
pub(crate) fn incoming<'a>(
    app_key: &'a str,
    m: &'a InboundMessage,
    state: Option<&'a serde_json::Value>,
) -> Incoming<'a> {
    let (kind, text, event) = incoming_parts(m);
    Incoming {
        app_key,
        mcid: m.to.as_str(),
        user: m.from.as_str(),
        kind,
        text,
        event,
        state,
    }
}

fn kind_of(m: &InboundMessage) -> IncomingKind {
    match &m.body {
        MessageBody::Text { .. } => IncomingKind::Text,
        MessageBody::Image { .. } => IncomingKind::Image,
        MessageBody::Voice { .. } => IncomingKind::Voice,
        MessageBody::Location { .. } => IncomingKind::Location,
        MessageBody::ImgTxt { .. } => IncomingKind::Imgtxt,
        MessageBody::Event {
            event: Event::Subscribe,
        } => IncomingKind::Subscribe,
        MessageBody::Event {
            event: Event::Unsubscribe,
        } => IncomingKind::Unsubscribe,
        // R14: an event the document does not list is an event, not a
        // message: only a rule that names it answers.
        MessageBody::Event { .. } => IncomingKind::Event,
        MessageBody::Unknown { .. } => IncomingKind::Other,
    }
}

/// The number a push's random choices (`one_of` templates) are drawn
/// from: a hash of its R6 key, so that every decision of one push —
/// at receipt, by a decide worker, or re-decided by `outbound retry` —
/// picks the same (FNV-1a, fixed across builds and processes).
pub(crate) fn push_random(app_key: &str, dedup_key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app_key.bytes().chain([0xff]).chain(dedup_key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Counts a push for an account its app does not host (R16) and logs the
/// first one of each account.
pub(crate) fn note_unhosted(
    seen: &std::sync::Mutex<HashSet<(String, String)>>,
    app_key: &str,
    mcid: &str,
    trace_id: &str,
) {
    metrics::counter!("pubbot_inbound_unhosted_total", "app_key" => app_key.to_owned())
        .increment(1);
    let first = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((app_key.to_owned(), mcid.to_owned()));
    if first {
        tracing::warn!(trace_id, app_key, mcid, "push for an account this app does not host: stored, not answered (R16; add it to apps.accounts, or accounts = \"*\"); logged once per account");
    }
}

/// Counts and logs what deciding one push found (matched rules, render
/// problems), once the decision is committed.
pub(crate) fn note_decision(trace_id: &str, matched: &[Matched], problems: &[Problem]) {
    for m in matched {
        metrics::counter!("pubbot_rule_matches_total", "rule" => m.rule.clone()).increment(1);
    }
    for p in problems {
        tracing::warn!(trace_id, rule = %p.rule, problem = %p.message, "reply problem");
    }
}

/// A push decided when it was received, before it was stored (see
/// "Decided at receipt" in [`crate::pipeline::ingest`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct AtReceipt {
    /// The account does not host it (R16): stored done, no reply.
    pub unhosted: bool,
    /// The first matched rule's name.
    pub rule: String,
    /// The replies, serialized, in sending order.
    pub replies: Vec<String>,
    /// Every matched rule (for `pubbot_rule_matches_total`).
    pub matched: Vec<Matched>,
    /// Render problems.
    pub problems: Vec<Problem>,
}

/// What deciding at receipt needs.
#[derive(Clone)]
pub(crate) struct Receipt {
    /// The rule set in force.
    pub rules: Arc<RuleStore>,
    /// The accounts each app hosts (R16).
    pub hosted: Arc<HashMap<String, Hosted>>,
    /// (app, account) pairs already logged as not hosted.
    pub unhosted_seen: Arc<std::sync::Mutex<HashSet<(String, String)>>>,
    /// This pipeline's database, and the moves between databases: an app
    /// arriving here is not decided until its move is done.
    pub database: &'static str,
    /// See `database`.
    pub moves: Arc<crate::pipeline::moves::Moves>,
}

impl Receipt {
    /// Decides `message` now if the rules in force need nothing from the
    /// database for it: they read no conversation state and call no
    /// handler (`RuleSet::uses_state` covers both), and it is not a follow
    /// event (those change `followers` in the deciding transaction).
    /// `None`: a decide worker decides it.
    pub(crate) fn decide(
        &self,
        app_key: &str,
        dedup_key: &str,
        message: &InboundMessage,
    ) -> Option<AtReceipt> {
        let rules = self.rules.current();
        if rules.uses_state() || self.moves.parked(self.database, app_key) {
            return None;
        }
        let incoming = incoming(app_key, message, None);
        if matches!(
            incoming.kind,
            IncomingKind::Subscribe | IncomingKind::Unsubscribe
        ) {
            return None;
        }
        if !self
            .hosted
            .get(app_key)
            .is_some_and(|h| h.hosts(message.to.as_str()))
        {
            return Some(AtReceipt {
                unhosted: true,
                ..AtReceipt::default()
            });
        }
        let ctx = Context {
            now: chrono::Utc::now(),
            random: push_random(app_key, dedup_key),
        };
        let decision = rules.decide(&incoming, &ctx);
        if !decision.state_set.is_empty()
            || !decision.state_clear.is_empty()
            || decision
                .replies
                .iter()
                .any(|r| matches!(r, PlannedReply::Handler { .. }))
        {
            return None;
        }
        Some(AtReceipt {
            unhosted: false,
            rule: decision
                .matched
                .first()
                .map(|m| m.rule.clone())
                .unwrap_or_default(),
            replies: decision
                .replies
                .iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default())
                .collect(),
            matched: decision.matched,
            problems: decision.problems,
        })
    }
}
