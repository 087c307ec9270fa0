//! `pubbot followers`: count, list, export, subscribe, unsubscribe.

use std::path::PathBuf;

use super::*;
use crate::config::Settings;
use anyhow::bail;
use clap::{Subcommand, ValueEnum};

#[derive(Clone, Copy, ValueEnum, Debug)]
pub(super) enum ExportFormat {
    Csv,
    Json,
}

/// `pubbot followers ...`
#[derive(Subcommand, Debug)]
pub(super) enum FollowersCommand {
    /// How many followers the account has (from subscribe events and the
    /// subscribe API).
    #[command(after_help = "Example:\n  pubbot followers count --account shop")]
    Count {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The followers, by user id.
    #[command(after_help = "Example:\n  pubbot followers list --account shop --limit 20")]
    List {
        #[command(flatten)]
        target: Target,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Every follower as CSV or JSON on stdout.
    #[command(
        after_help = "Example:\n  pubbot followers export --account shop --format csv > followers.csv"
    )]
    Export {
        #[command(flatten)]
        target: Target,
        /// Format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
    /// Follow the account for the users of a file (/mc/subscribe.json, 50
    /// a call), and record them.
    #[command(after_help = "Example:\n  pubbot followers subscribe --account shop users.txt")]
    Subscribe {
        #[command(flatten)]
        target: Target,
        /// User ids, one per line.
        file: PathBuf,
    },
    /// Unfollow for the users of a file (/mc/unsubscribe.json).
    #[command(after_help = "Example:\n  pubbot followers unsubscribe --account shop gone.txt")]
    Unsubscribe {
        #[command(flatten)]
        target: Target,
        /// User ids, one per line.
        file: PathBuf,
    },
}

/// `pubbot followers ...`
pub(super) async fn followers_cmd(
    cmd: FollowersCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use crate::account::followers;
    match cmd {
        FollowersCommand::Count { target, json } => {
            let (app, mcid) = target.resolve(settings)?;
            let n = followers::count(pool, &app, &mcid).await?;
            if json {
                return print_json(
                    &serde_json::json!({"app_key": app, "mcid": mcid, "followers": n}),
                );
            }
            println!("{n}");
        }
        FollowersCommand::List { target, limit } => {
            let (app, mcid) = target.resolve(settings)?;
            let mut t = table(&["USER", "FOLLOWED AT"], &[]);
            for f in followers::list(pool, &app, &mcid, limit).await? {
                t.add_row(vec![
                    f.user_id,
                    f.followed_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                ]);
            }
            print_table(&t);
        }
        FollowersCommand::Export { target, format } => {
            let (app, mcid) = target.resolve(settings)?;
            let all = followers::list(pool, &app, &mcid, i64::MAX).await?;
            match format {
                ExportFormat::Json => print_json(&all)?,
                ExportFormat::Csv => {
                    println!("user_id,followed_at");
                    for f in all {
                        println!("{},{}", f.user_id, f.followed_at.to_rfc3339());
                    }
                }
            }
        }
        FollowersCommand::Subscribe { target, file } => {
            subscribe_cmd(target, file, true, settings, pool).await?;
        }
        FollowersCommand::Unsubscribe { target, file } => {
            subscribe_cmd(target, file, false, settings, pool).await?;
        }
    }
    Ok(())
}

/// `pubbot followers subscribe|unsubscribe FILE`.
pub(super) async fn subscribe_cmd(
    target: Target,
    file: PathBuf,
    follow: bool,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    let (app, mcid) = target.resolve(settings)?;
    let users = crate::account::followers::read_users(&file)?;
    let client = client(settings, &app)?;
    let changed =
        crate::account::followers::subscribe(pool, &client, &app, &mcid, &users, follow).await?;
    let verb = if follow { "subscribed" } else { "unsubscribed" };
    println!("{verb} {} user(s) to {app}/{mcid}", changed.done);
    for (chunk, why) in &changed.failed {
        println!(
            "not {verb}: {} user(s) ({}...): {why}",
            chunk.len(),
            chunk[0]
        );
    }
    if !changed.failed.is_empty() {
        bail!("{} chunk(s) refused by the platform", changed.failed.len());
    }
    Ok(())
}
