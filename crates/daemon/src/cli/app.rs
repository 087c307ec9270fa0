//! `pubbot app`: an app's place among the databases.

use std::time::Duration;

use crate::config::Settings;
use clap::Subcommand;

/// `pubbot app ...`
#[derive(Subcommand, Debug)]
pub(super) enum AppCommand {
    /// Move an app to the database its `move_to` names, while pubbot
    /// serves it: no push lost, no reply sent twice, each user's replies
    /// in the order they wrote.
    #[command(
        after_help = "Before: add [databases.NAME] and the app's move_to = \"NAME\" to every replica's\nconfiguration, `pubbot migrate`, import the rules there\n(`pubbot --database NAME rules import FILE`), and restart the replicas.\nThen:\n  pubbot app move e2e-app\nAfter: set the app's database = \"NAME\", remove move_to, and restart the replicas\n(in any order). Running it again goes on where it stopped.\nSee README \"Moving an app to another database\"."
    )]
    Move {
        /// The app key.
        app: String,
        /// Seconds for every replica to send the app's pushes to the
        /// destination (they look every half second).
        #[arg(long, default_value_t = 3)]
        grace_secs: u64,
        /// Seconds to wait for the source to send what it planned.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
}

pub(super) async fn app(cmd: AppCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Move {
            app,
            grace_secs,
            wait_secs,
        } => {
            let report = crate::admin::moves::run(
                settings,
                &app,
                Duration::from_secs(grace_secs),
                Duration::from_secs(wait_secs),
                |step| tracing::info!("{step}"),
            )
            .await?;
            if report.already_done {
                println!(
                    "app {app} was moved to database {} before; nothing to do",
                    report.to
                );
                return Ok(());
            }
            println!(
                "app {app} moved from database {} to {}: {} pushes and {} replies copied, {} pushes stored on both marked done",
                report.from, report.to, report.pushes, report.replies, report.duplicates
            );
            for (table, n) in &report.state {
                println!("  {table:<20} {n} rows copied");
            }
            for (table, n) in &report.left_behind {
                println!(
                    "  {table:<20} {n} rows left on {} (make them again on {} if still wanted)",
                    report.from, report.to
                );
            }
            println!(
                "next: set database = \"{}\" for app {app}, remove its move_to, and restart every replica",
                report.to
            );
        }
    }
    Ok(())
}
