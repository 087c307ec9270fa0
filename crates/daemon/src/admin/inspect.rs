//! What an operator looks at when a user says "the bot didn't answer": one
//! user's conversation (pushes and replies in time order, the rule that
//! decided each reply, its status and latency), the failed replies, and a
//! way to send a failed reply again — once — after fixing the rule.

use chrono::{DateTime, Utc};
use pubbot_rules::{Context, Options, PlannedReply, RuleSet};
use pubbot_webhook::{InboundMessage, MessageBody};
use serde::Serialize;
use sqlx::PgPool;

use crate::pipeline::rules::RulesError;

/// One reply in a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyLine {
    /// Row id (for `pubbot outbound retry`).
    pub id: i64,
    /// The rule that decided it.
    pub rule: String,
    /// `pending`, `sending`, `sent`, `failed`, `expired`.
    pub status: String,
    /// The platform's refusal or why it is not sent.
    pub error: Option<String>,
    /// What it says.
    pub payload: serde_json::Value,
    /// From the push's arrival to the reply's delivery, milliseconds.
    pub latency_ms: Option<i64>,
    /// When it was sent.
    pub sent_at: Option<DateTime<Utc>>,
}

/// One push and what was answered.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    /// Push id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// `text`, `image`, `event`...
    pub msg_type: String,
    /// What the user sent, in short.
    pub summary: String,
    /// Trace id of its log lines.
    pub trace_id: String,
    /// `pending` (not decided yet) or `done`.
    pub status: String,
    /// The replies, in the order they go out (a handler's answers after
    /// its call).
    pub replies: Vec<ReplyLine>,
    /// What deciding it did to the user's conversation state:
    /// `{"set": {...}, "clear": [...]}`, or none.
    pub state_change: Option<serde_json::Value>,
    /// Why no reply was planned, when none was: filled by [`why_no_reply`].
    pub why_no_reply: Option<String>,
    /// The push as stored (for [`why_no_reply`]).
    #[serde(skip)]
    message: Option<InboundMessage>,
    #[serde(skip)]
    dedup_key: String,
}

/// Why a push decided without a reply got none, as far as can be told
/// now: an account the app does not host (R16), no rule of the rules in
/// force (`rules`) matching it, or an event no rule names (R14).
pub fn why_no_reply(e: &Exchange, rules: &RuleSet, hosted: bool) -> String {
    if e.status == "pending" {
        return "not decided yet".into();
    }
    if !hosted {
        return format!(
            "account {} is not hosted by app {} (apps.accounts, R16): stored, not answered",
            e.mcid, e.app_key
        );
    }
    let Some(message) = &e.message else {
        return "its stored message does not parse any more".into();
    };
    let incoming = crate::pipeline::decision::incoming(&e.app_key, message, None);
    let ctx = Context {
        now: e.received_at,
        random: crate::pipeline::decision::push_random(&e.app_key, &e.dedup_key),
    };
    let decision = rules.decide(&incoming, &ctx);
    match (decision.matched.first(), &message.body) {
        (None, MessageBody::Event { event }) => format!(
            "no rule names the event {} (R14: an event is answered only by a rule that names it)",
            event.as_str()
        ),
        (None, _) => "no rule matches it (with the rules in force now)".into(),
        (Some(m), _) if decision.replies.is_empty() => format!(
            "rule {:?} matches it but plans no reply (a state-only step, or its replies render empty)",
            m.rule
        ),
        (Some(m), _) => format!(
            "rule {:?} would answer it now: the rules changed since, or its state did",
            m.rule
        ),
    }
}

/// A user's conversation state (per account), as the next push will see it.
#[derive(Debug, Clone, Serialize)]
pub struct UserState {
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// The keys and values.
    pub state: serde_json::Value,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Forgotten after (`state.ttl_secs` from the last change).
    pub expires_at: DateTime<Utc>,
}

/// The user's conversation state in force, per account (of one account,
/// or all).
///
/// # Errors
/// Database errors.
pub async fn states(
    pool: &PgPool,
    user: &str,
    mcid: Option<&str>,
) -> Result<Vec<UserState>, sqlx::Error> {
    sqlx::query_as!(
        UserState,
        "SELECT app_key, mcid, state, updated_at, expires_at FROM conversation_state
          WHERE user_id = $1 AND ($2::text IS NULL OR mcid = $2) AND expires_at > now()
          ORDER BY app_key, mcid",
        user,
        mcid
    )
    .fetch_all(pool)
    .await
}

fn summary(m: &serde_json::Value) -> String {
    match serde_json::from_value::<InboundMessage>(m.clone()) {
        Ok(msg) => match msg.body {
            MessageBody::Text { content } => content,
            MessageBody::Image { pic_url } => format!("[image] {pic_url}"),
            MessageBody::Voice { voice_url, .. } => format!("[voice] {voice_url}"),
            MessageBody::Location { label, .. } => format!("[location] {label}"),
            MessageBody::ImgTxt { title, .. } => format!("[imgtxt] {title}"),
            MessageBody::Event { event } => format!("[event] {}", event.as_str()),
            MessageBody::Unknown { msg_type, .. } => format!("[{msg_type}]"),
        },
        Err(_) => "?".into(),
    }
}

/// The user's last `limit` pushes (of one account, or all) with their
/// replies, oldest first.
///
/// # Errors
/// Database errors.
pub async fn conversation(
    pool: &PgPool,
    user: &str,
    mcid: Option<&str>,
    limit: i64,
) -> Result<Vec<Exchange>, sqlx::Error> {
    let pushes = sqlx::query!(
        "SELECT id, app_key, mcid, received_at, msg_type, message, trace_id, status, dedup_key, state_change FROM inbound_messages
          WHERE user_id = $1 AND ($2::text IS NULL OR mcid = $2)
          ORDER BY id DESC LIMIT $3",
        user,
        mcid,
        limit
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = pushes.iter().map(|p| p.id).collect();
    let replies = sqlx::query!(
        r#"SELECT o.id, o.inbound_id AS "inbound_id!", o.rule_name, o.status, o.last_error, o.payload, o.sent_at,
                  (extract(epoch FROM o.sent_at - i.received_at) * 1000)::int8 AS latency_ms
             FROM outbound_messages o JOIN inbound_messages i ON i.id = o.inbound_id AND i.day = o.day
            WHERE o.inbound_id = ANY($1) ORDER BY o.inbound_id, o.reply_index, o.sub_index"#,
        &ids
    )
    .fetch_all(pool)
    .await?;
    let mut out: Vec<Exchange> = pushes
        .into_iter()
        .rev()
        .map(|p| Exchange {
            id: p.id,
            app_key: p.app_key,
            mcid: p.mcid,
            received_at: p.received_at,
            msg_type: p.msg_type,
            summary: summary(&p.message),
            trace_id: p.trace_id,
            status: p.status,
            replies: Vec::new(),
            state_change: p.state_change,
            why_no_reply: None,
            message: serde_json::from_value(p.message).ok(),
            dedup_key: p.dedup_key,
        })
        .collect();
    for r in replies {
        if let Some(e) = out.iter_mut().find(|e| e.id == r.inbound_id) {
            e.replies.push(ReplyLine {
                id: r.id,
                rule: r.rule_name,
                status: r.status,
                error: r.last_error,
                payload: r.payload,
                latency_ms: r.latency_ms,
                sent_at: r.sent_at,
            });
        }
    }
    Ok(out)
}

/// A failed reply.
#[derive(Debug, Clone, Serialize)]
pub struct FailedReply {
    /// Row id.
    pub id: i64,
    /// When it was planned.
    pub created_at: DateTime<Utc>,
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// Recipient.
    pub user_id: String,
    /// The rule that decided it.
    pub rule_name: String,
    /// Why (the platform's code and message).
    pub last_error: Option<String>,
    /// What it says.
    pub payload: serde_json::Value,
}

/// Failed replies planned since `since`.
///
/// # Errors
/// Database errors.
pub async fn failed(pool: &PgPool, since: DateTime<Utc>) -> Result<Vec<FailedReply>, sqlx::Error> {
    sqlx::query_as!(
        FailedReply,
        "SELECT id, created_at, app_key, mcid, user_id, rule_name, last_error, payload
           FROM outbound_messages WHERE status = 'failed' AND created_at >= $1 ORDER BY id",
        since
    )
    .fetch_all(pool)
    .await
}

/// What a retry did with one reply.
#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    /// Row id.
    pub id: i64,
    /// What became of it.
    pub outcome: RetryOutcome,
}

/// What a retry did with one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Put back to `pending` with the reply the rules in force give: it
    /// goes out once.
    Retried,
    /// No reply has that id.
    NotFound,
    /// It is not failed (its status given): nothing to retry.
    NotFailed(String),
    /// Its push was deleted (retention): nothing to decide again.
    PushGone,
    /// The rules in force give no reply at its place any more.
    NoLongerAnswered,
    /// Another retry got there first.
    AlreadyRetried,
}

impl std::fmt::Display for RetryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retried => f.write_str("retried"),
            Self::NotFound => f.write_str("no such reply"),
            Self::NotFailed(status) => write!(f, "not failed ({status})"),
            Self::PushGone => f.write_str("its push is gone"),
            Self::NoLongerAnswered => f.write_str("the rules no longer answer it; not retried"),
            Self::AlreadyRetried => f.write_str("not failed any more"),
        }
    }
}

/// In `--json`, as the text the table shows.
impl Serialize for RetryOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Sends failed replies again, once each: the push is decided afresh by
/// the rules in force (so a fixed rule's reply goes out), the reply at the
/// same place replaces the failed one, and the row goes back to `pending`
/// — only if it is still `failed`, so a second retry of the same reply
/// does nothing. A handler call and a person's message go again as they
/// were.
///
/// # Errors
/// [`RulesError`]: the database, or stored rules that do not compile.
pub async fn retry(
    pool: &PgPool,
    options: &Options,
    ids: &[i64],
) -> Result<Vec<Retried>, RulesError> {
    let options = crate::pipeline::rules::with_media(pool, options).await?;
    let set = RuleSet::compile(crate::pipeline::rules::load(pool).await?, &options)?;
    let mut out = Vec::new();
    for &id in ids {
        let row = sqlx::query!(
            r#"SELECT o.status, o.reply_index, o.app_key, o.payload AS "payload: sqlx::types::Json<PlannedReply>",
                      i.message AS "message?", i.dedup_key AS "dedup_key?"
                 FROM outbound_messages o LEFT JOIN inbound_messages i ON i.id = o.inbound_id AND i.day = o.day
                WHERE o.id = $1 AND o.day = pubbot_day_of($1)"#,
            id
        )
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            out.push(Retried {
                id,
                outcome: RetryOutcome::NotFound,
            });
            continue;
        };
        if row.status != "failed" {
            out.push(Retried {
                id,
                outcome: RetryOutcome::NotFailed(row.status),
            });
            continue;
        }
        // A handler call is called again as it was: the same event, so the
        // handler sees the same event id ("the same on every retry"). A
        // person's message (the console's takeover) is not the rules' to
        // decide: it goes again as written.
        if matches!(row.payload.0, PlannedReply::Handler { .. })
            || row.reply_index >= crate::pipeline::outbox::STAFF_INDEX
        {
            let done = crate::pipeline::outbox::requeue_failed(pool, id, &row.payload.0).await?;
            out.push(Retried {
                id,
                outcome: if done {
                    RetryOutcome::Retried
                } else {
                    RetryOutcome::AlreadyRetried
                },
            });
            continue;
        }
        let Some(message) = row
            .message
            .and_then(|m| serde_json::from_value::<InboundMessage>(m).ok())
        else {
            out.push(Retried {
                id,
                outcome: RetryOutcome::PushGone,
            });
            continue;
        };
        let incoming = crate::pipeline::decision::incoming(&row.app_key, &message, None);
        let ctx = Context {
            now: Utc::now(),
            random: crate::pipeline::decision::push_random(
                &row.app_key,
                row.dedup_key.as_deref().unwrap_or(""),
            ),
        };
        let decision = set.decide(&incoming, &ctx);
        let Some(reply) = usize::try_from(row.reply_index)
            .ok()
            .and_then(|i| decision.replies.get(i))
        else {
            out.push(Retried {
                id,
                outcome: RetryOutcome::NoLongerAnswered,
            });
            continue;
        };
        let done = crate::pipeline::outbox::requeue_failed(pool, id, reply).await?;
        out.push(Retried {
            id,
            outcome: if done {
                RetryOutcome::Retried
            } else {
                RetryOutcome::AlreadyRetried
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A person's failed message goes again as written, once; the rules
    /// (none answer it) are not asked.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_failed_staff_message_is_retried_as_written(pool: PgPool) {
        sqlx::query(
            "INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status)
             VALUES (pubbot_id(current_date, 1), current_date, 'a', 'm', 'u', 'text', 'k1', '{}', '', 't', 'done')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status, last_error)
             VALUES (pubbot_id(current_date, 1), current_date, pubbot_id(current_date, 1), $1, 'a', 'm', 'u', 'staff:ann', '{\"type\":\"text\",\"content\":\"We are on it\"}', 't', 'failed', '1004: try later')
             RETURNING id",
        )
        .bind(crate::pipeline::outbox::STAFF_INDEX)
        .fetch_one(&pool)
        .await
        .unwrap();
        let options = Options::default();
        let r = retry(&pool, &options, &[id]).await.unwrap();
        assert_eq!(r[0].outcome.to_string(), "retried");
        let (status, text): (String, String) = sqlx::query_as(
            "SELECT status, payload->>'content' FROM outbound_messages WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (status.as_str(), text.as_str()),
            ("pending", "We are on it")
        );
        let again = retry(&pool, &options, &[id]).await.unwrap();
        assert_eq!(again[0].outcome.to_string(), "not failed (pending)");
    }
}
