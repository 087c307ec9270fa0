//! Issue 27: what an operator hit by hand, each with the test that failed
//! before its fix.

use pubbot_e2e::{eventually, World};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{count, import, Captured};

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
    let logs = Captured::default();
    let writer = logs.clone();
    let _default = tracing::subscriber::set_default(
        pubbot::telemetry::json(
            tracing_subscriber::EnvFilter::new("info,sqlx=warn"),
            move || writer.clone(),
        )
        .finish(),
    );
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
    let metrics = reqwest::get(format!("http://{}/metrics", d.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
