//! A message's trip through the daemon's JSON logs, in a test binary of its
//! own: it captures the log lines with a subscriber for its thread
//! (`tracing::subscriber::set_default`), and tracing's callsite cache is
//! shared by the whole process, so beside other tests that capture at
//! other levels on other threads some lines went missing (seen twice in a
//! row in CI, where every test of a binary runs in one process).

use pubbot_e2e::{Captured, World, ECHO};
use pubbot_rules::{Options, RuleFile};
use sqlx::postgres::PgConnectOptions;

/// Issue 23 item 8: ingest, decide and send each log a message's lines in
/// one span, `message` with its trace id, visible in the JSON logs at
/// debug (this test's runtime is one thread, so the subscriber set here
/// sees every task of the daemon).
#[sqlx::test(migrator = "pubbot::db::MIGRATOR")]
async fn a_messages_trip_is_one_span_in_the_json_logs(
    _: sqlx::pool::PoolOptions<sqlx::Postgres>,
    connect: PgConnectOptions,
) {
    let (logs, _default) = Captured::start("debug,sqlx=warn,hyper=warn,reqwest=warn");
    let w = World::new(connect).await;
    let pool = w.pool(None).await;
    pubbot::pipeline::rules::import(
        &pool,
        RuleFile::from_toml(ECHO).unwrap(),
        &Options::default(),
        false,
    )
    .await
    .unwrap();
    let mut s = w.settings();
    // Through a decide worker, so all three stages see the message.
    s.ingest.decide_at_receipt = false;
    let (d, _) = w.daemon(s, pool.clone()).await;
    w.add_account(d.addr).await;
    w.say("ann", "hours").await;
    pubbot_e2e::eventually("ann answered", || async {
        w.texts("ann").await == ["re: hours"]
    })
    .await;
    let trace: String = sqlx::query_scalar("SELECT trace_id FROM inbound_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    d.shutdown().await;
    let trip: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l["span"]["name"] == "message" && l["span"]["trace_id"] == trace.as_str())
        .filter_map(|l| l["message"].as_str().map(str::to_owned))
        .collect();
    for step in ["push received", "decided", "reply sent"] {
        assert!(
            trip.iter().any(|m| m == step),
            "{step:?} not logged in the message's span: {trip:?}"
        );
    }
}
