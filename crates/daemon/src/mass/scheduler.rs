//! The scheduler every replica runs (invariants 2-5 of [`crate::mass`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use chrono_tz::Tz;
use pubbot_api_client::{McId, UserId};
use pubbot_rules::broadcast::BroadcastVars;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::{platform_day, Clock};
use crate::mass::*;
use crate::pipeline::send::AppClient;

/// The scheduler every replica runs: adds the daily schedules' occurrences
/// to the ledger, marks missed ones, recovers abandoned sends, and sends
/// what is due — broadcasts and campaign chunks.
pub(crate) struct Scheduler {
    /// Housekeeping pool.
    pub pool: PgPool,
    /// Clients and rate limits by app.
    pub apps: Arc<HashMap<String, AppClient>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Lease identity.
    pub worker_id: String,
    /// How late a broadcast may still go out.
    pub grace: Duration,
    /// How long a claim holds a row (longer than a call).
    pub lease: Duration,
    /// How often it looks.
    pub tick: Duration,
    /// Pauses between tries of a campaign chunk ([`crate::retry`]).
    pub backoff: crate::retry::Backoff,
    /// Tries of a campaign chunk.
    pub max_attempts: i32,
}

struct Claimed {
    id: i64,
    app_key: String,
    mcid: String,
    platform_day: NaiveDate,
    content: Json<BroadcastContent>,
    timezone: Option<String>,
}

struct ClaimedChunk {
    campaign_id: i64,
    seq: i32,
    users: Vec<String>,
    attempts: i32,
    app_key: String,
    mcid: String,
    content: Json<BroadcastContent>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Scheduler {
    /// Runs until `token` is cancelled.
    pub(crate) async fn run(self, token: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "broadcast scheduler round failed; trying again");
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// One round: materialize, mark missed, recover, send what is due.
    ///
    /// # Errors
    /// Database errors.
    pub(crate) async fn round(&self) -> Result<(), sqlx::Error> {
        self.materialize().await?;
        self.mark_missed().await?;
        self.recover().await?;
        while let Some(b) = self.claim().await? {
            self.send(b).await;
        }
        while let Some(c) = self.claim_chunk().await? {
            self.send_chunk(c).await;
        }
        Ok(())
    }

    /// Adds each enabled daily schedule's occurrences from now to a day
    /// ahead (and back to the grace) to the ledger; a day another broadcast
    /// took is skipped (invariant 1). Occurrences before the schedule
    /// existed are not added.
    async fn materialize(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let rows = sqlx::query!(
            r#"SELECT id, app_key, mcid, name, time_of_day, timezone, content, created_at
                 FROM broadcast_schedules WHERE enabled AND cancelled_at IS NULL"#
        )
        .fetch_all(&self.pool)
        .await?;
        for s in rows {
            let Ok(tz) = s.timezone.parse::<Tz>() else {
                continue;
            };
            let today = now.with_timezone(&tz).date_naive();
            for offset in -1..=1i64 {
                let date = today + chrono::Duration::days(offset);
                let Some(at) = local_instant(tz, date, s.time_of_day) else {
                    continue;
                };
                if at < s.created_at || at < now - grace || at > now + chrono::Duration::days(1) {
                    continue;
                }
                let day = platform_day(at);
                let added = sqlx::query!(
                    r#"INSERT INTO broadcasts (schedule_id, app_key, mcid, platform_day, due_at, content)
                       SELECT $1, $2, $3, $4, $5, $6
                        WHERE NOT EXISTS (SELECT 1 FROM broadcasts
                                           WHERE schedule_id = $1 AND due_at = $5)
                       ON CONFLICT (app_key, mcid, platform_day) WHERE state IN ('scheduled', 'sending', 'sent', 'unknown')
                       DO NOTHING"#,
                    s.id,
                    s.app_key,
                    s.mcid,
                    day,
                    at,
                    s.content
                )
                .execute(&self.pool)
                .await?
                .rows_affected();
                if added > 0 {
                    tracing::info!(schedule = %s.name, app_key = %s.app_key, mcid = %s.mcid, %day, due_at = %at, "daily broadcast scheduled");
                }
            }
        }
        Ok(())
    }

    async fn mark_missed(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let cutoff =
            now - chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let missed = sqlx::query!(
            r#"UPDATE broadcasts SET state = 'missed', finished_at = $2,
                      error = 'its time passed while no replica was up (broadcast.grace_secs)'
                WHERE state = 'scheduled' AND due_at < $1
            RETURNING id, app_key, mcid"#,
            cutoff,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for m in missed {
            tracing::warn!(broadcast = m.id, app_key = %m.app_key, mcid = %m.mcid, "broadcast missed");
            metrics::counter!("pubbot_broadcasts_total", "app_key" => m.app_key, "mcid" => m.mcid, "state" => "missed").increment(1);
        }
        Ok(())
    }

    /// Invariant 3 (and 5 for chunks).
    async fn recover(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let unknown = sqlx::query!(
            r#"UPDATE broadcasts SET
                      state = CASE WHEN called_at IS NULL THEN 'scheduled' ELSE 'unknown' END,
                      error = CASE WHEN called_at IS NULL THEN error
                                   ELSE 'interrupted during the sendall call by ' || coalesce(lease_owner, '?')
                                        || '; it may have been sent: resolve it (pubbot broadcast resolve)' END,
                      -- An unknown row keeps its owner: a process that did
                      -- send it may still record `sent` when it can.
                      lease_owner = CASE WHEN called_at IS NULL THEN NULL ELSE lease_owner END,
                      lease_until = NULL
                WHERE state = 'sending' AND lease_until < $1
            RETURNING id, app_key, mcid, state"#,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for u in unknown {
            if u.state == "unknown" {
                tracing::error!(broadcast = u.id, app_key = %u.app_key, mcid = %u.mcid, "broadcast interrupted mid-call: unknown whether it was sent; not sent again (pubbot broadcast resolve)");
                metrics::counter!("pubbot_broadcasts_total", "app_key" => u.app_key, "mcid" => u.mcid, "state" => "unknown").increment(1);
            }
        }
        let chunks = sqlx::query!(
            r#"UPDATE campaign_chunks SET
                      state = CASE WHEN called_at IS NULL THEN 'pending' ELSE 'unknown' END,
                      attempts = CASE WHEN called_at IS NULL THEN attempts - 1 ELSE attempts END,
                      error = CASE WHEN called_at IS NULL THEN error
                                   ELSE 'interrupted during the batchsend call; it may have been sent, not sent again' END,
                      lease_owner = NULL, lease_until = NULL
                WHERE state = 'sending' AND lease_until < $1
            RETURNING campaign_id, seq, state"#,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for c in chunks {
            if c.state == "unknown" {
                tracing::error!(
                    campaign = c.campaign_id,
                    chunk = c.seq,
                    "campaign chunk interrupted mid-call: not sent again"
                );
                metrics::counter!("pubbot_campaign_chunks_total", "result" => "unknown")
                    .increment(1);
            }
        }
        // A campaign whose last chunk ended here (recovered as unknown) is
        // done too.
        sqlx::query!(
            "UPDATE campaigns m SET state = 'done', finished_at = $1
              WHERE state = 'running'
                AND NOT EXISTS (SELECT 1 FROM campaign_chunks k
                                 WHERE k.campaign_id = m.id AND k.state IN ('pending', 'sending'))",
            now
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let now = self.clock.now();
        let earliest =
            now - chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let lease_until =
            now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(1));
        sqlx::query_as!(
            Claimed,
            r#"UPDATE broadcasts b SET state = 'sending', lease_owner = $3, lease_until = $4
                 FROM (SELECT id FROM broadcasts
                        WHERE state = 'scheduled' AND due_at <= $1 AND due_at >= $2
                        ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) c
                WHERE b.id = c.id
            RETURNING b.id, b.app_key, b.mcid, b.platform_day, b.content AS "content: Json<BroadcastContent>",
                      (SELECT timezone FROM broadcast_schedules s WHERE s.id = b.schedule_id) AS "timezone?""#,
            now,
            earliest,
            self.worker_id,
            lease_until
        )
        .fetch_optional(&self.pool)
        .await
    }

    async fn vars(&self, app_key: &str, mcid: &str, tz: Tz) -> Result<BroadcastVars, sqlx::Error> {
        let followers = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM followers WHERE app_key = $1 AND mcid = $2"#,
            app_key,
            mcid
        )
        .fetch_one(&self.pool)
        .await?;
        let now = self.clock.now();
        let local = now.with_timezone(&tz);
        Ok(BroadcastVars {
            date: local.format("%Y-%m-%d").to_string(),
            weekday: local.format("%a").to_string().to_lowercase(),
            time: local.format("%H:%M").to_string(),
            followers,
            account: mcid.to_owned(),
            app_key: app_key.to_owned(),
            platform_day: platform_day(now).to_string(),
        })
    }

    async fn finish(
        &self,
        id: i64,
        state: &str,
        msg_id: Option<String>,
        error: Option<String>,
        rendered: Option<serde_json::Value>,
    ) {
        let (msg_id, error, rendered) = (&msg_id, &error, &rendered);
        crate::db::until_recorded("broadcast", || {
            sqlx::query!(
                "UPDATE broadcasts SET state = $2, msg_id = $3, error = $4, rendered = coalesce($5, rendered),
                        finished_at = $6, lease_owner = NULL, lease_until = NULL
                  WHERE id = $1 AND lease_owner = $7 AND state IN ('sending', 'unknown')",
                id,
                state,
                msg_id.as_deref(),
                error.as_deref(),
                rendered.as_ref(),
                self.clock.now(),
                self.worker_id
            )
            .execute(&self.pool)
        })
        .await;
    }

    /// Puts a broadcast the platform refused without sending back on the
    /// schedule at `at` (the call is known not to have happened, so it is
    /// not `unknown`).
    async fn again(&self, id: i64, at: chrono::DateTime<chrono::Utc>, error: &str) {
        crate::db::until_recorded("broadcast", || {
            sqlx::query!(
                "UPDATE broadcasts SET state = 'scheduled', due_at = $2, called_at = NULL, error = $3,
                        lease_owner = NULL, lease_until = NULL
                  WHERE id = $1 AND lease_owner = $4 AND state = 'sending'",
                id,
                at,
                error,
                self.worker_id
            )
            .execute(&self.pool)
        })
        .await;
    }

    async fn send(&self, b: Claimed) {
        let tz = b
            .timezone
            .as_deref()
            .and_then(|t| t.parse::<Tz>().ok())
            .unwrap_or(chrono_tz::Asia::Shanghai);
        let message = match self.vars(&b.app_key, &b.mcid, tz).await {
            Ok(vars) => b.content.0.render(&vars).map_err(|e| e.to_string()),
            Err(e) => {
                // Not called yet: the lease expires and it is claimed again.
                tracing::warn!(broadcast = b.id, error = %e, "reading the followers count failed");
                return;
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                self.finish(b.id, "failed", None, Some(e), None).await;
                metrics::counter!("pubbot_broadcasts_total", "app_key" => b.app_key, "mcid" => b.mcid, "state" => "failed").increment(1);
                return;
            }
        };
        let rendered = serde_json::to_value(&message).ok();
        let Some(app) = self.apps.get(&b.app_key) else {
            self.finish(
                b.id,
                "failed",
                None,
                Some(format!("app {:?} is not configured", b.app_key)),
                rendered,
            )
            .await;
            return;
        };
        app.limiter.until_ready().await;
        // Invariant 3: from here on, a crash leaves `unknown`.
        let marked = sqlx::query!(
            "UPDATE broadcasts SET called_at = $2, rendered = $3 WHERE id = $1 AND lease_owner = $4 AND state = 'sending'",
            b.id,
            self.clock.now(),
            rendered,
            self.worker_id
        )
        .execute(&self.pool)
        .await;
        if !matches!(marked, Ok(r) if r.rows_affected() == 1) {
            tracing::warn!(
                broadcast = b.id,
                "could not mark the broadcast as called; not calling (claimed again later)"
            );
            return;
        }
        let result = app
            .client
            .broadcast(&McId::from(b.mcid.as_str()), &message)
            .await;
        // A refusal that cannot have sent anything (1008 rate limit, HTTP
        // 429, no connection made): the day's one send is tried again a
        // little later, inside the same platform day (R10, R11).
        if let Err(e) = &result {
            let refused = e.is_rate_limited() || matches!(e, pubbot_api_client::Error::Connect(_));
            let again = self.clock.now()
                + chrono::Duration::from_std(self.backoff.after(2))
                    .unwrap_or(chrono::Duration::seconds(5));
            if refused && crate::clock::platform_day(again) == b.platform_day {
                tracing::warn!(broadcast = b.id, app_key = %b.app_key, mcid = %b.mcid, error = %e, at = %again, "broadcast refused before anything was sent; trying again");
                self.again(b.id, again, &e.to_string()).await;
                return;
            }
        }
        let (state, msg_id, error) = match result {
            Ok(id) => ("sent", Some(id.to_string()), None),
            Err(e) if e.is_retryable() && e.is_ambiguous() => (
                "unknown",
                None,
                Some(format!(
                    "{e}; it may have been sent: resolve it (pubbot broadcast resolve)"
                )),
            ),
            // R10/R11: 1007 (the day taken at the platform), 1002, 1003,
            // 1004, and retryable answers that may follow a send (1000,
            // 5xx): the day's one send is not retried blindly; the operator
            // may schedule it again. (Refusals that sent nothing are tried
            // again above.)
            Err(e) => ("failed", None, Some(e.to_string())),
        };
        match state {
            "sent" => {
                tracing::info!(broadcast = b.id, app_key = %b.app_key, mcid = %b.mcid, day = %b.platform_day, msg_id = ?msg_id, "broadcast sent")
            }
            _ => {
                tracing::warn!(broadcast = b.id, app_key = %b.app_key, mcid = %b.mcid, day = %b.platform_day, state, error = ?error, "broadcast not sent")
            }
        }
        metrics::counter!("pubbot_broadcasts_total", "app_key" => b.app_key.clone(), "mcid" => b.mcid.clone(), "state" => state).increment(1);
        self.finish(b.id, state, msg_id, error, None).await;
    }

    async fn claim_chunk(&self) -> Result<Option<ClaimedChunk>, sqlx::Error> {
        let now = self.clock.now();
        let lease_until =
            now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(1));
        sqlx::query_as!(
            ClaimedChunk,
            r#"WITH c AS (
                 UPDATE campaign_chunks k SET state = 'sending', lease_owner = $2, lease_until = $3,
                        attempts = attempts + 1, called_at = NULL
                   FROM (SELECT campaign_id, seq FROM campaign_chunks
                          WHERE state = 'pending' AND next_attempt_at <= $1
                          ORDER BY next_attempt_at, campaign_id, seq LIMIT 1 FOR UPDATE SKIP LOCKED) s
                  WHERE k.campaign_id = s.campaign_id AND k.seq = s.seq
                 RETURNING k.campaign_id, k.seq, k.users, k.attempts)
               SELECT c.campaign_id AS "campaign_id!", c.seq AS "seq!", c.users AS "users!", c.attempts AS "attempts!",
                      m.app_key, m.mcid, m.content AS "content: Json<BroadcastContent>"
                 FROM c JOIN campaigns m ON m.id = c.campaign_id"#,
            now,
            self.worker_id,
            lease_until
        )
        .fetch_optional(&self.pool)
        .await
    }

    async fn send_chunk(&self, c: ClaimedChunk) {
        let tz = chrono_tz::Asia::Shanghai;
        let message = match self.vars(&c.app_key, &c.mcid, tz).await {
            Ok(vars) => c.content.0.render(&vars).map_err(|e| e.to_string()),
            Err(e) => {
                tracing::warn!(campaign = c.campaign_id, error = %e, "reading the followers count failed");
                return;
            }
        };
        let outcome: (&str, Option<String>, Duration) = match (message, self.apps.get(&c.app_key)) {
            (Err(e), _) => ("failed", Some(e), Duration::ZERO),
            (_, None) => (
                "failed",
                Some(format!("app {:?} is not configured", c.app_key)),
                Duration::ZERO,
            ),
            (Ok(message), Some(app)) => {
                app.limiter.until_ready().await;
                let marked = sqlx::query!(
                    "UPDATE campaign_chunks SET called_at = $3 WHERE campaign_id = $1 AND seq = $2 AND lease_owner = $4 AND state = 'sending'",
                    c.campaign_id,
                    c.seq,
                    self.clock.now(),
                    self.worker_id
                )
                .execute(&self.pool)
                .await;
                if !matches!(marked, Ok(r) if r.rows_affected() == 1) {
                    return;
                }
                let users: Vec<UserId> = c.users.iter().map(|u| UserId::from(u.as_str())).collect();
                let result = match app
                    .client
                    .send_to_many(&McId::from(c.mcid.as_str()), &users, &message)
                    .await
                {
                    Ok(chunks) => chunks
                        .into_iter()
                        .map(|o| o.result)
                        .find(Result::is_err)
                        .unwrap_or(Ok(())),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => ("sent", None, Duration::ZERO),
                    Err(e) if e.is_retryable() && e.is_ambiguous() => (
                        "unknown",
                        Some(format!("{e}; it may have been sent, not sent again")),
                        Duration::ZERO,
                    ),
                    Err(e) if e.is_retryable() && c.attempts < self.max_attempts => {
                        let pause = self.backoff.after(u32::try_from(c.attempts).unwrap_or(1));
                        ("pending", Some(e.to_string()), pause)
                    }
                    Err(e) => ("failed", Some(e.to_string()), Duration::ZERO),
                }
            }
        };
        let (state, error, delay) = outcome;
        metrics::counter!("pubbot_campaign_chunks_total", "result" => state).increment(1);
        if state != "pending" {
            metrics::counter!("pubbot_campaign_users_total", "result" => state)
                .increment(c.users.len() as u64);
        }
        crate::db::until_recorded("campaign chunk", || async {
            let now = self.clock.now();
            {
                let mut tx = self.pool.begin().await?;
                sqlx::query!(
                    "UPDATE campaign_chunks SET state = $3, error = $4, lease_owner = NULL, lease_until = NULL,
                            sent_at = CASE WHEN $3 = 'sent' THEN $5::timestamptz END,
                            next_attempt_at = $5::timestamptz + make_interval(secs => $6),
                            called_at = CASE WHEN $3 = 'pending' THEN NULL ELSE called_at END
                      WHERE campaign_id = $1 AND seq = $2 AND lease_owner = $7 AND state = 'sending'",
                    c.campaign_id,
                    c.seq,
                    state,
                    error,
                    now,
                    secs(delay),
                    self.worker_id
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query!(
                    "UPDATE campaigns SET state = 'done', finished_at = $2
                      WHERE id = $1 AND state = 'running'
                        AND NOT EXISTS (SELECT 1 FROM campaign_chunks WHERE campaign_id = $1 AND state IN ('pending', 'sending'))",
                    c.campaign_id,
                    now
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
        })
        .await;
        tracing::info!(campaign = c.campaign_id, chunk = c.seq, users = c.users.len(), state, error = ?error, "campaign chunk");
    }
}
