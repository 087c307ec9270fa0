//! `pubbot handler`: handler bots that rules call over HTTP.

use std::path::PathBuf;

use super::*;
use crate::config::Settings;
use anyhow::{bail, Context};
use clap::Subcommand;

/// `pubbot handler ...`
#[derive(Subcommand, Debug)]
pub(super) enum HandlerCommand {
    /// Add (or replace) a handler bot that rules call with `handler = "NAME"`.
    #[command(
        after_help = "Example:\n  pubbot handler add orders --url http://127.0.0.1:9000/hook --secret-file orders.secret\n\nCalls are signed the Standard Webhooks way (webhook-id, webhook-timestamp,\nwebhook-signature); a secret `whsec_<base64>` is used as that scheme's key."
    )]
    Add {
        /// Name (what rules say).
        name: String,
        /// Where to POST the events.
        #[arg(long)]
        url: String,
        /// The signing secret.
        #[arg(long, conflicts_with = "secret_file")]
        secret: Option<String>,
        /// A file holding the signing secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// One call's timeout, milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The handlers (secrets never shown).
    #[command(after_help = "Example:\n  pubbot handler list")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Call a handler with a sample text message and print its answer and
    /// how long it took (nothing is sent to the platform).
    #[command(
        after_help = "Example:\n  pubbot handler test orders --text 'order 42' --user alice --account shop"
    )]
    Test {
        /// The handler.
        name: String,
        /// The text the sample user writes.
        #[arg(long)]
        text: String,
        /// The sample user.
        #[arg(long, default_value = "someone")]
        user: String,
        /// The account.
        #[arg(long, default_value = "shop")]
        account: String,
        /// App key (default: the only configured app, or "app").
        #[arg(long)]
        app: Option<String>,
    },
}

/// `pubbot handler ...`
pub(super) async fn handler_cmd(
    cmd: HandlerCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use crate::pipeline::handlers;
    match cmd {
        HandlerCommand::Add {
            name,
            url,
            secret,
            secret_file,
            timeout_ms,
            concurrency,
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must start with http:// or https://, got {url:?}");
            }
            let secret = match (secret, secret_file) {
                (Some(s), None) => s,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_owned(),
                _ => bail!("give the signing secret: --secret or --secret-file"),
            };
            if secret.is_empty() {
                bail!("the signing secret is empty");
            }
            handlers::add(
                pool,
                &handlers::HandlerConfig {
                    name: name.clone(),
                    url: url.clone(),
                    secret: secret.into(),
                    timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
                    concurrency: concurrency.max(1),
                },
            )
            .await?;
            println!("handler {name:?} -> {url} (timeout {timeout_ms} ms, {concurrency} at once)");
        }
        HandlerCommand::List { json } => {
            let all = handlers::list(pool).await?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|h| serde_json::json!({"name": h.name, "url": h.url, "timeout_ms": h.timeout.as_millis() as u64, "concurrency": h.concurrency}))
                    .collect();
                return print_json(&v);
            }
            let mut t = table(&["NAME", "TIMEOUT", "MAX", "URL"], &[1, 2]);
            for h in all {
                t.add_row(vec![
                    h.name,
                    format!("{}ms", h.timeout.as_millis()),
                    h.concurrency.to_string(),
                    h.url,
                ]);
            }
            print_table(&t);
        }
        HandlerCommand::Test {
            name,
            text,
            user,
            account,
            app,
        } => {
            let app = app_of(settings, &app).unwrap_or_else(|_| "app".to_owned());
            let runner = handlers::HandlerRunner::new(
                pool.clone(),
                "pubbot-handler-test".into(),
                handlers::HandlerPolicy {
                    max_attempts: 1,
                    backoff: crate::retry::Backoff::new(
                        std::time::Duration::ZERO,
                        std::time::Duration::ZERO,
                    ),
                    breaker_failures: u32::MAX,
                    breaker_open: std::time::Duration::from_secs(1),
                    state_ttl: std::time::Duration::from_secs(settings.state.ttl_secs),
                },
                std::sync::Arc::default(),
                std::sync::Arc::default(),
            );
            let id = format!("test-{}", rand::random::<u32>());
            let event = serde_json::json!({
                "id": id,
                "app_key": app,
                "account": account,
                "user": user,
                "message": {"to": account, "from": user, "create_time": chrono::Utc::now().timestamp_millis(),
                            "msg_id": id, "body": {"kind": "text", "content": text}},
                "rule": "(pubbot handler test)",
                "captures": [],
                "named": {},
                "state": {},
                "test": true,
            });
            let started = std::time::Instant::now();
            let result = runner.call(&name, &id, &event, &app, &id).await;
            let ms = started.elapsed().as_millis();
            match result {
                handlers::CallResult::Answered { replies, state } => {
                    println!("answered in {ms} ms");
                    for r in replies {
                        println!("reply: {}", serde_json::to_string(&r)?);
                    }
                    if let Some(s) = state {
                        println!("state: {}", serde_json::to_string(&s)?);
                    }
                }
                handlers::CallResult::Failed(e) => bail!("after {ms} ms: {e}"),
            }
        }
    }
    Ok(())
}
