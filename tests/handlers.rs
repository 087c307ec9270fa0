//! Handler bots and conversation state end to end: a test handler server
//! over real sockets, the simulator, real daemons and PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use pubbot::pipeline::handlers::{self, HandlerConfig};
use pubbot_e2e::{eventually, webhook_url, World, SHOP};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{count, import};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the test handler does with a call.
#[derive(Clone, Debug)]
enum Mode {
    /// Answers with these replies (and state changes).
    Answer(Value),
    /// Sleeps past the caller's timeout for the first N calls, then answers.
    SlowThen(usize, Value),
    /// Answers 500.
    Down,
}

#[derive(Clone)]
struct Hook {
    mode: Arc<Mutex<Mode>>,
    /// (webhook-id, signature valid, body) of every call.
    calls: Arc<Mutex<Vec<(String, bool, Value)>>>,
}

async fn receive(State(h): State<Hook>, headers: HeaderMap, body: String) -> (StatusCode, String) {
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let sig = headers["webhook-signature"].to_str().unwrap().to_owned();
    let valid = handlers::sign(SECRET, &id, ts, body.as_bytes()) == sig;
    let n = {
        let mut calls = h.calls.lock().unwrap();
        calls.push((
            id,
            valid,
            serde_json::from_str(&body).unwrap_or(Value::Null),
        ));
        calls.len()
    };
    let mode = h.mode.lock().unwrap().clone();
    match mode {
        Mode::Answer(v) => (StatusCode::OK, v.to_string()),
        Mode::SlowThen(slow, v) => {
            if n <= slow {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            (StatusCode::OK, v.to_string())
        }
        Mode::Down => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

async fn hook(mode: Mode) -> (String, Hook) {
    let h = Hook {
        mode: Arc::new(Mutex::new(mode)),
        calls: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, h)
}

async fn add_handler(pool: &PgPool, url: &str, timeout_ms: u64) {
    handlers::add(
        pool,
        &HandlerConfig {
            name: "orders".into(),
            url: url.into(),
            secret: SECRET.to_owned().into(),
            timeout: Duration::from_millis(timeout_ms),
            concurrency: 4,
        },
    )
    .await
    .unwrap();
}

const HANDLER_RULES: &str = r#"
[[rule]]
name = "order-status"
priority = 10
trigger = { keywords = [{ pattern = "^order (?P<id>\\d+)$", match = "regex" }] }
replies = [{ type = "text", text = "Looking up order {{ named.id }}..." }]
handler = "orders"
fallback = [{ type = "text", text = "Sorry, the order desk is away." }]

[[rule]]
name = "fallback"
kind = "default"
replies = [{ type = "text", text = "echo {{ text }}" }]
"#;

fn settings(w: &World) -> pubbot::config::Settings {
    let mut s = w.settings();
    s.handlers.backoff_ms = 50;
    s.handlers.max_attempts = 3;
    s
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_handlers_replies_take_its_place_in_the_conversation(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, h) = hook(Mode::Answer(json!({
        "replies": [{"type": "text", "text": "Order 42: shipped"}, {"type": "text", "text": "Anything else?"}],
        "state": {"set": {"last_order": "42"}}
    })))
    .await;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, HANDLER_RULES).await;
    add_handler(&pool, &url, 1000).await;
    let (d, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("hana", "order 42").await;
    w.say("hana", "thanks").await;
    eventually("all four replies", || async {
        w.texts("hana").await.len() == 4
    })
    .await;
    assert_eq!(
        w.texts("hana").await,
        [
            "Looking up order 42...",
            "Order 42: shipped",
            "Anything else?",
            "echo thanks"
        ],
        "in the order of the conversation"
    );
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (id, valid, event) = &calls[0];
    assert!(valid, "Standard Webhooks signature");
    assert!(id.starts_with("push-"));
    assert_eq!(event["user"], "hana");
    assert_eq!(event["named"]["id"], "42");
    assert_eq!(event["message"]["body"]["content"], "order 42");
    let state: Value =
        sqlx::query_scalar("SELECT state::json FROM conversation_state WHERE user_id = 'hana'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state["last_order"], "42");
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_handler_timing_out_twice_is_called_three_times_under_one_event_id(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, h) = hook(Mode::SlowThen(
        2,
        json!({"replies": [{"type": "text", "text": "found it"}]}),
    ))
    .await;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, HANDLER_RULES).await;
    add_handler(&pool, &url, 300).await;
    let (d, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("tim", "order 7").await;
    eventually("the handler's reply", || async {
        w.texts("tim").await.contains(&"found it".to_owned())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = h.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.0 == calls[0].0),
        "one event id: {calls:?}"
    );
    assert_eq!(
        w.texts("tim").await,
        ["Looking up order 7...", "found it"],
        "sent once, no fallback"
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_handler_that_is_down_gets_the_fallback_and_its_breaker_opens_then_closes(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, h) = hook(Mode::Down).await;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, HANDLER_RULES).await;
    add_handler(&pool, &url, 500).await;
    let mut s = settings(&w);
    s.handlers.max_attempts = 1;
    s.handlers.breaker_failures = 2;
    s.handlers.breaker_open_secs = 1;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    let fallback = "Sorry, the order desk is away.".to_owned();
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        w.say(user, &format!("order {i}")).await;
        eventually("the fallback", || async {
            w.texts(user).await.contains(&fallback)
        })
        .await;
    }
    // Two failures opened the breaker: the third push was not called.
    assert_eq!(h.calls.lock().unwrap().len(), 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbound_messages WHERE handler IS NOT NULL AND status = 'sent' AND last_error LIKE 'handler failed, fallback sent: %breaker open%'").await,
        1,
        "the call is settled as done with its fallback, and says why"
    );
    // Issue 27 item 3: the user got the fallback, so no failed reply is
    // listed for them.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status = 'failed'"
        )
        .await,
        0
    );
    // It recovers; after the open period one call goes through and closes it.
    *h.mode.lock().unwrap() = Mode::Answer(json!({"replies": [{"type": "text", "text": "back"}]}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.say("u4", "order 4").await;
    eventually("answered again", || async {
        w.texts("u4").await.contains(&"back".to_owned())
    })
    .await;
    w.say("u5", "order 5").await;
    eventually("and again", || async {
        w.texts("u5").await.contains(&"back".to_owned())
    })
    .await;
    assert_eq!(h.calls.lock().unwrap().len(), 4);
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn an_invalid_handler_answer_gets_the_fallback_and_nothing_malformed_is_sent(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, h) = hook(Mode::Answer(
        json!({"replies": [{"type": "text", "text": "x".repeat(2001)}]}),
    ))
    .await;
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, HANDLER_RULES).await;
    add_handler(&pool, &url, 500).await;
    let (d, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ivy", "order 1").await;
    eventually("the fallback", || async { w.texts("ivy").await.len() == 2 }).await;
    *h.mode.lock().unwrap() =
        Mode::Answer(json!({"replies": [{"type": "video", "url": "http://x"}]}));
    w.say("ivy", "order 2").await;
    eventually("the fallback again", || async {
        w.texts("ivy").await.len() == 4
    })
    .await;
    assert_eq!(
        w.texts("ivy").await,
        [
            "Looking up order 1...",
            "Sorry, the order desk is away.",
            "Looking up order 2...",
            "Sorry, the order desk is away."
        ]
    );
    let calls = w.calls("/message/send.json").await;
    assert!(
        calls.iter().all(|c| c["errcode"] == 0),
        "nothing malformed reached the platform"
    );
    assert_eq!(
        h.calls.lock().unwrap().len(),
        2,
        "an invalid answer is not retried"
    );
    d.shutdown().await;
}

const FLOW: &str = r#"
[[rule]]
name = "start"
trigger = { keywords = [{ pattern = "tea", match = "equals" }] }
set_state = { step = "ask_size" }
replies = [{ type = "text", text = "Which size?" }]

[[rule]]
name = "size"
priority = 10
when = { state = { step = "ask_size" } }
set_state = { step = "ask_milk" }
replies = [{ type = "text", text = "Size {{ text }}. Milk?" }]

[[rule]]
name = "milk"
priority = 10
when = { state = { step = "ask_milk" } }
set_state = { step = "done" }
replies = [{ type = "text", text = "Milk: {{ text }}. Coming up! ({{ state.step }} before)" }]

[[rule]]
name = "fallback"
kind = "default"
replies = [{ type = "text", text = "say tea" }]
"#;

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_three_step_flow_across_two_replicas_with_a_duplicate_push_ends_right(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, FLOW).await;
    let (a, _) = w.daemon(settings(&w), pool.clone()).await;
    let (b, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(a.addr).await;
    let routes = json!([webhook_url(a.addr), webhook_url(b.addr)]);
    let say = |text: &'static str, duplicates: u32| {
        let routes = routes.clone();
        let w = &w;
        async move {
            w.control(
                "message",
                json!({"mcid": SHOP, "user": "tess", "type": "text", "content": text,
                       "wait": true, "duplicates": duplicates, "route_urls": routes}),
            )
            .await
        }
    };
    say("tea", 0).await;
    say("large", 1).await; // a copy to each replica: one step
    say("oat", 0).await;
    eventually("three replies", || async {
        w.texts("tess").await.len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.texts("tess").await,
        [
            "Which size?",
            "Size large. Milk?",
            "Milk: oat. Coming up! (ask_milk before)"
        ]
    );
    let state: Value =
        sqlx::query_scalar("SELECT state::json FROM conversation_state WHERE user_id = 'tess'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state["step"], "done");
    a.shutdown().await;
    b.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn state_expires_after_its_ttl(_: PgPoolOptions, connect: PgConnectOptions) {
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, FLOW).await;
    let mut s = settings(&w);
    s.state.ttl_secs = 1;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ed", "tea").await;
    eventually("asked", || async { w.texts("ed").await.len() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.say("ed", "large").await;
    eventually("answered", || async { w.texts("ed").await.len() == 2 }).await;
    assert_eq!(
        w.texts("ed").await,
        ["Which size?", "say tea"],
        "the step was forgotten"
    );
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_example_handler_bot_runs_its_three_step_flow(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // examples/order-status: a Python handler and its rules, as README runs
    // them.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Ok(mut bot) = tokio::process::Command::new("python3")
        .arg(format!("{root}/examples/order-status/handler.py"))
        .arg(port.to_string())
        .arg(SECRET)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("python3 not found: the example handler was not run");
        return;
    };
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(
        &pool,
        &std::fs::read_to_string(format!("{root}/examples/order-status/rules.toml")).unwrap(),
    )
    .await;
    import(&pool, "[[rule]]\nname = \"hi\"\nkind = \"default\"\nreplies = [{ type = \"text\", text = \"hi\" }]\n").await;
    add_handler(&pool, &format!("http://127.0.0.1:{port}/hook"), 2000).await;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (d, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(d.addr).await;
    for (text, n) in [("order status", 1), ("42", 3), ("no", 4)] {
        w.say("olly", text).await;
        eventually(text, || async { w.texts("olly").await.len() >= n }).await;
    }
    assert_eq!(
        w.texts("olly").await,
        [
            "Which order number?",
            "Order 42 is shipped, arriving Friday.",
            "Anything else? (yes/no)",
            "Goodbye!"
        ]
    );
    d.shutdown().await;
    let _ = bot.kill().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn the_example_menu_flow_runs_on_state_alone(_: PgPoolOptions, connect: PgConnectOptions) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(
        &pool,
        &std::fs::read_to_string(format!("{root}/examples/menu-flow.toml")).unwrap(),
    )
    .await;
    let (d, _) = w.daemon(settings(&w), pool.clone()).await;
    w.add_account(d.addr).await;
    for (text, n) in [("menu", 1), ("3", 2), ("2", 3), ("2", 3)] {
        w.say("mo", text).await;
        eventually(text, || async { w.texts("mo").await.len() >= n }).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.texts("mo").await,
        [
            "Reply 1 for opening hours, 2 for our address.",
            "Please reply 1 or 2 (you chose 3).",
            "1 Harbour Road."
        ],
        "the last \"2\" is outside the flow: no rule answers it"
    );
    d.shutdown().await;
}
