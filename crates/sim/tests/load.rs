//! The load generator's report over real sockets: what it says of pushes
//! the daemon never answered.

use std::time::Duration;

use pubbot_sim::load::{run, LoadConfig};
use pubbot_sim::{AppCredentials, PushConfig, SimConfig};

/// One app, the platform's API on a port of its own, and 20 pushes/s from
/// 5 users to `route` for `duration`.
async fn setup(
    push: PushConfig,
    route: String,
    duration: Duration,
    grace: Duration,
) -> (SimConfig, tokio::net::TcpListener, LoadConfig) {
    let config = SimConfig {
        apps: vec![AppCredentials {
            key: "k".into(),
            secret: "s".into(),
        }],
        push,
        ..SimConfig::default()
    };
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let load = LoadConfig {
        mcid: "mc".into(),
        route_url: route,
        rate: Some(20),
        concurrency: 4,
        duration,
        users: 5,
        unique_users: false,
        grace,
    };
    (config, api, load)
}

#[tokio::test]
async fn pushes_no_daemon_answered_are_reported_by_the_second_they_were_made() {
    // A route url nothing listens on: every try is a connect error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = format!("http://{}/webhook", closed.local_addr().unwrap());
    drop(closed);
    let push = PushConfig {
        retry_delay: Duration::from_millis(50),
        tries: 3,
        ..PushConfig::default()
    };
    let (config, api, load) =
        setup(push, route, Duration::from_secs(2), Duration::from_secs(10)).await;
    let report = run(config, api, load).await.unwrap();
    assert!(report.pushes >= 20, "{report}");
    assert_eq!(report.failed, report.pushes, "{report}");
    assert_eq!(report.acknowledged, 0);
    // Every try of every push, by outcome.
    assert_eq!(
        report.failed_tries.get("connect_error").copied(),
        Some(3 * report.pushes),
        "{report}"
    );
    // Pushed over two seconds from the first: seconds 0 and 1 (perhaps 2),
    // one span, every failed push in it.
    let seconds: Vec<u64> = report.failed_by_second.keys().copied().collect();
    assert_eq!(seconds.first(), Some(&0), "{report}");
    assert!(seconds.iter().all(|s| *s <= 2), "{seconds:?}");
    assert_eq!(report.failed_by_second.values().sum::<u64>(), report.pushes);
    let spans = report.failed_spans(2);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].2, report.pushes);
    let text = report.to_string();
    assert!(
        text.contains("failed pushes by second pushed (from the first push): 0-")
            && text.contains("their tries: connect_error"),
        "{text}"
    );
}

#[tokio::test]
async fn a_push_answered_only_at_a_retry_is_not_counted_at_its_first_try() {
    // A daemon that holds its first two requests past the platform's
    // timeout and answers every other at once, behind one platform
    // connection: the two held tries time out with no answer, the push
    // made meanwhile finds the connection busy for longer than its own
    // timeout, and every push is acknowledged in the end.
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let seen = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&seen);
    let daemon = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                "success"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, daemon).await.unwrap() });
    let push = PushConfig {
        timeout: Duration::from_millis(300),
        retry_delay: Duration::from_millis(20),
        tries: 4,
        connections: 1,
        ..PushConfig::default()
    };
    let (config, api, load) =
        setup(push, route, Duration::from_secs(1), Duration::from_secs(1)).await;
    let report = run(config, api, load).await.unwrap();
    assert_eq!(report.acknowledged, report.pushes, "{report}");
    let timeouts = report.tries.get("timeout").copied().unwrap_or(0);
    assert!(timeouts >= 3, "{report}");
    assert!(report.no_connection >= 1, "{report}");
    assert!(report.no_connection < timeouts, "{report}");
    // Each timed-out try was a push's; such a push was answered later.
    assert!(report.first_try < report.acknowledged, "{report}");
    assert!(
        report.first_try >= report.acknowledged - timeouts,
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("{} at their first try", report.first_try))
            && text.contains("found no connection free"),
        "{text}"
    );
}
