//! Handler bots: rules whose answer comes from a URL the bot author runs.
//!
//! A rule with `handler = "NAME"` plans a *handler call* in the outbox in
//! the place of its reply (outbox invariants hold for it: leased, in the
//! user's order). A sender calls the handler — never inside a database
//! transaction — with a JSON event signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of id.timestamp.body>`), and records the answer in one
//! transaction: the replies it asks for (validated like every reply, R9)
//! take the call's place in the conversation (sub index 1, 2, ...), its
//! state changes are applied, and the call is marked `sent`.
//!
//! Failures (a timeout, a 5xx, a refused connection, JSON that does not
//! parse) are retried with backoff under the same event id (the author
//! deduplicates by it), up to `handlers.max_attempts`; then the rule's
//! `fallback` replies are sent instead (or nothing) and the call is marked
//! `failed` with the reason. An answer that parses but breaks a rule (an
//! unknown reply type, text over 2000 bytes) is not retried: fallback at
//! once, and nothing malformed reaches the platform. A breaker per handler
//! opens after `handlers.breaker_failures` failures in a row: while open
//! (`handlers.breaker_open_secs`) calls are not made and the fallback is
//! sent; then one call is let through, and a success closes it.
//!
//! A user's next push is decided only once their open handler call is
//! answered (its state changes may matter), so handlers block their own
//! user only — never others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use pubbot_protocol::{McId, UserId};
use pubbot_rules::PlannedReply;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::pipeline::outbox::{self, Held, Leases};
use crate::pipeline::wakeups::Wakeups;

mod answer;

pub use answer::*;

/// A handler as configured (`pubbot handler add`).
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Name.
    pub name: String,
    /// Where it is called.
    pub url: String,
    /// Signing secret (`whsec_<base64>` or plain text); `Debug` shows it
    /// redacted, and nothing prints it.
    pub secret: SecretString,
    /// One call's timeout.
    pub timeout: Duration,
    /// Calls in flight at once.
    pub concurrency: usize,
}

/// Signs a call the Standard Webhooks way: `v1,` + base64 of
/// HMAC-SHA256(`id.timestamp.body`); a `whsec_` secret's key is the base64
/// after the prefix, any other secret is used as bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| b64.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Why a handler call brought no answer (retried while tries remain and
/// the breaker is closed). The texts name the cause itself: they end up in
/// the reply row's `last_error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The handler registry could not be read.
    #[error("reading handlers: {0}")]
    Registry(sqlx::Error),
    /// No handler has that name.
    #[error("no handler named {0:?} (pubbot handler add)")]
    Unknown(String),
    /// The answer is not JSON.
    #[error("answer is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The answer's body could not be read.
    #[error("reading the answer: {0}")]
    Read(reqwest::Error),
    /// The handler answered with an error status.
    #[error("HTTP {0}")]
    Status(u16),
    /// No answer within the handler's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The call did not reach the handler (the text carries every cause:
    /// "connection refused" is in reqwest's source, not its message).
    #[error("call failed: {}", chain(.0))]
    Transport(reqwest::Error),
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Knobs of handler calls.
#[derive(Debug, Clone)]
pub(crate) struct HandlerPolicy {
    /// Tries of one call.
    pub max_attempts: u32,
    /// Pauses between tries ([`crate::retry`]).
    pub backoff: crate::retry::Backoff,
    /// Failures in a row that open a handler's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open.
    pub breaker_open: Duration,
    /// How long conversation state lives after its last change.
    pub state_ttl: Duration,
}

/// What a handler call row's `last_error` starts with when its handler
/// failed and the rule's fallback went out in its place.
pub const FALLBACK_SENT: &str = "handler failed, fallback sent";

/// How a call ended.
#[derive(Debug)]
pub(crate) enum CallResult {
    /// The handler answered (validated).
    Answered {
        /// Its replies.
        replies: Vec<PlannedReply>,
        /// Its state changes.
        state: Option<StateChange>,
    },
    /// No good answer: the fallback goes out, with the reason.
    Failed(String),
}

/// When the handlers were read, and each with its concurrency limit.
type Registry = (
    Option<Instant>,
    HashMap<String, (HandlerConfig, Arc<Semaphore>)>,
);

/// Calls handlers and records their answers.
pub(crate) struct HandlerRunner {
    /// Records answers (the settle pool).
    pub pool: PgPool,
    /// Lease identity.
    pub worker_id: String,
    /// Knobs.
    pub policy: HandlerPolicy,
    /// Rows held by this process.
    pub leases: Arc<Leases>,
    /// Wakes senders and deciders when an answer is recorded.
    pub wake: Arc<Wakeups>,
    http: reqwest::Client,
    registry: Mutex<Registry>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl HandlerRunner {
    /// A runner.
    pub(crate) fn new(
        pool: PgPool,
        worker_id: String,
        policy: HandlerPolicy,
        leases: Arc<Leases>,
        wake: Arc<Wakeups>,
    ) -> Self {
        Self {
            pool,
            worker_id,
            policy,
            leases,
            wake,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            registry: Mutex::new((None, HashMap::new())),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    async fn handler(&self, name: &str) -> Result<(HandlerConfig, Arc<Semaphore>), CallError> {
        let fresh = {
            let r = self
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.0.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) && r.1.contains_key(name)
        };
        if !fresh {
            let rows = list(&self.pool).await.map_err(CallError::Registry)?;
            let mut r = self
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next = HashMap::new();
            for h in rows {
                let sem =
                    r.1.get(&h.name)
                        .filter(|(old, _)| old.concurrency == h.concurrency)
                        .map_or_else(
                            || Arc::new(Semaphore::new(h.concurrency.max(1))),
                            |(_, s)| Arc::clone(s),
                        );
                next.insert(h.name.clone(), (h, sem));
            }
            *r = (Some(Instant::now()), next);
        }
        let r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.1.get(name)
            .cloned()
            .ok_or_else(|| CallError::Unknown(name.to_owned()))
    }

    fn breaker_open(&self, name: &str) -> bool {
        let mut b = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = b.entry(name.to_owned()).or_default();
        match e.open_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                // Half open: one call goes through; its result decides.
                e.open_until = None;
                e.failures = self.policy.breaker_failures.saturating_sub(1);
                false
            }
            None => false,
        }
    }

    fn record(&self, name: &str, ok: bool) {
        let mut b = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = b.entry(name.to_owned()).or_default();
        if ok {
            if e.failures >= self.policy.breaker_failures {
                tracing::info!(handler = name, "handler answering again: breaker closed");
            }
            *e = Breaker::default();
        } else {
            e.failures += 1;
            if e.failures >= self.policy.breaker_failures && e.open_until.is_none() {
                e.open_until = Some(Instant::now() + self.policy.breaker_open);
                tracing::error!(
                    handler = name,
                    failures = e.failures,
                    "handler keeps failing: breaker open, answering with the fallback"
                );
                metrics::counter!("pubbot_handler_breaker_opened_total", "handler" => name.to_owned()).increment(1);
            }
        }
        metrics::gauge!("pubbot_handler_breaker_open", "handler" => name.to_owned())
            .set(if e.open_until.is_some() { 1.0 } else { 0.0 });
    }

    async fn media_of(&self, app_key: &str) -> HashMap<String, String> {
        sqlx::query!(
            "SELECT name, media_id FROM media WHERE app_key = $1",
            app_key
        )
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.into_iter().map(|r| (r.name, r.media_id)).collect())
        .unwrap_or_default()
    }

    /// Calls `name` with `event` (retries, breaker), and validates the
    /// answer. `event_id` is the same for every try; `trace_id` is the
    /// push's, on every log line of the call.
    pub(crate) async fn call(
        &self,
        name: &str,
        event_id: &str,
        event: &serde_json::Value,
        app_key: &str,
        trace_id: &str,
    ) -> CallResult {
        let (h, sem) = match self.handler(name).await {
            Ok(h) => h,
            Err(e) => return CallResult::Failed(e.to_string()),
        };
        if self.breaker_open(name) {
            metrics::counter!("pubbot_handler_calls_total", "handler" => name.to_owned(), "result" => "breaker_open").increment(1);
            return CallResult::Failed(format!(
                "handler {name:?}: breaker open after repeated failures"
            ));
        }
        let Ok(_permit) = sem.acquire_owned().await else {
            return CallResult::Failed("handler closed".into());
        };
        let body = serde_json::to_vec(event).unwrap_or_default();
        let mut pauses = self.policy.backoff.pauses();
        let mut last: Option<CallError> = None;
        for attempt in 1..=self.policy.max_attempts.max(1) {
            let started = Instant::now();
            let ts = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(&h.url)
                .timeout(h.timeout)
                .header("content-type", "application/json")
                .header("webhook-id", event_id)
                .header("webhook-timestamp", ts.to_string())
                .header(
                    "webhook-signature",
                    sign(h.secret.expose_secret(), event_id, ts, &body),
                )
                .body(body.clone())
                .send()
                .await;
            // JSON that does not parse is retried; JSON of the wrong shape
            // (an unknown reply type) is an invalid answer, not retried.
            let outcome: Result<Result<Answer, InvalidAnswer>, CallError> = match sent {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                        .map_err(CallError::NotJson)
                        .map(|v| serde_json::from_value::<Answer>(v).map_err(InvalidAnswer::Shape)),
                    Err(e) => Err(CallError::Read(e)),
                },
                Ok(resp) => Err(CallError::Status(resp.status().as_u16())),
                Err(e) if e.is_timeout() => Err(CallError::Timeout(h.timeout)),
                Err(e) => Err(CallError::Transport(e)),
            };
            metrics::histogram!("pubbot_handler_seconds", "handler" => name.to_owned())
                .record(started.elapsed().as_secs_f64());
            match outcome {
                Ok(answer) => {
                    self.record(name, true);
                    let media = self.media_of(app_key).await;
                    return match answer
                        .and_then(|a| validate_answer(&a, &media).map(|replies| (replies, a.state)))
                    {
                        Ok((replies, state)) => {
                            metrics::counter!("pubbot_handler_calls_total", "handler" => name.to_owned(), "result" => "ok").increment(1);
                            CallResult::Answered { replies, state }
                        }
                        Err(e) => {
                            metrics::counter!("pubbot_handler_calls_total", "handler" => name.to_owned(), "result" => "invalid").increment(1);
                            tracing::warn!(trace_id, handler = name, event_id, error = %e, "handler answer refused; the fallback goes out");
                            CallResult::Failed(format!("invalid answer: {e}"))
                        }
                    };
                }
                Err(e) => {
                    metrics::counter!("pubbot_handler_calls_total", "handler" => name.to_owned(), "result" => "error").increment(1);
                    tracing::warn!(trace_id, handler = name, event_id, attempt, error = %e, "handler call failed");
                    self.record(name, false);
                    last = Some(e);
                    if attempt < self.policy.max_attempts && !self.breaker_open(name) {
                        tokio::time::sleep(pauses.next().unwrap_or(self.policy.backoff.longest))
                            .await;
                    } else {
                        break;
                    }
                }
            }
        }
        let last = last.map(|e| e.to_string()).unwrap_or_default();
        CallResult::Failed(format!("handler {name:?} failed: {last}"))
    }

    /// Calls the handler of a held handler row and records the outcome, in
    /// the message's span.
    #[tracing::instrument(name = "message", level = "debug", skip_all, fields(trace_id = %held.row.trace_id, reply = held.row.id))]
    pub(crate) async fn run(&self, held: Held) {
        let row = &held.row;
        let PlannedReply::Handler {
            handler,
            fallback,
            event,
            ..
        } = &row.payload.0
        else {
            return;
        };
        let event_id = event
            .get("id")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("out-{}", row.id), str::to_owned);
        let result = self
            .call(handler, &event_id, event, &row.app_key, &row.trace_id)
            .await;
        let (replies, state, status, error) = match result {
            CallResult::Answered { replies, state } => {
                tracing::info!(target: "pubbot::reply", trace_id = %row.trace_id, handler = %handler, event_id, user = %row.user_id, replies = replies.len(), "handler answered");
                (replies, state, "sent", None)
            }
            // The user gets the rule's fallback: the call is settled as
            // done, its row saying why (README, "Handler bots"), and kept
            // out of the failed replies.
            CallResult::Failed(e) if !fallback.is_empty() => {
                metrics::counter!("pubbot_handler_fallbacks_total", "handler" => handler.clone())
                    .increment(1);
                tracing::warn!(trace_id = %row.trace_id, handler = %handler, event_id, user = %row.user_id, error = %e, fallback = fallback.len(), "handler failed; its fallback goes out");
                (
                    fallback.clone(),
                    None,
                    "sent",
                    Some(format!("{FALLBACK_SENT}: {e}")),
                )
            }
            // No fallback: the user gets nothing, and the row is a failed
            // reply (`outbound failed`, `outbound retry` calls again with
            // the same event id).
            CallResult::Failed(e) => {
                tracing::warn!(trace_id = %row.trace_id, handler = %handler, event_id, user = %row.user_id, error = %e, "handler failed and its rule has no fallback; the user got nothing");
                (
                    Vec::new(),
                    None,
                    "failed",
                    Some(format!("handler failed: {e}")),
                )
            }
        };
        crate::db::until_recorded("handler answer", || {
            self.settle(&held, &replies, state.as_ref(), status, error.as_deref())
        })
        .await;
        self.leases.release([row.id]);
        self.wake.add_pending(replies.len().max(1));
        self.wake.inbound.notify_one();
    }

    async fn settle(
        &self,
        held: &Held,
        replies: &[PlannedReply],
        state: Option<&StateChange>,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let row = &held.row;
        let mut tx = self.pool.begin().await?;
        if !outbox::settle_call(&mut tx, &self.worker_id, row, replies, status, error).await? {
            // Recovered and taken by another process meanwhile: its call
            // decides.
            tx.rollback().await?;
            return Ok(());
        }
        if let Some(change) = state {
            let current = sqlx::query_scalar!(
                "SELECT state FROM conversation_state WHERE app_key = $1 AND mcid = $2 AND user_id = $3 AND expires_at > now() FOR UPDATE",
                row.app_key,
                row.mcid.as_str(),
                row.user_id.as_str()
            )
            .fetch_optional(&mut *tx)
            .await?;
            let next = pubbot_rules::apply_state(current.as_ref(), &change.clear, &change.set);
            save_state(
                &mut tx,
                &row.app_key,
                &row.mcid,
                &row.user_id,
                &next,
                self.policy.state_ttl,
            )
            .await?;
        }
        tx.commit().await
    }
}

/// Writes a user's conversation state (with a fresh TTL).
///
/// # Errors
/// Database errors.
pub(crate) async fn save_state(
    tx: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &McId,
    user_id: &UserId,
    state: &serde_json::Value,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO conversation_state (app_key, mcid, user_id, state, updated_at, expires_at)
         VALUES ($1, $2, $3, $4, now(), now() + make_interval(secs => $5))
         ON CONFLICT (app_key, mcid, user_id) DO UPDATE
            SET state = EXCLUDED.state, updated_at = now(), expires_at = EXCLUDED.expires_at",
        app_key,
        mcid.as_str(),
        user_id.as_str(),
        state,
        ttl.as_secs_f64()
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Adds or replaces a handler.
///
/// # Errors
/// Database errors.
pub async fn add(pool: &PgPool, h: &HandlerConfig) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO handlers (name, url, secret, timeout_ms, concurrency) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
             timeout_ms = EXCLUDED.timeout_ms, concurrency = EXCLUDED.concurrency, updated_at = now()",
        h.name,
        h.url,
        h.secret.expose_secret(),
        i32::try_from(h.timeout.as_millis()).unwrap_or(i32::MAX),
        i32::try_from(h.concurrency).unwrap_or(i32::MAX)
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Every handler.
///
/// # Errors
/// Database errors.
pub async fn list(pool: &PgPool) -> Result<Vec<HandlerConfig>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT name, url, secret, timeout_ms, concurrency FROM handlers ORDER BY name"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| HandlerConfig {
        name: r.name,
        url: r.url,
        secret: SecretString::from(r.secret),
        timeout: Duration::from_millis(u64::try_from(r.timeout_ms).unwrap_or(3000)),
        concurrency: usize::try_from(r.concurrency).unwrap_or(1),
    })
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The Standard Webhooks specification's example: secret
        // whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek,
        // timestamp 1614265330, body {"test": 2432232314}.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn answers_are_validated_like_replies() {
        let ok: Answer = serde_json::from_str(
            r#"{"replies": [{"type": "text", "text": "hi"}, {"type": "image", "media": "logo"}], "state": {"set": {"step": "2"}}}"#,
        )
        .unwrap();
        let media = HashMap::from([("logo".to_owned(), "m1".to_owned())]);
        assert_eq!(validate_answer(&ok, &media).unwrap().len(), 2);
        let long: Answer = serde_json::from_value(serde_json::json!({
            "replies": [{"type": "text", "text": "x".repeat(2001)}]
        }))
        .unwrap();
        assert!(validate_answer(&long, &media)
            .unwrap_err()
            .to_string()
            .contains("2001 bytes"));
        assert!(
            serde_json::from_str::<Answer>(r#"{"replies": [{"type": "video", "url": "x"}]}"#)
                .is_err()
        );
    }
}
