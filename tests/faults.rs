//! The pipeline under faults (and in order): bursts past capacity on a
//! small pool, the database stopped under load, a daemon killed with pushes
//! in its spool, dropped platform connections, pushes PostgreSQL cannot
//! store, and replies to each user in the order the user wrote. Each test
//! names the outbox invariant (`crate::outbox` in the daemon) or READING
//! rule it guards.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pubbot_e2e::{
    db_addr, eventually, fresh_dir, metric, scrape, Proxy, World, ECHO, KEY, SECRET, SHOP,
};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{count, import};

/// Pushes `per_user` texts (`m0`, `m1`, ...) from each of `users` users,
/// each user's one after the other (each stored before the next is
/// pushed), all users at once. Returns the user names.
async fn conversations(w: &World, tag: &str, users: usize, per_user: usize) -> Vec<String> {
    let names: Vec<String> = (0..users).map(|i| format!("{tag}-{i}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for name in names.clone() {
        let http = w.http.clone();
        let url = format!("{}/_sim/message", w.sim.base_url());
        tasks.spawn(async move {
            for k in 0..per_user {
                let r = http
                    .post(&url)
                    .json(&json!({"mcid": SHOP, "user": name, "type": "text", "content": format!("m{k}"), "wait": true}))
                    .send()
                    .await
                    .expect("push");
                assert_eq!(r.status(), 200);
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("pusher");
    }
    names
}

fn echoes(per_user: usize) -> Vec<String> {
    (0..per_user).map(|k| format!("re: m{k}")).collect()
}

/// Whether every user's inbox holds exactly `want`.
async fn inboxes_are(w: &World, users: &[String], want: &[String]) -> bool {
    for u in users {
        if w.texts(u).await.len() < want.len() {
            return false;
        }
    }
    true
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn replies_reach_each_user_in_the_order_they_wrote_despite_1008(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Invariant 5: bursts of 5 messages from each of 200 users; the
    // platform answers 1008 above 150 calls/s while pubbot may make 500, so
    // many replies wait for a retry — and hold back only their own user.
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.workers.send = 4;
    settings.workers.decide = 2;
    settings.sender.merge_batchsend = false;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    w.put("faults", json!({"rate_limit_per_sec": 150})).await;
    let users = conversations(&w, "order", 200, 5).await;
    let want = echoes(5);
    for _ in 0..600 {
        if inboxes_are(&w, &users, &want).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for u in &users {
        assert_eq!(
            w.texts(u).await,
            want,
            "{u}'s replies in the order they wrote"
        );
    }
    let limited = w.calls("/message/send.json").await;
    assert!(
        limited.iter().any(|c| c["errcode"] == 1008),
        "the platform's rate limit was hit, so retries were in play"
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn replies_put_back_by_1008_go_once_the_platform_takes_calls_again(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // R10: 1008 is "retry with backoff, slow down". The backoff slows the
    // calls while the limit holds; once the platform takes the app's calls
    // again, the replies it refused go then, not at their backoff (here at
    // least 10 s), and each user's still in order (invariant 5).
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.sender.merge_batchsend = false;
    settings.sender.backoff_min_ms = 20_000;
    settings.sender.backoff_max_ms = 60_000;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    // One call a second: of 20 users' first replies, at most a few go.
    w.put("faults", json!({"rate_limit_per_sec": 1})).await;
    let users = conversations(&w, "limited", 20, 2).await;
    eventually("replies refused with 1008 and put back", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'pending' AND attempts > 0",
        )
        .await
            >= 10
    })
    .await;
    w.put("faults", json!({})).await;
    let lifted = std::time::Instant::now();
    // Another user's reply is delivered: the platform takes calls again.
    w.say("limited-late", "m0").await;
    let want = echoes(2);
    while !inboxes_are(&w, &users, &want).await {
        assert!(
            lifted.elapsed() < Duration::from_secs(8),
            "every reply out well before its 10-20 s backoff"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for u in &users {
        assert_eq!(w.texts(u).await, want, "{u}'s replies once, in order");
    }
    let scraped = scrape(d.admin_addr).await;
    assert!(
        metric(&scraped, "pubbot_outbound_rate_limit_lifted_total") >= 10.0,
        "the lift is counted"
    );
    assert!(
        w.calls("/message/send.json")
            .await
            .iter()
            .any(|c| c["errcode"] == 1008),
        "the platform refused calls for its rate"
    );
    d.shutdown().await;
}

/// Pushes `n` texts from `users` users as fast as `concurrency` pushers
/// can (not waiting for delivery), and returns the count per user.
async fn burst(w: &World, tag: &str, n: usize, users: usize) -> HashMap<String, usize> {
    let per: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, url, per, next, tag) = (
            w.http.clone(),
            format!("{}/_sim/message", w.sim.base_url()),
            Arc::clone(&per),
            Arc::clone(&next),
            tag.to_owned(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let user = format!("{tag}-{}", i % users);
                let r = http
                    .post(&url)
                    .json(&json!({"mcid": SHOP, "user": user, "type": "text", "content": format!("b{i}")}))
                    .send()
                    .await
                    .expect("push");
                assert_eq!(r.status(), 200);
                *per.lock().unwrap().entry(user).or_default() += 1;
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("pusher");
    }
    let per = per.lock().unwrap().clone();
    per
}

async fn deadlocks(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until each user got as many replies as they sent, then checks
/// none got more. If some never come, the panic says what the platform saw
/// of the short users' pushes (their tries and how each ended).
async fn each_answered_exactly_once(w: &World, per_user: &HashMap<String, usize>) {
    let users: Vec<(String, usize)> = per_user.iter().map(|(u, n)| (u.clone(), *n)).collect();
    let mut short = Vec::new();
    for _ in 0..1200 {
        short.clear();
        for (u, n) in &users {
            let got = w.inbox(u).await.len();
            if got < *n {
                short.push((u.clone(), got, *n));
            }
        }
        if short.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !short.is_empty() {
        let pushes = w.get("pushes").await;
        let mut seen = String::new();
        for (u, got, want) in short.iter().take(5) {
            seen.push_str(&format!("\n{u}: {got} of {want} replies; its pushes:"));
            for p in pushes.as_array().into_iter().flatten() {
                if p["user_id"] == u.as_str() {
                    let tries: Vec<String> = p["attempts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| format!("{}({})", a["outcome"], a["status"]))
                        .collect();
                    seen.push_str(&format!(
                        "\n  {} {}: {}",
                        p["msg_id"],
                        p["state"],
                        tries.join(" ")
                    ));
                }
            }
        }
        panic!(
            "timed out waiting for every push answered: {} users short{seen}",
            short.len()
        );
    }
    // Late duplicates would come within a retry or two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (u, n) in &users {
        assert_eq!(
            w.inbox(u).await.len(),
            *n,
            "{u}: one reply per push, none twice"
        );
    }
}

/// As `eventually`, for up to 120 s.
async fn eventually_long<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_burst_past_capacity_on_a_ten_connection_pool_drains_with_nothing_twice(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Invariants 4 and 6: no task waits for a connection while holding
    // one, and rows are locked in id order, so a burst on a small pool
    // neither wedges nor deadlocks; every reply goes out once. With the
    // platform's own patience (R15: 5 s a try): the simulator, the daemon
    // and the pushers share one test thread, and under CI's load a burst
    // answered in time by production's measure overran the test
    // simulator's 1 s three times over, leaving pushes never stored.
    let w = World::with_push(connect, Duration::from_secs(5), 3).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let before = deadlocks(&pool).await;
    let mut settings = w.settings();
    settings.database.max_connections = 10;
    settings.workers.decide = 2;
    settings.workers.send = 8;
    settings.workers.claim_batch = 16;
    // Short leases: renewals and recovery run throughout the burst.
    settings.workers.lease_secs = 4;
    let (d, _) = w.daemon(settings, w.pool(None).await).await;
    w.add_account(d.addr).await;
    // A slow platform keeps calls in flight while outcomes are recorded.
    w.put("faults", json!({"latency_ms": 20})).await;
    let per_user = burst(&w, "burst", 3000, 300).await;
    w.pushes_answered_once().await;
    each_answered_exactly_once(&w, &per_user).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status <> 'sent'"
        )
        .await,
        0
    );
    assert_eq!(deadlocks(&pool).await - before, 0, "no deadlock detected");
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_user_writing_faster_than_their_replies_go_out_is_answered_in_order_in_process(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Replies planned by the ingest statement (decided at receipt).
    answered_in_order_in_process(connect, true).await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn replies_planned_by_the_decide_workers_follow_the_one_before_in_process_too(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Every push decided by a decide worker (as while ingest is behind,
    // and after it, until each user's backlog is decided).
    answered_in_order_in_process(connect, false).await;
}

async fn answered_in_order_in_process(connect: PgConnectOptions, at_receipt: bool) {
    // Outbox "Following a reply held here": each reply takes the platform
    // 40 ms, and each user writes again as soon as a push is stored, so
    // most replies are planned while the user's previous one is still out.
    // They are leased behind it and sent once its call went out: each
    // user's replies in the order written, none twice, none through the
    // table's claims.
    let w = World::with_push(connect, Duration::from_secs(5), 3).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.ingest.decide_at_receipt = at_receipt;
    let (d, _) = w.daemon(settings, w.pool(None).await).await;
    w.add_account(d.addr).await;
    w.put("faults", json!({"latency_ms": 40})).await;
    // The registry is the process's: other tests in it count too.
    let followed = || async {
        metric(
            &scrape(d.admin_addr).await,
            "pubbot_decided_to_sent_seconds_count{path=\"followed\"}",
        )
    };
    let before = followed().await;
    let users = conversations(&w, "quick", 20, 8).await;
    let want = echoes(8);
    eventually_long("every conversation answered", || {
        inboxes_are(&w, &users, &want)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for u in &users {
        assert_eq!(
            w.texts(u).await,
            want,
            "{u}'s replies in the order they wrote, once each"
        );
    }
    let n = followed().await - before;
    assert!(n >= 20.0, "replies followed the one before in process: {n}");
    // Each sent at its first attempt.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent' AND attempts = 1"
        )
        .await,
        160
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn decide_and_send_yield_while_ingest_is_behind_then_every_reply_goes_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Ingest first (issue 26): with `ingest.yield_after_ms` at 1 ms every
    // group commit counts as behind, so while the burst comes the decide
    // and send workers start no new round. The pushes are all answered
    // (stored), and once pushes stop the replies go out, each once and in
    // each user's order; the yielding is in /metrics. The platform's own
    // patience (R15), as in the burst above.
    let w = World::with_push(connect, Duration::from_secs(5), 3).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.ingest.yield_after_ms = 1;
    let (d, _) = w.daemon(settings, w.pool(None).await).await;
    w.add_account(d.addr).await;
    // The registry is the process's: other tests in it count too.
    let undecided = || async {
        metric(
            &scrape(d.admin_addr).await,
            "pubbot_ingest_undecided_behind_total",
        )
    };
    let before = undecided().await;
    let per_user = burst(&w, "first", 1500, 100).await;
    w.pushes_answered_once().await;
    each_answered_exactly_once(&w, &per_user).await;
    // While ingest is behind, each user's replies still come in the order
    // they wrote.
    let users = conversations(&w, "order", 100, 6).await;
    let want = echoes(6);
    eventually_long("every conversation answered", || {
        inboxes_are(&w, &users, &want)
    })
    .await;
    for u in &users {
        assert_eq!(
            w.texts(u).await,
            want,
            "{u}'s replies in the order they wrote"
        );
    }
    // Behind, pushes were stored undecided: one insert each, decided later
    // by the workers (all but those of the commits before the first slow
    // one).
    let n = undecided().await - before;
    assert!(n >= 1000.0, "pushes stored undecided while behind: {n}");
    let metrics = scrape(d.admin_addr).await;
    let value = |prefix: &str| metric(&metrics, prefix);
    assert!(
        value("pubbot_ingest_behind_total") >= 1.0,
        "ingest was behind"
    );
    assert!(
        value("pubbot_ingest_yield_seconds_count{stage=\"send\"}") >= 1.0,
        "senders yielded to ingest"
    );
    // Where each message waited is measured stage by stage.
    for stage in [
        "pubbot_ingest_queue_seconds_count",
        "pubbot_pool_acquire_seconds_count{pool=\"ingest\"}",
        "pubbot_pool_acquire_seconds_count{pool=\"settle\"}",
    ] {
        assert!(value(stage) >= 1.0, "{stage} recorded");
    }
    let sent = value("pubbot_decided_to_sent_seconds_count");
    assert!(sent >= 1.0, "decided -> sent recorded");
    d.shutdown().await;
}

async fn database_stopped_under_load(connect: PgConnectOptions, outage: Duration) {
    // R15 and the spool: pushes at ~200/s; the database goes away for
    // `outage` and comes back. Every push is answered exactly once (by the
    // spool while the database is away), nothing is lost, no reply is sent
    // twice, and the spool is empty at the end. With the platform's own
    // patience (R15: three tries of 5 s), not the test simulator's 1 s:
    // once the database is back, a user's new push waits for the user's
    // spooled ones to be stored first (their order), and on a slow machine
    // the drain after 60 s took longer than three seconds (seen in CI and
    // alone, at 35d313e as since).
    let w = World::with_push(connect.clone(), Duration::from_secs(5), 3).await;
    let proxy = Proxy::start(db_addr(&connect)).await;
    let direct = w.pool(None).await;
    import(&direct, ECHO).await;
    let spool = fresh_dir("outage-spool");
    let mut settings = w.settings();
    settings.ingest.spool_dir = spool.display().to_string();
    // Past the platform's 5 s, as in production (R15).
    settings.http.unanswered_hold_ms = 6000;
    let (d, _) = w.daemon(settings, w.pool(Some(proxy.addr)).await).await;
    w.add_account(d.addr).await;

    let seconds = outage.as_secs() + 6;
    let pushing = {
        let (http, url) = (w.http.clone(), format!("{}/_sim/message", w.sim.base_url()));
        tokio::spawn(async move {
            let mut per: HashMap<String, Vec<String>> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            for i in 0..(seconds * 200) {
                tick.tick().await;
                let user = format!("out-{}", i % 100);
                let r = http
                    .post(&url)
                    .json(&json!({"mcid": SHOP, "user": user, "type": "text", "content": format!("o{i}")}))
                    .send()
                    .await
                    .expect("push");
                assert_eq!(r.status(), 200);
                per.entry(user).or_default().push(format!("re: o{i}"));
            }
            per
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    tokio::time::sleep(outage).await;
    proxy.restore();
    let written = pushing.await.unwrap();
    let per_user: HashMap<String, usize> =
        written.iter().map(|(u, t)| (u.clone(), t.len())).collect();
    let total: usize = per_user.values().sum();
    assert_eq!(w.pushes_answered_once().await.len(), total);
    each_answered_exactly_once(&w, &per_user).await;
    // In the order each user wrote, across the outage: while the spool
    // holds a user's pushes, their later ones follow them there.
    for (u, want) in &written {
        assert_eq!(
            &w.texts(u).await,
            want,
            "{u}'s replies in the order they wrote"
        );
    }
    assert_eq!(
        count(&direct, "SELECT count(*) FROM inbound_messages").await as usize,
        total,
        "every push stored once"
    );
    eventually("the spool drained", || async {
        std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().starts_with("spool-"))
    })
    .await;
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_database_stopped_for_10s_under_load_loses_nothing_and_sends_nothing_twice(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    database_stopped_under_load(connect, Duration::from_secs(10)).await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_database_stopped_for_60s_under_load_loses_nothing_and_sends_nothing_twice(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    database_stopped_under_load(connect, Duration::from_secs(60)).await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_daemon_killed_with_pushes_in_its_spool_drains_them_after_restart(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect.clone()).await;
    let proxy = Proxy::start(db_addr(&connect)).await;
    let direct = w.pool(None).await;
    import(&direct, ECHO).await;
    let spool = fresh_dir("killed-spool");
    let mut settings = w.settings();
    settings.ingest.spool_dir = spool.display().to_string();
    let (d, _) = w
        .daemon(settings.clone(), w.pool(Some(proxy.addr)).await)
        .await;
    w.add_account(d.addr).await;
    proxy.cut();
    let users = conversations(&w, "spooled", 20, 1).await;
    // Answered (durable in the spool), not stored.
    assert_eq!(w.pushes_answered_once().await.len(), 20);
    assert_eq!(
        count(&direct, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    d.abort();
    proxy.restore();
    // A new process on the same spool (the lock went with the old one).
    let mut d2 = None;
    for _ in 0..50 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        match pubbot::start(
            settings.clone(),
            w.pool(None).await,
            listener,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        {
            Ok(r) => {
                d2 = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let d2 = d2.expect("restarted on the same spool");
    let want = echoes(1);
    eventually("the spooled pushes answered after the restart", || async {
        inboxes_are(&w, &users, &want).await
    })
    .await;
    for u in &users {
        assert_eq!(w.texts(u).await, want);
    }
    d2.shutdown().await;
}

async fn dropped_connections(connect: PgConnectOptions, retry_ambiguous: bool) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.sender.retry_ambiguous = retry_ambiguous;
    settings.sender.merge_batchsend = false;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    // A dropped connection: the platform delivered, the answer was lost.
    w.put("faults", json!({"drop_rate": 0.2})).await;
    let users = conversations(&w, "dropped", 50, 4).await;
    eventually("every reply settled", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status IN ('pending', 'sending')",
        )
        .await
            == 0
            && count(&pool, "SELECT count(*) FROM outbound_messages").await == 200
    })
    .await;
    let calls = w.calls("/message/send.json").await;
    let dropped = calls.iter().filter(|c| c["dropped"] == true).count();
    assert!(dropped > 0, "some answers were lost");
    let delivered: usize = {
        let mut n = 0;
        for u in &users {
            n += w.inbox(u).await.len();
        }
        n
    };
    if retry_ambiguous {
        // Every lost answer was retried: each is one counted double.
        assert_eq!(
            delivered,
            200 + dropped,
            "duplicates only from retried lost answers"
        );
        let counted = metric(
            &scrape(d.admin_addr).await,
            "pubbot_outbound_ambiguous_retries_total",
        );
        assert!(
            counted >= dropped as f64,
            "{counted} counted, {dropped} dropped"
        );
    } else {
        // Nothing twice; the lost ones are failed, saying so.
        assert_eq!(delivered, 200, "no reply twice");
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM outbound_messages WHERE status = 'failed' AND last_error LIKE '%may have been delivered%'"
            )
            .await as usize,
            dropped
        );
    }
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn dropped_platform_connections_are_retried_and_counted_when_allowed(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    dropped_connections(connect, true).await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn dropped_platform_connections_are_never_sent_twice_when_not_allowed(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    dropped_connections(connect, false).await;
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts `body` to the daemon's webhook signed with `ts` (as given) and a
/// fresh nonce; returns the status.
async fn post_signed(http: &reqwest::Client, addr: SocketAddr, ts: &str, body: Vec<u8>) -> u16 {
    let nonce = rand::random::<u64>().to_string();
    let sig = pubbot_sim::signature::sign(SECRET, &nonce, ts);
    http.post(format!(
        "http://{addr}/webhook/{KEY}?rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={sig}"
    ))
    .body(body)
    .send()
    .await
    .expect("post")
    .status()
    .as_u16()
}

/// A text push; `user` and `content` go in as given (no CDATA, so an
/// entity such as `&#0;` is decoded by the parser).
fn text_push(user: &[u8], content: &[u8], msg_id: usize) -> Vec<u8> {
    let mut x = b"<xml><ToUserName>shop</ToUserName><FromUserName>".to_vec();
    x.extend_from_slice(user);
    x.extend_from_slice(
        b"</FromUserName><CreateTime>1700000000000</CreateTime><MsgType>text</MsgType><Content>",
    );
    x.extend_from_slice(content);
    x.extend_from_slice(format!("</Content><MsgId>{msg_id}</MsgID></xml>").as_bytes());
    x
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn pushes_postgres_cannot_store_never_refuse_an_innocent_one(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    let http = reqwest::Client::new();
    let ts = now_secs().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..480usize {
        let (http, ts, addr) = (http.clone(), ts.clone(), d.addr);
        tasks.spawn(async move {
            let (kind, body) = match i % 6 {
                // A NUL in the user id (raw, or in CDATA): PostgreSQL's
                // `text` cannot keep it; refused alone (422).
                0 => (
                    "unstorable",
                    text_push(format!("nul\0{i}").as_bytes(), b"x", i),
                ),
                1 => (
                    "unstorable",
                    text_push(format!("<![CDATA[nul\0{i}]]>").as_bytes(), b"x", i),
                ),
                // A NUL in the content: kept (the message is `json`, the
                // body bytes).
                2 => ("kept", text_push(format!("u{i}").as_bytes(), b"a\0b", i)),
                // An entity for NUL or a lone surrogate, invalid UTF-8: not
                // XML text the platform could send; malformed (400).
                3 => (
                    "malformed",
                    text_push(format!("u{i}").as_bytes(), b"a&#0;b", i),
                ),
                4 => (
                    "malformed",
                    text_push(format!("u{i}").as_bytes(), b"caf\xE9", i),
                ),
                _ => (
                    "innocent",
                    text_push(format!("u{i}").as_bytes(), b"hello", i),
                ),
            };
            (kind, i, post_signed(&http, addr, &ts, body).await)
        });
    }
    let mut stored = 0;
    while let Some(r) = tasks.join_next().await {
        let (kind, i, status) = r.unwrap();
        let want = match kind {
            "unstorable" => 422,
            "malformed" => 400,
            _ => {
                stored += 1;
                200
            }
        };
        assert_eq!(status, want, "{kind} push {i}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        stored
    );
    // The raw body is kept byte for byte, NUL included.
    let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM inbound_messages WHERE user_id = 'u2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(raw, text_push(b"u2", b"a\0b", 2));
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn an_overflowing_timestamp_is_refused_without_a_panic(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    let http = reqwest::Client::new();
    let body = text_push(b"u", b"hi", 1);
    assert_eq!(
        post_signed(&http, d.addr, "-9223372036854775808", body.clone()).await,
        403
    );
    // Still serving.
    assert_eq!(
        post_signed(&http, d.addr, &now_secs().to_string(), body).await,
        200
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn readiness_follows_the_database_and_metrics_are_served(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect.clone()).await;
    let proxy = Proxy::start(db_addr(&connect)).await;
    let (d, _) = w.daemon(w.settings(), w.pool(Some(proxy.addr)).await).await;
    let admin = d.admin_addr;
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    eventually("ready", || async {
        admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("pubbot_build_info{version="), "{metrics}");
    proxy.cut();
    eventually("not ready while the database is away", || async {
        let (status, body) = admin_get(admin, "/readyz").await;
        status == 503 && body.contains("database")
    })
    .await;
    assert_eq!(
        admin_get(admin, "/healthz").await.0,
        200,
        "the process still answers"
    );
    proxy.restore();
    eventually("ready again", || async {
        admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_reply_that_could_not_go_out_in_time_expires_instead(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // A late answer in a chat is worse than none: past
    // sender.max_reply_age_secs a reply is expired, counted, never sent.
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ECHO).await;
    let mut settings = w.settings();
    settings.sender.max_reply_age_secs = 1;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    // The platform fails every call (1000, retryable) for a while.
    w.put("faults", json!({"error_rate": 1.0})).await;
    w.say("late", "anyone there?").await;
    eventually("expired", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'expired'",
        )
        .await
            == 1
    })
    .await;
    w.put("faults", json!({"error_rate": 0.0})).await;
    // A fresh message still gets its answer.
    w.say("late", "hello?").await;
    eventually("the new reply", || async {
        w.texts("late").await == ["re: hello?"]
    })
    .await;
    assert_eq!(
        w.texts("late").await,
        ["re: hello?"],
        "the old one never went out"
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_push_whose_platform_hung_up_leaves_no_stage_stuck(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // The platform drops a try that waits too long; the push it carried
    // stops waiting too. It used to stay counted as waiting for the
    // database, and a daemon idle after a burst reported its ingest stuck
    // (/readyz 503) for good.
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    let mut settings = w.settings();
    settings.workers.stall_secs = 1;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    let admin = d.admin_addr;
    eventually("ready", || async {
        admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    // The database is slow: the push's insert waits behind a lock.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE inbound_messages IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let nonce = "1";
    let ts = now_secs().to_string();
    let sig = pubbot_sim::signature::sign(SECRET, nonce, &ts);
    let hung_up = impatient
        .post(format!(
            "http://{}/webhook/{KEY}?rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={sig}",
            d.addr
        ))
        .body(text_push(b"u", b"hi", 1))
        .send()
        .await;
    assert!(hung_up.is_err(), "answered before the database was back");
    lock.rollback().await.unwrap();
    eventually("stored all the same", || async {
        count(&pool, "SELECT count(*) FROM inbound_messages").await == 1
    })
    .await;
    eventually("ready again", || async {
        admin_get(admin, "/readyz").await.0 == 200
    })
    .await;
    // Idle for several stall periods: still ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    d.shutdown().await;
}

/// GET on the admin listener: status and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{admin}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
