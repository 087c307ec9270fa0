//! The load generator: pushes signed text messages to a routeUrl at a
//! fixed rate (or as fast as N concurrent pushers can), and — since the
//! simulator also receives the daemon's API calls — measures the latency
//! from each push to its reply.
//!
//! Every message is `bench <seq>`; the daemon under test must answer it
//! with a text containing `ack <seq>` (see `config/bench-rules.toml`).
//!
//! The report counts pushes, acknowledgements, replies, lost and duplicate
//! replies, latency percentiles and push tries by outcome; for pushes that
//! failed every try it also says when they were made (runs of seconds from
//! the first push, which a soak's fault times line up with) and how each of
//! their tries ended, so that pushes a daemon never acknowledged can be set
//! beside what happened to it then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::PushOptions;
use crate::push::{PushContent, PushState, UserMessage, NO_CONNECTION};
use crate::{Inner, SimConfig, Simulator};

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The account pushed to; created on the simulator with `route_url`.
    pub mcid: String,
    /// The daemon's webhook.
    pub route_url: String,
    /// Pushes per second (open loop). `None`: closed loop with `concurrency`.
    pub rate: Option<u32>,
    /// Pushers at once in the closed loop.
    pub concurrency: usize,
    /// How long to push.
    pub duration: Duration,
    /// Distinct users the messages come from.
    pub users: u32,
    /// Every push from a new user (`load-user-<n>`, `users` ignored), and
    /// replies matched to pushes by recipient: the daemon may answer with
    /// any text, e.g. one static reply to everybody (what `batchsend`
    /// merging needs). Otherwise replies are matched by `ack <n>`.
    pub unique_users: bool,
    /// How long to wait for the last replies after the last push.
    pub grace: Duration,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Pushes started.
    pub pushes: u64,
    /// Pushes the daemon acknowledged (2xx).
    pub acknowledged: u64,
    /// Pushes that failed every try.
    pub failed: u64,
    /// Acknowledged pushes answered at their first try (issue 26 asks
    /// for every one under overload: a second try means the platform
    /// waited its whole timeout once).
    pub first_try: u64,
    /// Acknowledged pushes per second of pushing.
    pub acknowledged_per_sec: f64,
    /// Distinct pushes answered.
    pub replied: u64,
    /// Acknowledged pushes never answered.
    pub lost: u64,
    /// Replies beyond the first for one push.
    pub duplicates: u64,
    /// Push-to-reply latency percentiles, milliseconds.
    pub latency_ms: Percentiles,
    /// The daemon's calls per message endpoint (`/message/...`).
    pub message_calls: std::collections::BTreeMap<String, u64>,
    /// Seconds from the last push until every push was settled and every
    /// acknowledged one answered (or the grace ran out): how long the
    /// backlog took to drain.
    pub drain_secs: f64,
    /// Replies that arrived after the last push: the backlog the drain
    /// worked off (with `drain_secs`, the drain's rate).
    pub drained: u64,
    /// Seconds from the moment every push was settled (its last try made)
    /// until every acknowledged one was answered, and the replies that
    /// arrived in them: the daemon's own drain, once the platform stopped
    /// retrying (after an overload its retries keep the shared cores busy
    /// long after the last push).
    pub settled_drain: Option<(f64, u64)>,
    /// Push tries by outcome (`answered`, `timeout`, `connect_error`,
    /// `http_error`): why pushes failed.
    pub tries: std::collections::BTreeMap<String, u64>,
    /// Of the tries that timed out, those that never got one of the
    /// platform's push connections (`--push-connections`, all held by
    /// earlier tries for the whole timeout): the platform's own queue,
    /// not a request the daemon held.
    pub no_connection: u64,
    /// Pushes that failed every try, by the second they were made (from
    /// the first push of the run): when the daemon could not be reached,
    /// to set beside what happened to it then.
    pub failed_by_second: std::collections::BTreeMap<u64, u64>,
    /// The tries of the pushes that failed every try, by outcome.
    pub failed_tries: std::collections::BTreeMap<String, u64>,
}

impl LoadReport {
    /// The seconds pushes failed in, as runs of seconds at most `gap`
    /// apart: `(first, last, pushes)`.
    #[must_use]
    pub fn failed_spans(&self, gap: u64) -> Vec<(u64, u64, u64)> {
        let mut spans: Vec<(u64, u64, u64)> = Vec::new();
        for (&sec, &n) in &self.failed_by_second {
            match spans.last_mut() {
                Some((_, last, total)) if sec <= *last + gap => {
                    *last = sec;
                    *total += n;
                }
                _ => spans.push((sec, sec, n)),
            }
        }
        spans
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pushes {} acknowledged {} failed {} ({:.0} acknowledged/s; {} at their first try)",
            self.pushes, self.acknowledged, self.failed, self.acknowledged_per_sec, self.first_try
        )?;
        writeln!(
            f,
            "replied {} lost {} duplicates {} (drained {:.1} s after the last push)",
            self.replied, self.lost, self.duplicates, self.drain_secs
        )?;
        if self.drained > 0 && self.drain_secs > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let rate = self.drained as f64 / self.drain_secs;
            writeln!(
                f,
                "drain: {} replies after the last push, {rate:.0}/s",
                self.drained
            )?;
        }
        if let Some((secs, n)) = self.settled_drain.filter(|(s, n)| *s > 0.0 && *n > 0) {
            #[allow(clippy::cast_precision_loss)]
            let rate = n as f64 / secs;
            writeln!(
                f,
                "drain after the platform's last try: {n} replies in {secs:.1} s, {rate:.0}/s"
            )?;
        }
        write!(
            f,
            "push-to-reply latency ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        )?;
        if self.tries.keys().any(|k| k != "answered") {
            write!(f, "\npush tries:")?;
            for (outcome, n) in &self.tries {
                write!(f, " {outcome} {n}")?;
                if outcome == "timeout" && self.no_connection > 0 {
                    write!(f, " ({} found no connection free)", self.no_connection)?;
                }
            }
        }
        if self.failed > 0 {
            write!(f, "\nfailed pushes by second pushed (from the first push):")?;
            for (first, last, n) in self.failed_spans(2) {
                if first == last {
                    write!(f, " {first}s {n}")?;
                } else {
                    write!(f, " {first}-{last}s {n}")?;
                }
            }
            write!(f, "\ntheir tries:")?;
            for (outcome, n) in &self.failed_tries {
                write!(f, " {outcome} {n}")?;
            }
        }
        if !self.message_calls.is_empty() {
            write!(f, "\napi calls:")?;
            for (path, n) in &self.message_calls {
                write!(f, " {path} {n}")?;
            }
        }
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Serves the simulator on `listener` (the daemon's API calls come here),
/// creates the account, runs the load and reports.
///
/// # Errors
/// When the simulator cannot start or the account cannot be created.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    load: LoadConfig,
) -> anyhow::Result<LoadReport> {
    let app = config
        .apps
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the load generator needs one app"))?;
    let sim = Simulator::new(config).map_err(anyhow::Error::msg)?;
    let token = CancellationToken::new();
    let stop = token.clone();
    let server = sim.clone();
    // The platform's API (the daemon's replies) is served on a thread of
    // its own: on the pushers' runtime its requests queued behind tens of
    // thousands of push tasks once the daemon fell behind, and the
    // daemon's calls timed out against a platform that would not be busy
    // at all (an artifact of one process playing both parts).
    let listener = listener.into_std()?;
    let serving = std::thread::Builder::new().name("sim-api".into()).spawn(
        move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                server
                    .serve(listener, async move { stop.cancelled().await })
                    .await
                    .map_err(anyhow::Error::from)
            })
        },
    )?;
    let inner = Arc::clone(&sim.inner);
    {
        let form = crate::world::Form(vec![
            ("mcid".into(), load.mcid.clone()),
            ("displayName".into(), "load".into()),
            ("portraitUrl".into(), "http://example.com/p.png".into()),
            ("uiType".into(), "0".into()),
            ("introduction".into(), "load generator".into()),
            ("RC-App-Key".into(), app.key.clone()),
            ("isFollow".into(), "false".into()),
            ("routeUrl".into(), load.route_url.clone()),
        ]);
        let mut w = inner.lock();
        if let Err(e) = w.add_account(&app.key, &form) {
            if !e.message().contains("already exists") {
                anyhow::bail!("creating the account: {e}");
            }
        }
    }

    let started = Instant::now();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::<(u64, usize)>::new()));
    let push_one = {
        let inner = Arc::clone(&inner);
        let (app_key, mcid, users) = (app.key.clone(), load.mcid.clone(), load.users.max(1));
        let unique = load.unique_users;
        let (seq, ids) = (Arc::clone(&seq), Arc::clone(&ids));
        move |wait: bool| {
            let inner = Arc::clone(&inner);
            let (app_key, mcid) = (app_key.clone(), mcid.clone());
            let (seq, ids) = (Arc::clone(&seq), Arc::clone(&ids));
            async move {
                let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let user = if unique {
                    format!("load-user-{n}")
                } else {
                    format!("load-user-{}", n % u64::from(users))
                };
                let content = PushContent::Message(
                    UserMessage::Text {
                        content: format!("bench {n}"),
                    },
                    inner.next_msg_id(),
                );
                let options = PushOptions {
                    wait,
                    ..PushOptions::default()
                };
                if let Ok(pushed) =
                    Inner::start_push(&inner, &app_key, &mcid, &user, content, &options).await
                {
                    ids.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((n, pushed[0]));
                }
            }
        }
    };
    match load.rate {
        Some(rate) => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while started.elapsed() < load.duration {
                tick.tick().await;
                push_one(false).await;
            }
        }
        None => {
            let mut pushers = Vec::new();
            for _ in 0..load.concurrency.max(1) {
                let push_one = push_one.clone();
                let until = started + load.duration;
                pushers.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        push_one(true).await;
                    }
                }));
            }
            for p in pushers {
                let _ = p.await;
            }
        }
    }
    let pushing = started.elapsed();
    let pushes = seq.load(std::sync::atomic::Ordering::Relaxed);
    let measure_now = || {
        measure(
            &inner,
            &app.key,
            &ids.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            pushes,
            pushing,
            load.unique_users,
        )
    };
    let replied_while_pushing = measure_now().replied;

    // Wait for the pushes to settle and the replies to arrive.
    let deadline = Instant::now() + load.grace;
    let mut settled_at: Option<(Instant, u64)> = None;
    let report = loop {
        let report = measure_now();
        let settled = report.acknowledged + report.failed == pushes;
        if settled && settled_at.is_none() {
            settled_at = Some((Instant::now(), report.replied));
        }
        // Done when every acknowledged push has its reply (a push whose
        // answer was lost may be replied too, so counts alone can match
        // early).
        if (settled && report.lost == 0) || Instant::now() >= deadline {
            break LoadReport {
                drain_secs: (started.elapsed() - pushing).as_secs_f64(),
                drained: report.replied.saturating_sub(replied_while_pushing),
                settled_drain: settled_at.map(|(at, replied)| {
                    (
                        at.elapsed().as_secs_f64(),
                        report.replied.saturating_sub(replied),
                    )
                }),
                ..report
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    token.cancel();
    let _ = tokio::task::spawn_blocking(move || serving.join()).await;
    Ok(report)
}

fn measure(
    inner: &Inner,
    app_key: &str,
    ids: &[(u64, usize)],
    pushes: u64,
    pushing: Duration,
    by_user: bool,
) -> LoadReport {
    let mut start_ms = vec![None; usize::try_from(pushes).unwrap_or(0)];
    let (mut acknowledged, mut failed, mut first_try, mut no_connection) = (0u64, 0u64, 0u64, 0u64);
    let mut tries = std::collections::BTreeMap::<String, u64>::new();
    let mut failed_at = Vec::new();
    let mut failed_tries = std::collections::BTreeMap::<String, u64>::new();
    let mut first_ms = i64::MAX;
    {
        let log = inner.lock_pushes();
        for &(n, id) in ids {
            let Some(r) = log.get(id) else { continue };
            for a in &r.attempts {
                if a.outcome == "timeout"
                    && a.status.is_none()
                    && a.detail.starts_with(NO_CONNECTION)
                {
                    no_connection += 1;
                }
                if let Some(t) = tries.get_mut(&a.outcome) {
                    *t += 1;
                } else {
                    tries.insert(a.outcome.clone(), 1);
                }
            }
            first_ms = first_ms.min(r.create_time);
            match r.state {
                PushState::Delivered => {
                    acknowledged += 1;
                    if r.attempts.len() == 1 {
                        first_try += 1;
                    }
                    if let Some(slot) = start_ms.get_mut(usize::try_from(n).unwrap_or(usize::MAX)) {
                        *slot = Some(r.create_time);
                    }
                }
                PushState::Failed | PushState::Skipped => {
                    failed += 1;
                    failed_at.push(r.create_time);
                    for a in &r.attempts {
                        *failed_tries.entry(a.outcome.clone()).or_default() += 1;
                    }
                }
                PushState::Pending => {}
            }
        }
    }
    let mut failed_by_second = std::collections::BTreeMap::<u64, u64>::new();
    for t in failed_at {
        let sec = u64::try_from((t - first_ms) / 1000).unwrap_or(0);
        *failed_by_second.entry(sec).or_default() += 1;
    }
    let mut seen = vec![0u32; start_ms.len()];
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    {
        let w = inner.lock();
        for d in w.deliveries(app_key) {
            let n = if by_user {
                d.user_id
                    .strip_prefix("load-user-")
                    .and_then(|n| n.parse::<usize>().ok())
            } else {
                d.payload
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|c| c.split("ack ").nth(1))
                    .and_then(|n| {
                        n.split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|d| d.parse::<usize>().ok())
                    })
            };
            let Some(n) = n else {
                continue;
            };
            let Some(count) = seen.get_mut(n) else {
                continue;
            };
            *count += 1;
            if *count > 1 {
                duplicates += 1;
            } else if let Some(Some(t0)) = start_ms.get(n) {
                latencies.push((d.at_ms - t0) as f64);
            }
        }
    }
    let message_calls = inner
        .lock()
        .call_counts()
        .iter()
        .filter(|(path, _)| path.starts_with("/message/"))
        .map(|(path, n)| (path.clone(), *n))
        .collect();
    let replied = seen.iter().filter(|c| **c > 0).count() as u64;
    latencies.sort_by(f64::total_cmp);
    let lost = start_ms
        .iter()
        .zip(&seen)
        .filter(|(t, c)| t.is_some() && **c == 0)
        .count() as u64;
    LoadReport {
        pushes,
        acknowledged,
        failed,
        first_try,
        acknowledged_per_sec: acknowledged as f64 / pushing.as_secs_f64().max(1e-9),
        replied,
        lost,
        duplicates,
        latency_ms: Percentiles {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(0.0),
        },
        message_calls,
        drain_secs: 0.0,
        drained: 0,
        settled_drain: None,
        tries,
        no_connection,
        failed_by_second,
        failed_tries,
    }
}
