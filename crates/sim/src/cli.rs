//! What `pubbot-sim message` does against a running simulator: push as a
//! user through the control API, then print the push's fate and the
//! replies the user received.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// Sends `body` to `/_sim/{path}` of the simulator at `sim` (waiting until
/// the push ended), prints each try of the push, then the messages `user`
/// receives within `wait` after it.
///
/// # Errors
/// The simulator is not there or refuses the request (an unknown account,
/// say), or the push was not delivered.
pub async fn message(
    sim: &str,
    path: &str,
    body: Value,
    user: &str,
    app_key: Option<&str>,
    wait: Duration,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = sim.trim_end_matches('/');
    let inbox_url = match app_key {
        Some(k) => format!("{base}/_sim/inbox/{user}?app_key={k}"),
        None => format!("{base}/_sim/inbox/{user}"),
    };
    let inbox = |http: reqwest::Client, url: String| async move {
        let v: Value = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("reaching the simulator at {url}"))?
            .json()
            .await?;
        anyhow::Ok(v.as_array().cloned().unwrap_or_default())
    };
    let before = inbox(http.clone(), inbox_url.clone()).await?.len();
    let r = http
        .post(format!("{base}/_sim/{path}"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("reaching the simulator at {base}"))?;
    let status = r.status();
    let answer: Value = r.json().await.context("the simulator's answer")?;
    if !status.is_success() {
        anyhow::bail!(
            "the simulator refused: {}",
            answer["error"].as_str().unwrap_or("?")
        );
    }
    let mut delivered = false;
    for p in answer["pushes"].as_array().into_iter().flatten() {
        let state = p["state"].as_str().unwrap_or("?");
        let what = match p["event"].as_str() {
            Some(e) => format!("event {e}"),
            None => p["msg_type"].as_str().unwrap_or("?").to_owned(),
        };
        println!(
            "push #{} ({what}) to {}: {state}",
            p["id"],
            p["url"].as_str().unwrap_or("no route url")
        );
        for (i, a) in p["attempts"].as_array().into_iter().flatten().enumerate() {
            let status = a["status"]
                .as_u64()
                .map_or_else(String::new, |s| format!(" {s}"));
            println!(
                "  try {}: {}{status} {}",
                i + 1,
                a["outcome"].as_str().unwrap_or("?"),
                a["detail"].as_str().unwrap_or("")
            );
        }
        delivered |= state == "delivered";
    }
    if !delivered {
        anyhow::bail!(
            "the push was not delivered (is the daemon up, and the account's route url right?)"
        );
    }
    // Replies come after the push is answered: wait for them.
    let until = Instant::now() + wait;
    let mut seen = before;
    loop {
        let all = inbox(http.clone(), inbox_url.clone()).await?;
        for d in all.iter().skip(seen) {
            println!("reply: {}", describe(d));
        }
        seen = seen.max(all.len());
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if seen == before {
        println!("no reply within {:.1} s", wait.as_secs_f64());
    }
    Ok(())
}

/// One delivered message as a line: its type and what it says.
fn describe(d: &Value) -> String {
    let p = &d["payload"];
    match d["msgtype"].as_str().unwrap_or("?") {
        "text" => format!("text {:?}", p["content"].as_str().unwrap_or("")),
        "image" | "voice" => format!(
            "{} {}",
            d["msgtype"].as_str().unwrap_or(""),
            p["url"]
                .as_str()
                .or_else(|| p["media_id"].as_str())
                .unwrap_or("")
        ),
        "news" => format!(
            "news: {}",
            p["articles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["title"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        other => format!("{other} {p}"),
    }
}
