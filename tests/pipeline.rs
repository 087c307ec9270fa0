//! pubbot end to end: the simulator pushes over HTTP to real daemons on a
//! fresh PostgreSQL database per test, and receives their replies.

use std::time::Duration;

mod broadcasts;
mod console;
mod databases;
mod faults;
mod handlers;
mod operator;
mod operator_hits;
mod partitions;
mod protocol;
mod scrape;
mod slow_clients;

use pubbot_e2e::{db_addr, eventually, webhook_url, Proxy, World, KEY, SHOP};
use pubbot_rules::{Options, RuleFile};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

const RULES: &str = r#"
[[rule]]
name = "welcome"
kind = "follow"
replies = [{ type = "text", text = "welcome {{ user }}" }]

[[rule]]
name = "hours"
priority = 10
trigger = { keywords = [{ pattern = "hours" }] }
replies = [{ type = "text", text = "9-18" }]

[[rule]]
name = "broken-media"
trigger = { keywords = [{ pattern = "catalogue", match = "equals" }] }
replies = [{ type = "image", media_id = "no-such-media" }]

[[rule]]
name = "fallback"
kind = "default"
replies = [{ type = "text", text = "a person will answer" }]
"#;

async fn import(pool: &PgPool, toml: &str) {
    pubbot::pipeline::rules::import(
        pool,
        RuleFile::from_toml(toml).unwrap(),
        &Options::default(),
        false,
    )
    .await
    .unwrap();
}

/// A simulator and a fresh database with [`RULES`].
async fn world(connect: PgConnectOptions) -> (World, PgPool) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, RULES).await;
    (w, pool)
}

/// A simulator, a fresh database with [`RULES`], one daemon, and the
/// account routed to it.
async fn setup(connect: PgConnectOptions) -> (World, PgPool, pubbot::Running) {
    let (w, pool) = world(connect).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    (w, pool, d)
}

/// Whether every user got at least one message.
async fn all_answered(w: &World, users: &[String]) -> bool {
    for u in users {
        if w.inbox(u).await.is_empty() {
            return false;
        }
    }
    true
}

/// Makes the platform slow, has `n` users ask "hours" (prefix `tag`), and
/// returns once a reply is in flight.
async fn sends_in_flight(
    w: &World,
    pool: &PgPool,
    tag: &str,
    n: usize,
    latency_ms: u64,
) -> Vec<String> {
    w.put("faults", json!({"latency_ms": latency_ms})).await;
    let users: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    for u in &users {
        w.control(
            "message",
            json!({"mcid": SHOP, "user": u, "type": "text", "content": "hours"}),
        )
        .await;
    }
    // Every push stored first: a push still on its way when a test kills
    // the daemon would be retried to a dead address and never answered.
    eventually("every push stored", || async {
        count(pool, "SELECT count(*) FROM inbound_messages").await >= n as i64
    })
    .await;
    eventually("sends in flight", || async {
        count(
            pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sending'",
        )
        .await
            > 0
    })
    .await;
    users
}

/// Has a daemon without senders answer "hello" from `n` users (prefix
/// `tag`), then the `extra` texts (by user index), and stops it once all
/// `replies` replies are planned: they wait as pending rows for a sender.
async fn planned_not_sent(
    w: &World,
    pool: &PgPool,
    tag: &str,
    n: usize,
    extra: &[(usize, &str)],
    replies: i64,
) -> Vec<String> {
    let mut deciding = w.settings();
    deciding.workers.send = 0;
    let (a, _) = w.daemon(deciding, w.pool(None).await).await;
    w.add_account(a.addr).await;
    let users: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    for u in &users {
        w.say(u, "hello").await;
    }
    for (i, text) in extra {
        w.say(&users[*i], text).await;
    }
    eventually("all decided", || async {
        count(
            pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'pending'",
        )
        .await
            == replies
    })
    .await;
    a.shutdown().await;
    users
}

/// A daemon with one sender and no decide worker: it takes every pending
/// row in one claim.
async fn sender_only(w: &World) -> pubbot::Running {
    let mut sending = w.settings();
    sending.workers.decide = 0;
    sending.workers.send = 1;
    w.daemon(sending, w.pool(None).await).await.0
}

/// A simulator allowing `platform` calls a second, a daemon sending one
/// call per reply (at most `daemon` a second, when given), and `n` users
/// (prefix `tag`) asking for the hours.
async fn hours_under_rate_limit(
    connect: PgConnectOptions,
    daemon: Option<u32>,
    platform: u32,
    tag: &str,
    n: usize,
) -> (World, PgPool, pubbot::Running, Vec<String>) {
    let (w, pool) = world(connect).await;
    let mut settings = w.settings();
    settings.sender.merge_batchsend = false;
    if let Some(limit) = daemon {
        settings.apps[0].rate_limit_per_sec = limit;
    }
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    w.put("faults", json!({"rate_limit_per_sec": platform}))
        .await;
    let users: Vec<String> = (0..n).map(|i| format!("{tag}{i}")).collect();
    for u in &users {
        w.control(
            "message",
            json!({"mcid": SHOP, "user": u, "type": "text", "content": "hours"}),
        )
        .await;
    }
    (w, pool, d, users)
}

/// Waits until `n` replies are recorded as sent.
async fn all_sent(pool: &PgPool, n: i64) {
    eventually("every reply recorded as sent", || async {
        count(
            pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
        )
        .await
            == n
    })
    .await;
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn keyword_default_follow_and_unfollow(_: PgPoolOptions, connect: PgConnectOptions) {
    let (w, pool, d) = setup(connect).await;

    // Each message after the previous answer, as in a conversation (two
    // replies planned at the same moment may go out in either order).
    w.control(
        "follow",
        json!({"mcid": SHOP, "user": "alice", "wait": true}),
    )
    .await;
    eventually("the greeting", || async {
        w.inbox("alice").await.len() == 1
    })
    .await;
    w.say("alice", "opening HOURS?").await;
    eventually("two replies", || async {
        w.inbox("alice").await.len() == 2
    })
    .await;
    w.say("alice", "something else").await;
    eventually("three replies", || async {
        w.inbox("alice").await.len() == 3
    })
    .await;
    assert_eq!(
        w.texts("alice").await,
        ["welcome alice", "9-18", "a person will answer"]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM followers WHERE user_id = 'alice'"
        )
        .await,
        1
    );

    w.control(
        "unfollow",
        json!({"mcid": SHOP, "user": "alice", "wait": true}),
    )
    .await;
    eventually("follower removed", || async {
        count(&pool, "SELECT count(*) FROM followers").await == 0
    })
    .await;
    eventually("all pushes decided", || async {
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE status = 'pending'",
        )
        .await
            == 0
    })
    .await;
    assert_eq!(w.inbox("alice").await.len(), 3, "no reply to an unfollow");
    let trace: (String, String) = sqlx::query_as(
        "SELECT i.trace_id, o.trace_id FROM inbound_messages i JOIN outbound_messages o ON o.inbound_id = i.id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(trace.0, trace.1, "one trace id from push to reply");
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn retried_and_duplicated_pushes_to_two_replicas_get_one_reply(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (w, pool) = world(connect).await;
    let (a, _) = w.daemon(w.settings(), pool.clone()).await;
    let (b, _) = w.daemon(w.settings(), w.pool(None).await).await;
    assert_ne!(a.worker_id, b.worker_id, "replicas have their own identity");
    w.add_account(a.addr).await;

    let r = w
        .control(
            "message",
            json!({"mcid": SHOP, "user": "bob", "type": "text", "content": "hours", "duplicates": 2,
                   "concurrent": true, "route_urls": [webhook_url(a.addr), webhook_url(b.addr)], "wait": true}),
        )
        .await;
    for p in r["pushes"].as_array().unwrap() {
        assert_eq!(p["state"], "delivered", "{p}");
    }
    eventually("the reply", || async { !w.inbox("bob").await.is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.texts("bob").await, ["9-18"]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbound_messages").await,
        1
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_bad_signature_stores_nothing(_: PgPoolOptions, connect: PgConnectOptions) {
    let (w, pool, d) = setup(connect).await;
    let r = w.control("message", json!({"mcid": SHOP, "user": "eve", "type": "text", "content": "hours", "bad_signature": true, "wait": true})).await;
    let statuses: Vec<u64> = r["pushes"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    // Refused at once; any answer ends the platform's tries (R15).
    assert_eq!(statuses, [401]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    assert!(w.inbox("eve").await.is_empty());
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn database_down_means_spooled_and_answered_then_stored_and_replied(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect.clone()).await;
    let proxy = Proxy::start(db_addr(&connect)).await;
    let direct = w.pool(None).await;
    import(&direct, RULES).await;
    let (d, _) = w.daemon(w.settings(), w.pool(Some(proxy.addr)).await).await;
    w.add_account(d.addr).await;

    proxy.cut();
    let push = w
        .control(
            "message",
            json!({"mcid": SHOP, "user": "carol", "type": "text", "content": "hours", "wait": true}),
        )
        .await;
    // R15: answered once, on the first try, because the spool made it
    // durable; nothing reached the table yet.
    assert_eq!(push["pushes"][0]["state"], "delivered");
    let attempts = push["pushes"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(
        count(&direct, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    proxy.restore();
    eventually("the reply once the spool drained", || async {
        w.texts("carol").await == ["9-18"]
    })
    .await;
    assert_eq!(
        count(&direct, "SELECT count(*) FROM inbound_messages").await,
        1
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_database_cut_while_replies_are_in_flight_sends_nothing_twice(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect.clone()).await;
    let proxy = Proxy::start(db_addr(&connect)).await;
    let direct = w.pool(None).await;
    import(&direct, RULES).await;
    let mut settings = w.settings();
    // Longer than the cut: the outcome is recorded once the database is
    // back, before the lease would let recovery send anything again.
    settings.workers.lease_secs = 8;
    let (d, _) = w.daemon(settings, w.pool(Some(proxy.addr)).await).await;
    w.add_account(d.addr).await;
    // The platform answers after 1 s; the database goes away meanwhile and
    // is still away when the answers come.
    let users = sends_in_flight(&w, &direct, "cut", 4, 1000).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    proxy.restore();
    all_sent(&direct, 4).await;
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"], "{u} answered exactly once");
    }
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM outbound_messages WHERE attempts > 1 OR last_error IS NOT NULL",
        )
        .await,
        0,
        "no reply was recovered or retried"
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_daemon_limited_to_the_platforms_rate_is_never_answered_1008(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // The platform counts calls per calendar second: a daemon allowed a
    // burst of five on top of five a second would cross it. Six seconds of
    // replies also outlast the four-second lease the replies were planned
    // with: the sender renews it, or the lease recovery would send them
    // again.
    let (w, pool, d, users) = hours_under_rate_limit(connect, Some(5), 5, "paced", 30).await;
    all_sent(&pool, 30).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE attempts > 1 OR last_error IS NOT NULL",
        )
        .await,
        0,
        "no reply was recovered or retried: {:?}",
        sqlx::query_as::<_, (i64, i32, Option<String>)>("SELECT id, attempts, last_error FROM outbound_messages WHERE attempts > 1 OR last_error IS NOT NULL").fetch_all(&pool).await.unwrap()
    );
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"], "{u} answered exactly once");
    }
    let calls = w.calls("/message/send.json").await;
    assert_eq!(calls.len(), users.len(), "one call per reply");
    assert!(calls.iter().all(|c| c["errcode"] == 0), "{calls:?}");
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn rate_limited_replies_arrive_late_but_once_and_permanent_errors_fail(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // One call per reply, so that twelve replies make twelve calls against
    // the limit (merging is tested on its own below).
    let (w, pool, d, users) = hours_under_rate_limit(connect, None, 3, "u", 12).await;
    eventually("every user answered", || all_answered(&w, &users)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"], "{u} answered exactly once");
    }
    let limited = w
        .calls("/message/send.json")
        .await
        .iter()
        .filter(|c| c["errcode"] == 1008)
        .count();
    assert!(limited > 0, "the platform's rate limit was hit");
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE attempts > 1"
        )
        .await
            > 0
    );

    w.put("faults", json!({})).await;
    w.say("dave", "catalogue").await;
    eventually("the row failed", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    let (error, attempts): (String, i32) = sqlx::query_as(
        "SELECT last_error, attempts FROM outbound_messages WHERE status = 'failed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        error.contains("1002") && error.contains("invalid media_id"),
        "{error}"
    );
    assert_eq!(attempts, 1, "permanent errors are not retried");
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_rule_change_applies_without_restart(_: PgPoolOptions, connect: PgConnectOptions) {
    let (w, pool, d) = setup(connect).await;
    w.say("erin", "hours").await;
    eventually("first answer", || async {
        w.texts("erin").await == ["9-18"]
    })
    .await;

    import(&pool, "[[rule]]\nname = \"hours\"\npriority = 10\ntrigger = { keywords = [{ pattern = \"hours\" }] }\nreplies = [{ type = \"text\", text = \"10-20 now\" }]\n").await;
    // A bad change is refused before it reaches the database.
    let bad = RuleFile::from_toml(
        "[[rule]]\nname = \"hours\"\nreplies = [{ type = \"text\", text = \"{{ oops\" }]\n",
    )
    .unwrap();
    let e = pubbot::pipeline::rules::import(&pool, bad, &Options::default(), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("template error"), "{e}");

    eventually("the new answer", || async {
        w.say("erin", "hours").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.texts("erin").await.last().map(String::as_str) == Some("10-20 now")
    })
    .await;
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_killed_daemons_work_is_finished_by_another(_: PgPoolOptions, connect: PgConnectOptions) {
    let (w, pool) = world(connect).await;
    let (a, _) = w.daemon(w.settings(), w.pool(None).await).await;
    w.add_account(a.addr).await;
    // Slow platform: sends are in flight when the daemon dies.
    let users = sends_in_flight(&w, &pool, "k", 6, 1500).await;
    a.abort();
    w.put("faults", json!({})).await;

    let (b, _) = w.daemon(w.settings(), w.pool(None).await).await;
    eventually("every user answered", || all_answered(&w, &users)).await;
    eventually("nothing left", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status <> 'sent'",
        )
        .await
            == 0
    })
    .await;
    let twice: i64 = {
        let mut n = 0;
        for u in &users {
            n += w.inbox(u).await.len() as i64 - 1;
        }
        n
    };
    let recovered = count(
        &pool,
        "SELECT count(*) FROM outbound_messages WHERE last_error LIKE 'interrupted mid-call%'",
    )
    .await;
    assert!(
        twice <= recovered,
        "only replies caught mid-call may go twice: {twice} > {recovered}"
    );
    b.shutdown().await;
    let _ = KEY;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn an_invalid_rule_file_writes_nothing_and_names_every_error(pool: PgPool) {
    let bad = RuleFile::from_toml(
        "[[rule]]\nname = \"a\"\ntrigger = { keywords = [] }\nreplies = [{ type = \"text\", text = \"x\" }]\n\
         [[rule]]\nname = \"b\"\ntrigger = { keywords = [{ pattern = \"(\", match = \"regex\" }] }\nreplies = [{ type = \"text\", text = \"x\" }]\n\
         [[rule]]\nname = \"c\"\nreplies = [{ type = \"text\", text = \"fine\" }]\n",
    )
    .unwrap();
    let e = pubbot::pipeline::rules::import(&pool, bad, &Options::default(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rule \"a\"") && e.contains("rule \"b\"") && !e.contains("rule \"c\""),
        "{e}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM rules").await, 0);
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_load_generator_counts_every_reply_once(_: PgPoolOptions, connect: PgConnectOptions) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, include_str!("../config/bench-rules.toml")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut settings = w.settings();
    settings.apps[0].api_base_url = format!("http://{}", listener.local_addr().unwrap());
    settings.apps[0].accounts = pubbot::config::Hosted::Only(vec!["bench".into()]);
    let (d, _) = w.daemon(settings, pool.clone()).await;
    let config = pubbot_sim::SimConfig {
        apps: vec![pubbot_sim::AppCredentials {
            key: KEY.into(),
            secret: pubbot_e2e::SECRET.into(),
        }],
        ..pubbot_sim::SimConfig::default()
    };
    let load = pubbot_sim::load::LoadConfig {
        mcid: "bench".into(),
        route_url: webhook_url(d.addr),
        rate: Some(100),
        concurrency: 1,
        duration: Duration::from_secs(1),
        users: 10,
        unique_users: false,
        grace: Duration::from_secs(15),
    };
    let report = pubbot_sim::load::run(config, listener, load).await.unwrap();
    assert!(report.pushes >= 50, "{report}");
    assert_eq!(report.acknowledged, report.pushes, "{report}");
    assert_eq!(report.first_try, report.pushes, "{report}");
    assert_eq!(report.replied, report.pushes, "{report}");
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await as u64,
        report.pushes
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn graceful_shutdown_leaves_nothing_half_done(_: PgPoolOptions, connect: PgConnectOptions) {
    let (w, pool, d) = setup(connect).await;
    let addr = d.addr;
    let users = sends_in_flight(&w, &pool, "s", 8, 300).await;
    d.shutdown().await;
    // In-flight sends were finished, not abandoned mid-call.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'sending'"
        )
        .await,
        0
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the webhook no longer listens"
    );
    w.put("faults", json!({})).await;
    let (again, _) = w.daemon(w.settings(), pool.clone()).await;
    eventually("every user answered", || all_answered(&w, &users)).await;
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"], "{u}: once, after a clean stop");
    }
    again.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn same_replies_held_at_once_go_out_as_one_batchsend(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (w, pool) = world(connect).await;
    // The same user twice: the same reply twice, never twice in one call.
    let extra = [(0, "hello again"), (1, "what are your hours")];
    let users = planned_not_sent(&w, &pool, "merge-", 5, &extra, 7).await;
    // What the queue gauges report meanwhile.
    let d = pubbot::admin::queue::depths(&pool).await.unwrap();
    assert_eq!(
        (
            d.inbound_pending,
            d.outbound_pending,
            d.outbound_due,
            d.outbound_sending
        ),
        (0, 7, 7, 0),
        "{d:?}"
    );
    assert!(
        d.inbound_oldest_secs == 0.0 && d.outbound_oldest_secs > 0.0,
        "{d:?}"
    );

    // One sender alone takes all seven in one claim.
    let b = sender_only(&w).await;
    all_sent(&pool, 7).await;
    assert_eq!(
        pubbot::admin::queue::depths(&pool).await.unwrap(),
        pubbot::admin::queue::QueueDepths::default(),
        "nothing waits"
    );
    let batch = w.calls("/message/batchsend.json").await;
    assert_eq!(batch.len(), 1, "one batchsend: {batch:?}");
    let body: serde_json::Value = serde_json::from_str(batch[0]["body"].as_str().unwrap()).unwrap();
    let mut to: Vec<String> = body["touser"]
        .as_array()
        .unwrap_or_else(|| panic!("recipients in {body}"))
        .iter()
        .map(|u| u.as_str().unwrap().split('@').next().unwrap().to_owned())
        .collect();
    to.sort();
    assert_eq!(to, users, "five distinct users in the batch");
    // The second "a person will answer" to merge-0 and the "9-18" to
    // merge-1 are single sends.
    assert_eq!(w.calls("/message/send.json").await.len(), 2);
    assert_eq!(
        w.texts(&users[0]).await,
        vec!["a person will answer", "a person will answer"]
    );
    let mut second = w.texts(&users[1]).await;
    second.sort();
    assert_eq!(second, vec!["9-18", "a person will answer"]);
    for u in &users[2..] {
        assert_eq!(w.texts(u).await, vec!["a person will answer"]);
    }
    b.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_failed_batchsend_retries_every_reply_in_it_and_each_arrives_once(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (w, pool) = world(connect).await;
    let users = planned_not_sent(&w, &pool, "retry-", 4, &[], 4).await;

    // Every call fails with 1000 (retryable) until the faults are cleared.
    w.put("faults", json!({"error_rate": 1.0})).await;
    let b = sender_only(&w).await;
    eventually("the batch failed for all four", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'pending' AND last_error LIKE '%1000%'",
        )
        .await
            == 4
    })
    .await;
    // The first try was one batchsend for all four, and it failed.
    let first = w.calls("/message/batchsend.json").await[0].clone();
    assert_eq!(first["errcode"], 1000, "{first}");
    let body: serde_json::Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["touser"].as_array().map(Vec::len), Some(4), "{body}");
    w.put("faults", json!({})).await;
    all_sent(&pool, 4).await;
    for u in &users {
        assert_eq!(w.texts(u).await, vec!["a person will answer"], "{u}");
    }
    b.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn pushes_the_rules_decide_alone_are_decided_at_receipt_the_rest_by_workers_in_order(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // A daemon with no decide worker: only what is decided at receipt is
    // answered.
    let (w, pool) = world(connect).await;
    let mut receiving = w.settings();
    receiving.workers.decide = 0;
    let (a, _) = w.daemon(receiving, pool.clone()).await;
    w.add_account(a.addr).await;
    let users: Vec<String> = (0..10).map(|i| format!("quick{i}")).collect();
    for u in &users {
        w.say(u, "hours?").await;
    }
    eventually("every text answered without a decide worker", || async {
        all_answered(&w, &users).await
    })
    .await;
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"], "{u}");
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE status = 'done' AND processed_at IS NOT NULL"
        )
        .await,
        10,
        "stored decided, in the statement that stored them"
    );

    // A follow event needs the database (followers): it waits for a decide
    // worker, and so does every later push of its user (outbox invariant
    // 5), while other users are still answered at once.
    w.control(
        "follow",
        json!({"mcid": SHOP, "user": "newbie", "wait": true}),
    )
    .await;
    w.say("newbie", "hours?").await;
    w.say("quick0", "hours again").await;
    eventually("quick0 answered again", || async {
        w.inbox("quick0").await.len() == 2
    })
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE user_id = 'newbie' AND status = 'pending'"
        )
        .await,
        2,
        "the follow and the text after it wait for a decide worker"
    );
    assert!(w.inbox("newbie").await.is_empty());

    // A daemon with decide workers takes them, in the order written.
    let (b, _) = w.daemon(w.settings(), w.pool(None).await).await;
    eventually("newbie answered", || async {
        w.inbox("newbie").await.len() == 2
    })
    .await;
    assert_eq!(w.texts("newbie").await, ["welcome newbie", "9-18"]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM followers WHERE user_id = 'newbie'"
        )
        .await,
        1
    );
    // Each reply once.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbound_messages").await,
        13
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn replies_held_back_behind_an_earlier_one_go_as_soon_as_it_is_recorded(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // No poll to fall back on within the test: a reply planned behind an
    // earlier open reply of its user must be claimed when that one's
    // outcome is recorded (by user, `outbox::claim_next`).
    let (w, pool) = world(connect).await;
    let mut settings = w.settings();
    settings.workers.poll_ms = 600_000;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    w.add_account(d.addr).await;
    // Each call takes a while, so a user's later replies are planned while
    // the first is in flight.
    w.put("faults", json!({"latency_ms": 150})).await;
    let users: Vec<String> = (0..3).map(|i| format!("chatty{i}")).collect();
    for n in 0..5 {
        for u in &users {
            w.control(
                "message",
                json!({"mcid": SHOP, "user": u, "type": "text", "content": format!("hours {n}")}),
            )
            .await;
        }
    }
    eventually("every reply", || async {
        let mut all = true;
        for u in &users {
            all &= w.inbox(u).await.len() == 5;
        }
        all
    })
    .await;
    for u in &users {
        assert_eq!(w.texts(u).await, ["9-18"; 5], "{u}");
    }
    all_sent(&pool, 15).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE attempts = 1"
        )
        .await,
        15,
        "each sent once, at the first try"
    );
    // The later replies of each user waited as rows, in the order written.
    let held: i64 = count(
        &pool,
        "SELECT count(*) FROM outbound_messages o JOIN inbound_messages i ON i.id = o.inbound_id
          WHERE o.sent_at > i.received_at + interval '140 milliseconds'",
    )
    .await;
    assert!(held >= 3, "some replies were held back: {held}");
    d.shutdown().await;
}
