//! Issue 27: what an operator hit by hand, each with the test that failed
//! before its fix.

use pubbot_e2e::{eventually, scrape, World};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{count, import};
use pubbot_e2e::Captured;

const HOURS: &str = r#"
[[rule]]
name = "hours"
trigger = { keywords = [{ pattern = "hours" }] }
replies = [{ type = "text", text = "9-18" }]
"#;

/// Item 2: a reply whose every try fails is counted and logged as one that
/// gave up — not as one that "will be retried".
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_reply_that_fails_for_good_is_counted_and_logged_as_given_up(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (logs, _default) = Captured::start("info,sqlx=warn");
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, HOURS).await;
    let mut s = w.settings();
    s.sender.max_attempts = 2;
    s.sender.backoff_min_ms = 50;
    s.sender.backoff_max_ms = 100;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    // Every call answered 1000 (retryable).
    w.put("faults", json!({"error_rate": 1.0})).await;
    w.say("ann", "hours").await;
    eventually("the reply failed", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'",
        )
        .await
            == 1
    })
    .await;
    let trace: String = sqlx::query_scalar("SELECT trace_id FROM outbound_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let metrics = scrape(d.admin_addr).await;
    d.shutdown().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pubbot_outbound_settled_total")
                && l.contains("outcome=\"failed\"")),
        "the last try is counted as failed"
    );
    let lines = logs.lines();
    let gave_up: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reply gave up"))
        })
        .collect();
    assert_eq!(gave_up.len(), 1, "one line says the reply gave up");
    assert_eq!(gave_up[0]["level"], "WARN");
    assert_eq!(gave_up[0]["trace_id"], trace.as_str());
    let retried = lines
        .iter()
        .filter(|l| l["message"] == "reply will be retried")
        .count();
    assert_eq!(
        retried, 1,
        "only the first of two tries says it will be retried"
    );
}

const ORDERS: &str = r#"
[[rule]]
name = "order-status"
trigger = { keywords = [{ pattern = "order" }] }
replies = [{ type = "text", text = "Looking it up..." }]
handler = "orders"
fallback = [{ type = "text", text = "The order desk is away." }]
"#;

/// Items 3 and 8: a handler that cannot be reached. The user gets the
/// fallback, so the call is not listed as a failed reply; every log line of
/// the call carries the push's trace id and the real cause ("connection
/// refused"), the last one at WARN; fallbacks are counted.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_handler_that_cannot_be_reached_is_logged_with_its_cause_and_its_fallback_counted(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (logs, _default) = Captured::start("info,sqlx=warn");
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, ORDERS).await;
    // Nothing listens on port 1.
    pubbot::pipeline::handlers::add(
        &pool,
        &pubbot::pipeline::handlers::HandlerConfig {
            name: "orders".into(),
            url: "http://127.0.0.1:1/hook".into(),
            secret: "s".to_owned().into(),
            timeout: std::time::Duration::from_millis(500),
            concurrency: 2,
        },
    )
    .await
    .unwrap();
    let mut s = w.settings();
    s.handlers.max_attempts = 2;
    s.handlers.backoff_ms = 20;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ann", "order 7").await;
    eventually("the fallback", || async {
        w.texts("ann")
            .await
            .contains(&"The order desk is away.".to_owned())
    })
    .await;
    let trace: String = sqlx::query_scalar("SELECT trace_id FROM inbound_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let metrics = scrape(d.admin_addr).await;
    d.shutdown().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'"
        )
        .await,
        0,
        "the user got the fallback: no failed reply"
    );
    let why: String =
        sqlx::query_scalar("SELECT last_error FROM outbound_messages WHERE handler IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(why.starts_with("handler failed, fallback sent: "), "{why}");
    let lines = logs.lines();
    let tries: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "handler call failed")
        .collect();
    assert_eq!(tries.len(), 2);
    for t in &tries {
        assert_eq!(t["trace_id"], trace.as_str());
        assert!(
            t["error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("connection refused"),
            "the cause is kept: {t}"
        );
    }
    let last: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "handler failed; its fallback goes out")
        .collect();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["level"], "WARN");
    assert_eq!(last[0]["trace_id"], trace.as_str());
    assert!(metrics.contains("pubbot_handler_fallbacks_total{handler=\"orders\"}"));
}

/// Item 1: `menu apply` with the platform failing calls part-way. Each
/// call's success is recorded as it happens, retryable answers of
/// idempotent calls are retried, a delete answered "does not exist" counts
/// as done, and applying again after any partial failure converges on the
/// file.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn menu_apply_converges_after_platform_errors_part_way(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use super::operator::{expected, menu, platform_menu};
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    w.add_account("127.0.0.1:9".parse().unwrap()).await;
    // As the CLI builds it (retrying idempotent calls).
    let c = pubbot_api_client::Client::builder(
        pubbot_e2e::KEY,
        secrecy::SecretString::from(pubbot_e2e::SECRET),
        w.sim.base_url(),
    )
    .retry(pubbot_api_client::RetryPolicy {
        min_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
        ..pubbot_api_client::RetryPolicy::default()
    })
    .build()
    .unwrap();
    let shop = pubbot_e2e::SHOP;
    let key = pubbot_e2e::KEY;
    let first = menu(
        "[[item]]\nname = \"Hours\"\nurl = \"http://x/h\"\n\
         [[item]]\nname = \"More\"\n[[item.children]]\nname = \"Map\"\nurl = \"http://x/m\"\n\
         [[item.children]]\nname = \"Call\"\nurl = \"http://x/c\"\n\
         [[item]]\nname = \"Shop\"\n[[item.children]]\nname = \"New\"\nurl = \"http://x/n\"\n",
    );
    pubbot::account::apply_menu(&pool, &c, key, shop, &first, false)
        .await
        .unwrap();
    assert_eq!(platform_menu(&w).await, expected(&first));

    // Every item changes: deletes, then adds, then the order, under a
    // platform that answers 1000 to most calls.
    let second = menu(
        "[[item]]\nname = \"Deals\"\nurl = \"http://x/d\"\n\
         [[item]]\nname = \"About\"\n[[item.children]]\nname = \"Team\"\nurl = \"http://x/t\"\n\
         [[item.children]]\nname = \"Jobs\"\nurl = \"http://x/j\"\n\
         [[item]]\nname = \"Hours\"\nurl = \"http://x/h2\"\n",
    );
    // The first apply at 95% (with the client's retries, some call of it
    // fails all its tries: the failure part-way is sure, not left to
    // chance), the rest at 60%.
    w.put("faults", json!({"error_rate": 0.95})).await;
    let mut failed = Vec::new();
    let mut done = false;
    for k in 0..60 {
        if k == 1 {
            w.put("faults", json!({"error_rate": 0.6})).await;
        }
        match pubbot::account::apply_menu(&pool, &c, key, shop, &second, false).await {
            Ok(_) => {
                done = true;
                break;
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    w.put("faults", json!({"error_rate": 0.0})).await;
    assert!(done, "an apply got through: {failed:#?}");
    assert!(
        !failed.is_empty(),
        "the platform failed some applies part-way"
    );
    assert!(
        failed
            .iter()
            .all(|e| e.contains("apply again to go on") || e.contains("ordering")),
        "{failed:#?}"
    );
    assert_eq!(platform_menu(&w).await, expected(&second), "converged");
    let plan = pubbot::account::apply_menu(&pool, &c, key, shop, &second, false)
        .await
        .unwrap();
    assert!(plan.is_empty(), "nothing left to do: {plan:?}");

    // Deletes whose answers are lost (the platform did them): the retry is
    // told "does not exist", which counts as done.
    let third = menu("[[item]]\nname = \"Deals\"\nurl = \"http://x/d\"\n");
    w.put("faults", json!({"drop_rate": 1.0})).await;
    let r = pubbot::account::apply_menu(&pool, &c, key, shop, &third, false).await;
    w.put("faults", json!({"drop_rate": 0.0})).await;
    if r.is_err() {
        // The order call (idempotent) may have run out of tries; again.
        pubbot::account::apply_menu(&pool, &c, key, shop, &third, false)
            .await
            .unwrap();
    }
    assert_eq!(platform_menu(&w).await, expected(&third));
    let plan = pubbot::account::apply_menu(&pool, &c, key, shop, &third, false)
        .await
        .unwrap();
    assert!(plan.is_empty(), "{plan:?}");
}

/// Item 6: the conversation view — replies in the order they go out, the
/// user's state as the next push sees it, and why a push got no reply.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_conversation_says_why_a_push_got_no_reply_and_shows_the_state(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use pubbot::admin::inspect;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    let rules = format!(
        "{}\n[[rule]]\nname = \"info\"\ntrigger = {{ keywords = [{{ pattern = \"info\", match = \"equals\" }}] }}\n\
         replies = [{{ type = \"text\", text = \"first\" }}, {{ type = \"text\", text = \"second\" }}, {{ type = \"text\", text = \"third\" }}]\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/menu-flow.toml")).unwrap()
    );
    import(&pool, &rules).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ann", "info").await;
    w.say("ann", "zzz").await;
    w.control(
        "follow",
        json!({"mcid": pubbot_e2e::SHOP, "user": "ann", "wait": true}),
    )
    .await;
    w.say("ann", "menu").await;
    eventually("every push decided", || async {
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE status = 'done'",
        )
        .await
            == 4
    })
    .await;
    let conv = inspect::conversation(&pool, "ann", None, 10).await.unwrap();
    assert_eq!(conv.len(), 4);
    let texts: Vec<&str> = conv[0]
        .replies
        .iter()
        .map(|r| r.payload["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["first", "second", "third"],
        "in the order they go out"
    );
    let options = pubbot_rules::Options::default();
    let set = pubbot_rules::RuleSet::compile(
        pubbot::pipeline::rules::load(&pool).await.unwrap(),
        &options,
    )
    .unwrap();
    assert!(conv[1].replies.is_empty());
    assert_eq!(
        inspect::why_no_reply(&conv[1], &set, true),
        "no rule matches it (with the rules in force now)"
    );
    assert!(conv[2].replies.is_empty());
    assert!(
        inspect::why_no_reply(&conv[2], &set, true).contains("event subscribe"),
        "{}",
        inspect::why_no_reply(&conv[2], &set, true)
    );
    assert!(inspect::why_no_reply(&conv[1], &set, false).contains("not hosted"));
    // What each step did to the state.
    assert_eq!(
        conv[3].state_change,
        Some(json!({"set": {"menu": "main"}, "clear": []}))
    );
    assert_eq!(conv[0].state_change, None);
    let states = inspect::states(&pool, "ann", None).await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].state, json!({"menu": "main"}));
    d.shutdown().await;
}

/// Item 3: a handler call that failed with no fallback is a failed reply;
/// `outbound retry` calls the handler again with the same event id, and
/// its answer goes out.
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_failed_handler_call_is_retried_with_its_event_id(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use axum::routing::post;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(
        &pool,
        "[[rule]]\nname = \"orders\"\ntrigger = { keywords = [{ pattern = \"order\" }] }\nhandler = \"orders\"\n",
    )
    .await;
    let add = |url: String| {
        let pool = pool.clone();
        async move {
            pubbot::pipeline::handlers::add(
                &pool,
                &pubbot::pipeline::handlers::HandlerConfig {
                    name: "orders".into(),
                    url,
                    secret: "s".to_owned().into(),
                    timeout: std::time::Duration::from_millis(500),
                    concurrency: 2,
                },
            )
            .await
            .unwrap();
        }
    };
    add("http://127.0.0.1:1/hook".into()).await;
    let mut s = w.settings();
    s.handlers.max_attempts = 1;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ann", "order 7").await;
    eventually("the call failed", || async {
        count(&pool, "SELECT count(*) FROM outbound_messages WHERE status = 'failed' AND handler IS NOT NULL").await == 1
    })
    .await;
    let push: i64 = sqlx::query_scalar("SELECT id FROM inbound_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let reply: i64 =
        sqlx::query_scalar("SELECT id FROM outbound_messages WHERE handler IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    // The handler is back, and says which event it was called with.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = std::sync::Arc::clone(&seen);
    let hook = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let record = std::sync::Arc::clone(&record);
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                record.lock().unwrap().push(id);
                axum::Json(json!({"replies": [{"type": "text", "text": "Order 7: shipped"}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    add(url).await;
    // The daemon reads its handlers at most every 5 s.
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    let r = pubbot::admin::inspect::retry(&pool, &pubbot_rules::Options::default(), &[reply])
        .await
        .unwrap();
    assert_eq!(r[0].outcome.to_string(), "retried");
    eventually("the answer went out", || async {
        w.texts("ann").await == ["Order 7: shipped"]
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        [format!("push-{push}")],
        "the same event id"
    );
    d.shutdown().await;
}
