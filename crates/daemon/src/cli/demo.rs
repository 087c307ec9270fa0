//! `pubbot demo` (cargo feature `demo`, on for the README's demo command,
//! off in the production binary): the platform simulator and the daemon on
//! this machine, a scripted conversation, then a prompt where you write as
//! a user and see the bot's replies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Settings;
use anyhow::Context;
use pubbot_rules::Options;
use secrecy::SecretString;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

const KEY: &str = "demo-app";
const SECRET: &str = "demo-secret";
const SHOP: &str = "shop";

struct Platform {
    control: String,
    http: pubbot_api_client::HttpClient,
}

impl Platform {
    async fn act(&self, what: &str, body: serde_json::Value) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/{what}", self.control))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("simulator {what}"))?
            .error_for_status()?;
        Ok(())
    }

    async fn inbox(&self, user: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/inbox/{user}", self.control))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Waits for `user`'s inbox to grow past `seen` and settle, then prints
    /// what arrived.
    async fn show_replies(&self, user: &str, seen: usize) -> anyhow::Result<usize> {
        let mut last = seen;
        let mut quiet = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.inbox(user).await?.len();
            if n > last {
                last = n;
                quiet = 0;
            } else if n > seen {
                quiet += 1;
                if quiet >= 3 {
                    break;
                }
            }
        }
        let inbox = self.inbox(user).await?;
        for d in inbox.iter().skip(seen) {
            println!("  {SHOP} -> {user}: {}", describe(d));
        }
        if inbox.len() == seen {
            println!("  (no reply)");
        }
        Ok(inbox.len())
    }
}

fn describe(d: &serde_json::Value) -> String {
    let p = &d["payload"];
    match d["msgtype"].as_str().unwrap_or("?") {
        "text" => p["content"].as_str().unwrap_or("").to_owned(),
        "image" | "voice" => format!(
            "[{}] {}",
            d["msgtype"].as_str().unwrap_or(""),
            p["url"].as_str().or(p["media_id"].as_str()).unwrap_or("")
        ),
        "news" => format!(
            "[news] {}",
            p["articles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["title"].as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        other => format!("[{other}] {p}"),
    }
}

/// The demo's console user (an admin; the console listens on loopback).
const DEMO_USER: &str = "demo";
/// Its password, printed at start: a local demo, not a deployment.
const DEMO_PASSWORD: &str = "pubbot-demo";

/// Runs the demo until `/quit`, the end of standard input, or Ctrl-C.
pub(super) async fn run(
    mut settings: Settings,
    sim_listen: SocketAddr,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    console_listen: SocketAddr,
    rules_file: PathBuf,
) -> anyhow::Result<()> {
    let sim = pubbot_sim::Simulator::new(pubbot_sim::SimConfig {
        apps: vec![pubbot_sim::AppCredentials {
            key: KEY.into(),
            secret: SECRET.into(),
        }],
        ..pubbot_sim::SimConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let sim_listener = tokio::net::TcpListener::bind(sim_listen)
        .await
        .with_context(|| format!("binding the simulator to {sim_listen}"))?;
    let sim_listen = sim_listener.local_addr()?;
    let token = CancellationToken::new();
    let stop = token.clone();
    let sim_task = {
        let sim = sim.clone();
        tokio::spawn(async move {
            sim.serve(sim_listener, async move { stop.cancelled().await })
                .await
        })
    };

    settings.http.admin_listen = admin_listen;
    // The console over plain HTTP on loopback: its cookie cannot be Secure.
    settings.console.listen = Some(console_listen);
    settings.console.secure_cookies = false;
    settings.apps = vec![crate::config::AppSettings {
        key: KEY.into(),
        secret: Some(SecretString::from(SECRET)),
        secret_file: None,
        secrets: Vec::new(),
        api_base_url: format!("http://{sim_listen}"),
        rate_limit_per_sec: 50,
        accounts: crate::config::Hosted::Only(vec![SHOP.into()]),
        timestamp_unit: crate::config::TimestampUnit::Seconds,
        database: None,
        move_to: None,
    }];
    let spool = std::env::temp_dir().join(format!("pubbot-demo-spool-{}", std::process::id()));
    settings.ingest.spool_dir = spool.display().to_string();
    let pool = crate::db::connect(&settings.database)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", settings.database_target()))?;
    crate::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let options = Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    let file = super::rules::read_rule_file(&rules_file)?;
    let n = crate::pipeline::rules::import(&pool, file, &options, false)
        .await?
        .written;
    crate::console::auth::add_user(
        &pool,
        DEMO_USER,
        crate::console::Role::Admin,
        Some(DEMO_PASSWORD),
    )
    .await
    .context("the demo's console user")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let listen = listener.local_addr()?;
    let running = crate::start(settings.clone(), pool, listener, token.clone()).await?;

    let api = pubbot_api_client::Client::builder(
        KEY,
        SecretString::from(SECRET),
        format!("http://{sim_listen}"),
    )
    .build()?;
    let account = pubbot_api_client::NewAccount {
        mcid: SHOP.into(),
        profile: pubbot_api_client::AccountProfile {
            display_name: "Demo Shop".into(),
            portrait_url: "http://example.com/logo.png".into(),
            ui_type: 0,
            introduction: "pubbot demo".into(),
        },
        is_follow: false,
        route_url: format!("http://{listen}/webhook/{KEY}"),
    };
    if let Err(e) = api.add_account(&account).await {
        tracing::warn!(error = %e, "creating the demo account");
    }
    println!("pubbot demo: {n} rule(s) from {}", rules_file.display());
    println!("  platform simulator  http://{sim_listen}   (app {KEY}, secret {SECRET})");
    println!("  pubbot webhook      http://{listen}/webhook/{KEY}");
    if let Some(at) = running.console_addr {
        println!("  web console         http://{at}/   (sign in as {DEMO_USER} / {DEMO_PASSWORD})");
    }
    println!(
        "  metrics             http://{}/metrics",
        running.admin_addr
    );
    println!(
        "  health              http://{0}/healthz  http://{0}/readyz",
        running.admin_addr
    );
    let platform = Platform {
        control: format!("http://{sim_listen}/_sim"),
        http: pubbot_api_client::HttpClient::new(),
    };

    let result = converse(&platform).await;
    println!("stopping: daemon, simulator, spool");
    token.cancel();
    running.shutdown().await;
    let _ = sim_task.await;
    let _ = std::fs::remove_dir_all(&spool);
    result
}

async fn converse(platform: &Platform) -> anyhow::Result<()> {
    let mut user = "alice".to_owned();
    let mut seen = 0;
    let script = [
        "/follow",
        "What are your opening hours?",
        "ＨＥＬＬＯ",
        "/image http://example.com/cat.jpg",
    ];
    println!("\nA scripted exchange first:");
    for line in script {
        println!("{user} -> {SHOP}: {line}");
        seen = say(platform, &user, line, seen).await?;
    }
    println!(
        "\nNow you: write as {user}; /follow, /unfollow, /image URL, /user NAME, /quit (Ctrl-C or end of input stops too)."
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        print_prompt(&user);
        let line = tokio::select! {
            l = lines.next_line() => l?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { break };
        let line = line.trim().to_owned();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        if let Some(name) = line.strip_prefix("/user ") {
            user = name.trim().to_owned();
            seen = platform.inbox(&user).await?.len();
            println!("  now writing as {user}");
            continue;
        }
        seen = say(platform, &user, &line, seen).await?;
    }
    println!();
    Ok(())
}

fn print_prompt(user: &str) {
    use std::io::Write as _;
    print!("{user}> ");
    let _ = std::io::stdout().flush();
}

async fn say(platform: &Platform, user: &str, line: &str, seen: usize) -> anyhow::Result<usize> {
    let body = if line == "/follow" {
        platform
            .act(
                "follow",
                serde_json::json!({"mcid": SHOP, "user": user, "wait": true}),
            )
            .await?;
        return platform.show_replies(user, seen).await;
    } else if line == "/unfollow" {
        platform
            .act(
                "unfollow",
                serde_json::json!({"mcid": SHOP, "user": user, "wait": true}),
            )
            .await?;
        return platform.show_replies(user, seen).await;
    } else if let Some(url) = line.strip_prefix("/image ") {
        serde_json::json!({"mcid": SHOP, "user": user, "type": "image", "pic_url": url.trim(), "wait": true})
    } else if line.starts_with('/') {
        println!("  unknown command {line:?}: /follow, /unfollow, /image URL, /user NAME, /quit");
        return Ok(seen);
    } else {
        serde_json::json!({"mcid": SHOP, "user": user, "type": "text", "content": line, "wait": true})
    };
    platform.act("message", body).await?;
    platform.show_replies(user, seen).await
}
