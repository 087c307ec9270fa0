//! What the document says, end to end: unlisted events (R14), accounts the
//! daemon does not host (R16), and the timestamp unit of calls (R2).

use std::time::Duration;

use pubbot::config::{Hosted, TimestampUnit};
use pubbot_e2e::{eventually, webhook_url, World, KEY, SECRET, SHOP};
use pubbot_sim::{AcceptedUnit, AppCredentials, PushConfig, RunningSim, SimConfig};
use secrecy::SecretString;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{count, import};

const RULES: &str = r#"
[[rule]]
name = "menu"
trigger = { on = "event", event = "CLICK" }
replies = [{ type = "text", text = "here is the menu" }]

[[rule]]
name = "fallback"
kind = "default"
replies = [{ type = "text", text = "a person will answer" }]
"#;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post_event(addr: std::net::SocketAddr, user: &str, event: &str, at: i64) -> u16 {
    let body = format!(
        "<xml><ToUserName><![CDATA[{SHOP}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{at}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event><EventKey><![CDATA[menu-1]]></EventKey></xml>"
    );
    let ts = now_secs().to_string();
    let nonce = rand::random::<u64>().to_string();
    let sig = pubbot_sim::signature::sign(SECRET, &nonce, &ts);
    reqwest::Client::new()
        .post(format!(
            "http://{addr}/webhook/{KEY}?rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={sig}"
        ))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn unlisted_events_are_kept_and_answered_only_by_a_rule_naming_them(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // R14.
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, RULES).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    assert_eq!(
        post_event(d.addr, "ann", "JOB_DONE", 1_700_000_000_001).await,
        200
    );
    assert_eq!(
        post_event(d.addr, "ann", "CLICK", 1_700_000_000_002).await,
        200
    );
    eventually("the click answered", || async {
        w.texts("ann").await == ["here is the menu"]
    })
    .await;
    eventually("both decided", || async {
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE status = 'done'",
        )
        .await
            == 2
    })
    .await;
    // The job notice got nothing, not even the default reply, and is kept
    // raw.
    assert_eq!(w.texts("ann").await, ["here is the menu"]);
    let raw: Vec<u8> = sqlx::query_scalar(
        "SELECT raw FROM inbound_messages WHERE message::text LIKE '%JOB_DONE%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("<EventKey>"));
    d.shutdown().await;
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_push_for_an_account_not_hosted_is_stored_and_not_answered(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // R16: the daemon hosts "shop" only; "other" routes to it too.
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    import(&pool, RULES).await;
    let (d, _) = w.daemon(w.settings(), pool.clone()).await;
    w.add_account(d.addr).await;
    let client =
        pubbot_api_client::Client::builder(KEY, SecretString::from(SECRET), w.sim.base_url())
            .build()
            .unwrap();
    client
        .add_account(&pubbot_api_client::NewAccount {
            mcid: "other".into(),
            profile: pubbot_api_client::AccountProfile {
                display_name: "Other".into(),
                portrait_url: "http://x/p.png".into(),
                ui_type: 0,
                introduction: "not ours".into(),
            },
            is_follow: false,
            route_url: webhook_url(d.addr),
        })
        .await
        .unwrap();
    for (mcid, user) in [("other", "olga"), ("other", "olga2"), (SHOP, "sam")] {
        let r = w
            .control(
                "message",
                json!({"mcid": mcid, "user": user, "type": "text", "content": "hi", "wait": true}),
            )
            .await;
        assert_eq!(
            r["pushes"][0]["state"], "delivered",
            "stored and answered 200"
        );
    }
    eventually("the hosted account answered", || async {
        w.texts("sam").await == ["a person will answer"]
    })
    .await;
    eventually("all decided", || async {
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE status = 'done'",
        )
        .await
            == 3
    })
    .await;
    assert!(w.inbox("olga").await.is_empty() && w.inbox("olga2").await.is_empty());
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbound_messages WHERE mcid = 'other'"
        )
        .await,
        2,
        "kept"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE mcid = 'other'"
        )
        .await,
        0,
        "not answered"
    );
    d.shutdown().await;

    // `accounts = "*"` hosts every account of the app key.
    let mut settings = w.settings();
    settings.apps[0].accounts = Hosted::Every;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    client
        .set_route_url(&"other".into(), &webhook_url(d.addr))
        .await
        .unwrap();
    w.control(
        "message",
        json!({"mcid": "other", "user": "olga3", "type": "text", "content": "hi", "wait": true}),
    )
    .await;
    eventually("answered under accounts = *", || async {
        w.texts("olga3").await == ["a person will answer"]
    })
    .await;
    d.shutdown().await;
}

async fn unit_world(connect: PgConnectOptions, accepted: AcceptedUnit) -> World {
    let sim = RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        timestamp_unit: accepted,
        push: PushConfig {
            timeout: Duration::from_secs(1),
            retry_delay: Duration::from_millis(300),
            ..PushConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    World {
        sim,
        http: reqwest::Client::new(),
        connect,
    }
}

async fn reply_with_unit(
    connect: PgConnectOptions,
    accepted: AcceptedUnit,
    unit: TimestampUnit,
) -> (Vec<String>, i64) {
    let w = unit_world(connect, accepted).await;
    let pool = w.pool(None).await;
    import(&pool, RULES).await;
    let mut settings = w.settings();
    settings.apps[0].timestamp_unit = unit;
    let (d, _) = w.daemon(settings, pool.clone()).await;
    // The account is created with seconds or milliseconds, as the sim wants.
    let client =
        pubbot_api_client::Client::builder(KEY, SecretString::from(SECRET), w.sim.base_url())
            .timestamp_unit(match accepted {
                AcceptedUnit::Milliseconds => pubbot_api_client::TimestampUnit::Milliseconds,
                _ => pubbot_api_client::TimestampUnit::Seconds,
            })
            .build()
            .unwrap();
    client
        .add_account(&pubbot_api_client::NewAccount {
            mcid: SHOP.into(),
            profile: pubbot_api_client::AccountProfile {
                display_name: "Shop".into(),
                portrait_url: "http://x/p.png".into(),
                ui_type: 0,
                introduction: "e2e".into(),
            },
            is_follow: false,
            route_url: webhook_url(d.addr),
        })
        .await
        .unwrap();
    w.say("uma", "hello").await;
    eventually("the reply settled", || async {
        count(
            &pool,
            "SELECT count(*) FROM outbound_messages WHERE status IN ('sent', 'failed')",
        )
        .await
            == 1
    })
    .await;
    let failed = count(
        &pool,
        "SELECT count(*) FROM outbound_messages WHERE status = 'failed' AND last_error LIKE '%401%'",
    )
    .await;
    let texts = w.texts("uma").await;
    d.shutdown().await;
    (texts, failed)
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_platform_that_insists_on_milliseconds_is_served_by_setting_the_unit(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // R2: the unit is the operator's to set, per app.
    let (texts, failed) = reply_with_unit(
        connect.clone(),
        AcceptedUnit::Milliseconds,
        TimestampUnit::Seconds,
    )
    .await;
    assert!(texts.is_empty());
    assert_eq!(failed, 1, "seconds are refused (401), permanently");
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn milliseconds_reach_a_platform_that_wants_milliseconds(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (texts, failed) = reply_with_unit(
        connect,
        AcceptedUnit::Milliseconds,
        TimestampUnit::Milliseconds,
    )
    .await;
    assert_eq!(
        (texts, failed),
        (vec!["a person will answer".to_owned()], 0)
    );
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn seconds_reach_a_platform_that_wants_seconds(_: PgPoolOptions, connect: PgConnectOptions) {
    let (texts, failed) =
        reply_with_unit(connect, AcceptedUnit::Seconds, TimestampUnit::Seconds).await;
    assert_eq!(
        (texts, failed),
        (vec!["a person will answer".to_owned()], 0)
    );
}

#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn milliseconds_are_refused_by_a_platform_that_wants_seconds(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (texts, failed) =
        reply_with_unit(connect, AcceptedUnit::Seconds, TimestampUnit::Milliseconds).await;
    assert!(texts.is_empty());
    assert_eq!(failed, 1);
}
