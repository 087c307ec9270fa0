//! `pubbot-sim message`: a user writes from the command line to a running
//! simulator; the push reaches the account's route, and the command prints
//! its fate and the replies.

use std::time::Duration;

use axum::routing::post;
use pubbot_sim::{AppCredentials, PushConfig, RunningSim, SimConfig};
use serde_json::{json, Value};

const KEY: &str = "cli-app";
const SECRET: &str = "cli-secret";

#[tokio::test]
async fn a_user_writes_from_the_command_line_and_sees_the_reply() {
    let sim = RunningSim::start(SimConfig {
        apps: vec![AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        push: PushConfig {
            timeout: Duration::from_secs(2),
            ..PushConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // A bot that answers every push by sending "got it" through the
    // simulator's own send endpoint.
    let base = sim.base_url();
    let bot = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let base = base.clone();
            async move {
                let user = body
                    .split("<FromUserName><![CDATA[")
                    .nth(1)
                    .and_then(|r| r.split("]]>").next())
                    .unwrap_or("")
                    .to_owned();
                tokio::spawn(async move {
                    let nonce = rand::random::<u32>().to_string();
                    let ts = chrono::Utc::now().timestamp().to_string();
                    let sig = pubbot_sim::signature::sign(SECRET, &nonce, &ts);
                    let _ = reqwest::Client::new()
                        .post(format!("{base}/message/send.json"))
                        .header("RC-App-Key", KEY)
                        .header("RC-Nonce", nonce)
                        .header("RC-Timestamp", ts)
                        .header("RC-Signature", sig)
                        .json(&json!({"fromuser": format!("shop@{KEY}"), "touser": format!("{user}@{KEY}"),
                                      "msgtype": "text", "text": {"content": "got it"}}))
                        .send()
                        .await;
                });
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, bot).await.unwrap() });
    let nonce = "1";
    let ts = chrono::Utc::now().timestamp().to_string();
    let added: Value = reqwest::Client::new()
        .post(format!("{}/mc/add.json", sim.base_url()))
        .header("RC-App-Key", KEY)
        .header("RC-Nonce", nonce)
        .header("RC-Timestamp", &ts)
        .header(
            "RC-Signature",
            pubbot_sim::signature::sign(SECRET, nonce, &ts),
        )
        .form(&[
            ("mcid", "shop"),
            ("displayName", "Shop"),
            ("portraitUrl", "http://example.com/p.png"),
            ("uiType", "0"),
            ("introduction", "hi"),
            ("RC-App-Key", KEY),
            ("isFollow", "true"),
            ("routeUrl", hook.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(added.get("errcode").is_none_or(|c| c == 0), "{added}");

    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pubbot-sim"));
        cmd.arg("message")
            .arg("--sim")
            .arg(sim.base_url())
            .args(args);
        async move { cmd.output().await.unwrap() }
    };
    let out = run(&[
        "--mcid",
        "shop",
        "--user",
        "alice",
        "--wait",
        "1.5",
        "hello there",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("(text) to ") && stdout.contains(": delivered"),
        "{stdout}"
    );
    assert!(stdout.contains("try 1: answered 200"), "{stdout}");
    assert!(stdout.contains("reply: text \"got it\""), "{stdout}");

    let out = run(&[
        "--mcid", "shop", "--user", "bob", "--follow", "--wait", "0.2",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("(event subscribe)"), "{stdout}");

    // An account the simulator does not know: a clear error, exit 1.
    let out = run(&["--mcid", "nope", "--user", "bob", "hi"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the simulator refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
