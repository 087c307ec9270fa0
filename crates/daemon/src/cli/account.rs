//! `pubbot account`, `pubbot menu`, `pubbot media`: the account as code.

use std::path::PathBuf;

use super::*;
use crate::config::Settings;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};

/// `pubbot account ...`
#[derive(Subcommand, Debug)]
pub(super) enum AccountCommand {
    /// Make the platform's accounts match a file: add, refresh, set the
    /// route url and switch — the plan first, then what was done.
    #[command(
        after_help = "Example:\n  pubbot account apply config/examples/accounts.toml --dry-run\n\nThe route url defaults to {http.public_base_url}/webhook/{app}."
    )]
    Apply {
        /// The accounts file (TOML).
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// The platform's view of an account.
    #[command(after_help = "Example:\n  pubbot account info shop")]
    Info {
        /// The account (mcid).
        mcid: String,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
}

/// `pubbot menu ...`
#[derive(Subcommand, Debug)]
pub(super) enum MenuCommand {
    /// Make an account's menu match a file with the fewest calls.
    #[command(
        after_help = "Example:\n  pubbot menu apply --account shop config/examples/menu.toml\n\nAn invalid file changes nothing and names the item."
    )]
    Apply {
        #[command(flatten)]
        target: Target,
        /// The menu file (TOML: [[item]] name, url, [[item.children]]).
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// The menu pubbot created (the platform cannot list one).
    #[command(after_help = "Example:\n  pubbot menu show --account shop")]
    Show {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub(super) enum UploadKind {
    Image,
    Voice,
    Thumb,
}

/// `pubbot media ...`
#[derive(Subcommand, Debug)]
pub(super) enum MediaCommand {
    /// Upload an image, voice or thumb (format and size checked first, R9);
    /// the same file again reuses its media_id.
    #[command(
        after_help = "Example:\n  pubbot media upload banner.png --type image --name welcome-banner\n\nRules then say: { type = \"image\", media = \"welcome-banner\" }."
    )]
    Upload {
        /// The file.
        file: PathBuf,
        /// What it is.
        #[arg(long = "type", value_enum)]
        kind: UploadKind,
        /// Local name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Upload news material ([[article]] thumb_media_id, title,
    /// content_source_url, ...).
    #[command(
        after_help = "Example:\n  pubbot media news config/examples/articles.toml --name weekly"
    )]
    News {
        /// The articles file (TOML).
        file: PathBuf,
        /// Local name.
        #[arg(long)]
        name: Option<String>,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Uploaded media by local name.
    #[command(after_help = "Example:\n  pubbot media list --json")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `pubbot account ...`
pub(super) async fn account_cmd(cmd: AccountCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        AccountCommand::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let desired: crate::account::AccountsFile = toml::from_str(&text)
                .with_context(|| format!("{} is not an accounts file", file.display()))?;
            let app = app_of(settings, &desired.app)?;
            let default_route = match settings.route_url(&app) {
                Ok(u) => u,
                Err(e) if desired.accounts.iter().all(|a| a.route_url.is_some()) => {
                    let _ = e;
                    String::new()
                }
                Err(e) => return Err(e.into()),
            };
            let client = client(settings, &app)?;
            let plan =
                crate::account::plan_accounts(&client, &desired.accounts, &default_route).await?;
            println!("plan for {app}:");
            for step in &plan {
                println!("  {step}");
            }
            if dry_run {
                return Ok(());
            }
            crate::account::apply_accounts(&client, &desired.accounts, &default_route, &plan)
                .await?;
            let changes = plan
                .iter()
                .filter(|s| {
                    !matches!(
                        s,
                        crate::account::AccountStep::Same(_)
                            | crate::account::AccountStep::Warn(..)
                    )
                })
                .count();
            println!("done: {changes} change(s)");
        }
        AccountCommand::Info { mcid, app } => {
            let app = app_of(settings, &app)?;
            let info = client(settings, &app)?
                .account_info(&mcid.as_str().into())
                .await
                .with_context(|| format!("reading account {mcid}"))?;
            print_json(&info)?;
        }
    }
    Ok(())
}

/// `pubbot menu ...`
pub(super) async fn menu_cmd(
    cmd: MenuCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    match cmd {
        MenuCommand::Apply {
            target,
            file,
            dry_run,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let menu: crate::account::MenuFile = toml::from_str(&text)
                .with_context(|| format!("{} is not a menu file", file.display()))?;
            let client = client(settings, &app)?;
            let plan =
                crate::account::apply_menu(pool, &client, &app, &mcid, &menu, dry_run).await?;
            if plan.is_empty() {
                println!("menu of {app}/{mcid}: no change");
                return Ok(());
            }
            for d in &plan.delete {
                println!("  - delete {d}");
            }
            for a in &plan.add {
                println!("  + add {a}");
            }
            if plan.order {
                println!("  ~ order");
            }
            println!(
                "{} ({} deleted, {} added)",
                if dry_run { "plan only" } else { "done" },
                plan.delete.len(),
                plan.add.len()
            );
        }
        MenuCommand::Show { target, json } => {
            let (app, mcid) = target.resolve(settings)?;
            let items = crate::account::stored_menu(pool, &app, &mcid).await?;
            if json {
                return print_json(&items);
            }
            for top in items.iter().filter(|i| i.level == 1) {
                println!(
                    "{} {}{}",
                    top.position,
                    top.name,
                    if top.url.is_empty() {
                        String::new()
                    } else {
                        format!(" -> {}", top.url)
                    }
                );
                for c in items
                    .iter()
                    .filter(|i| i.parent_id.as_deref() == Some(top.menu_id.as_str()))
                {
                    println!(
                        "  {} {}{}",
                        c.position,
                        c.name,
                        if c.url.is_empty() {
                            String::new()
                        } else {
                            format!(" -> {}", c.url)
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// `pubbot media ...`
pub(super) async fn media_cmd(
    cmd: MediaCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    match cmd {
        MediaCommand::Upload {
            file,
            kind,
            name,
            app,
        } => {
            let app = app_of(settings, &app)?;
            let kind = match kind {
                UploadKind::Image => pubbot_api_client::MediaKind::Image,
                UploadKind::Voice => pubbot_api_client::MediaKind::Voice,
                UploadKind::Thumb => pubbot_api_client::MediaKind::Thumb,
            };
            let up = crate::account::upload(
                pool,
                &client(settings, &app)?,
                &app,
                kind,
                &file,
                name.as_deref(),
            )
            .await?;
            println!(
                "{} {} as {:?}: media_id {}",
                if up.reused { "reused" } else { "uploaded" },
                file.display(),
                up.media.name,
                up.media.media_id
            );
        }
        MediaCommand::News { file, name, app } => {
            let app = app_of(settings, &app)?;
            let up = crate::account::upload_news(
                pool,
                &client(settings, &app)?,
                &app,
                &file,
                name.as_deref(),
            )
            .await?;
            println!(
                "uploaded news {:?}: media_id {}",
                up.media.name, up.media.media_id
            );
        }
        MediaCommand::List { json } => {
            let all = crate::account::list_media(pool).await?;
            if json {
                return print_json(&all);
            }
            let mut t = table(&["APP", "NAME", "KIND", "BYTES", "MEDIA_ID"], &[3]);
            for m in all {
                t.add_row(vec![
                    m.app_key,
                    m.name,
                    m.kind,
                    m.bytes.to_string(),
                    m.media_id,
                ]);
            }
            print_table(&t);
        }
    }
    Ok(())
}
