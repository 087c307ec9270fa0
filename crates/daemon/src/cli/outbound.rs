//! `pubbot conversation` and `pubbot outbound`: what a user got, and
//! failed replies sent again.

use super::*;
use crate::config::Settings;
use anyhow::bail;
use clap::Subcommand;

/// A planned reply as an operator reads it (never the row's JSON).
fn describe_reply(p: &serde_json::Value) -> String {
    let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match s("type") {
        "text" => s("content").to_owned(),
        "handler" => format!("[calls handler {:?}]", s("handler")),
        "news" => format!(
            "[news] {}",
            p.get("articles")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("title").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        kind @ ("image" | "voice") => {
            let media = p.get("media").cloned().unwrap_or_default();
            let m = media
                .get("url")
                .or_else(|| media.get("media_id"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            format!("[{kind}] {m}")
        }
        other => format!("[{other}]"),
    }
}

/// `pubbot outbound ...`
#[derive(Subcommand, Debug)]
pub(super) enum OutboundCommand {
    /// Failed replies with the platform's code and message.
    #[command(after_help = "Example:\n  pubbot outbound failed --since 1h")]
    Failed {
        /// How far back (30m, 1h, 2d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send failed replies again, once, as the rules in force answer their
    /// push now (fix the rule first).
    #[command(
        after_help = "Examples:\n  pubbot outbound retry 812 813\n  pubbot outbound retry --all-failed --since 1h"
    )]
    Retry {
        /// Reply ids (from `outbound failed` or `conversation`).
        ids: Vec<i64>,
        /// Every failed reply of the period.
        #[arg(long)]
        all_failed: bool,
        /// The period of --all-failed.
        #[arg(long, default_value = "1h")]
        since: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `pubbot conversation USER`.
pub(super) async fn conversation_cmd(
    user: &str,
    account: Option<&str>,
    limit: i64,
    json: bool,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use crate::admin::inspect;
    let mut all = inspect::conversation(pool, user, account, limit).await?;
    let states = inspect::states(pool, user, account).await?;
    // Why a push got no reply: judged by the rules in force now.
    let options =
        pubbot_rules::Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    let options = crate::pipeline::rules::with_media(pool, &options).await?;
    let rules =
        pubbot_rules::RuleSet::compile(crate::pipeline::rules::load(pool).await?, &options)?;
    for e in &mut all {
        if e.replies.is_empty() {
            let hosted = settings
                .apps
                .iter()
                .find(|a| a.key == e.app_key)
                .is_some_and(|a| a.accounts.hosts(&e.mcid));
            e.why_no_reply = Some(inspect::why_no_reply(e, &rules, hosted));
        }
    }
    if json {
        return print_json(&serde_json::json!({"pushes": all, "state": states}));
    }
    if all.is_empty() {
        bail!(
            "no pushes from {user}{} (not found)",
            account.map_or_else(String::new, |a| format!(" to {a}"))
        );
    }
    for e in all {
        println!(
            "{} {user} -> {}: {} (push #{}, trace {}{})",
            e.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.mcid,
            e.summary,
            e.id,
            e.trace_id,
            if e.status == "pending" {
                ", not decided yet"
            } else {
                ""
            }
        );
        if let Some(why) = &e.why_no_reply {
            println!("    (no reply: {why})");
        }
        if let Some(change) = &e.state_change {
            let set = change
                .get("set")
                .filter(|s| s.as_object().is_some_and(|o| !o.is_empty()));
            let clear = change
                .get("clear")
                .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()));
            println!(
                "    state: {}{}",
                set.map_or_else(String::new, |s| format!("set {s}")),
                clear.map_or_else(String::new, |c| format!(
                    "{}cleared {c}",
                    if set.is_some() { ", " } else { "" }
                ))
            );
        }
        for r in e.replies {
            let what = describe_reply(&r.payload);
            println!(
                "    reply #{} [{}] rule {:?}: {}{}{}",
                r.id,
                r.status,
                r.rule,
                what,
                r.latency_ms
                    .map_or_else(String::new, |ms| format!(" ({ms} ms)")),
                r.error.map_or_else(String::new, |e| format!(" — {e}"))
            );
        }
    }
    if !states.is_empty() {
        println!();
        for st in &states {
            println!(
                "state of {user} with {}/{}: {} (changed {}, forgotten after {})",
                st.app_key,
                st.mcid,
                st.state,
                st.updated_at.format("%Y-%m-%d %H:%M:%S"),
                st.expires_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
    }
    Ok(())
}

/// `pubbot outbound ...`
pub(super) async fn outbound_cmd(
    cmd: OutboundCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use crate::admin::inspect;
    match cmd {
        OutboundCommand::Failed { since, json } => {
            let since = chrono::Utc::now() - parse_since(&since)?;
            let all = inspect::failed(pool, since).await?;
            if json {
                return print_json(&all);
            }
            let mut t = table(&["ID", "PLANNED", "TO", "RULE", "ERROR"], &[0]);
            for f in all {
                t.add_row(vec![
                    f.id.to_string(),
                    f.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    format!("{}/{}", f.mcid, f.user_id),
                    f.rule_name,
                    f.last_error.unwrap_or_default(),
                ]);
            }
            print_table(&t);
        }
        OutboundCommand::Retry {
            ids,
            all_failed,
            since,
            json,
        } => {
            let ids = if all_failed {
                let since = chrono::Utc::now() - parse_since(&since)?;
                inspect::failed(pool, since)
                    .await?
                    .into_iter()
                    .map(|f| f.id)
                    .collect()
            } else if ids.is_empty() {
                bail!("give reply ids, or --all-failed --since 1h");
            } else {
                ids
            };
            let options = pubbot_rules::Options::with_timezone(&settings.timezone)
                .map_err(anyhow::Error::msg)?;
            let done = inspect::retry(pool, &options, &ids).await?;
            if json {
                print_json(&done)?;
            } else {
                for r in &done {
                    println!("reply #{}: {}", r.id, r.outcome);
                }
            }
            let missing: Vec<String> = done
                .iter()
                .filter(|r| r.outcome == inspect::RetryOutcome::NotFound)
                .map(|r| format!("#{}", r.id))
                .collect();
            if !missing.is_empty() {
                bail!("no such reply: {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

/// Parses `30s`, `15m`, `1h`, `2d`.
///
/// # Errors
/// What it expected.
fn parse_since(s: &str) -> anyhow::Result<chrono::Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?}: a number and s, m, h or d (like 1h)"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" | "" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => anyhow::bail!("{s:?}: a number and s, m, h or d (like 1h)"),
    }
}
