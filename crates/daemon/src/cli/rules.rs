//! `pubbot rules`: import, export, list, enable, disable, delete, test.

use std::path::PathBuf;

use super::*;
use crate::config::Settings;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use pubbot_rules::{IncomingKind, Options, RuleFile};

#[derive(Subcommand)]
pub(super) enum RulesCommand {
    /// Validate a TOML (or .json) file and store its rules, by name; nothing
    /// is written when any rule is invalid.
    #[command(
        after_help = "Example:\n  pubbot rules import rules.toml --replace\n\nEvery rule is compiled first (templates, keywords, scopes); a scope naming\nan app or account this configuration does not serve is warned about."
    )]
    Import {
        /// The file.
        file: PathBuf,
        /// Also delete stored rules the file does not name (and say which).
        #[arg(long)]
        replace: bool,
    },
    /// Print the stored rules as TOML (or JSON) on stdout.
    #[command(after_help = "Example:\n  pubbot rules export > rules.toml")]
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Toml)]
        format: Format,
    },
    /// One line per stored rule.
    #[command(after_help = "Example:\n  pubbot rules list")]
    List,
    /// Turn a rule on.
    #[command(after_help = "Example:\n  pubbot rules enable opening-hours")]
    Enable {
        /// Rule name.
        name: String,
    },
    /// Turn a rule off.
    #[command(after_help = "Example:\n  pubbot rules disable opening-hours")]
    Disable {
        /// Rule name.
        name: String,
    },
    /// Delete a rule.
    #[command(after_help = "Example:\n  pubbot rules delete opening-hours")]
    Delete {
        /// Rule name.
        name: String,
    },
    /// Dry run: what the stored rules answer to a message, and why.
    #[command(
        after_help = "Examples:\n  pubbot rules test --app demo-app --account shop --user alice \"opening hours?\"\n  pubbot rules test --app demo-app --account shop --kind event --event CLICK"
    )]
    Test {
        /// App key.
        #[arg(long, default_value = "demo-app")]
        app: String,
        /// Account (mcid).
        #[arg(long)]
        account: String,
        /// User id.
        #[arg(long, default_value = "someone")]
        user: String,
        /// Message kind.
        #[arg(long, value_enum, default_value_t = Kind::Text)]
        kind: Kind,
        /// The text.
        #[arg(default_value = "")]
        text: String,
        /// With `--kind event`: the event's name (an event the document
        /// does not list, such as a menu click; R14).
        #[arg(long, default_value = "")]
        event: String,
        /// The user's conversation state, as JSON (for `when.state`).
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Format {
    Toml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Kind {
    Text,
    Image,
    Voice,
    Location,
    Imgtxt,
    Subscribe,
    Unsubscribe,
    /// An event the document does not list (R14).
    Event,
}

pub(super) fn read_rule_file(path: &std::path::Path) -> anyhow::Result<RuleFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        RuleFile::from_json(&text)
            .with_context(|| format!("{} is not a valid rule file", path.display()))
    } else {
        RuleFile::from_toml(&text)
            .with_context(|| format!("{} is not a valid rule file", path.display()))
    }
}

pub(super) async fn rules(cmd: RulesCommand, settings: &Settings) -> anyhow::Result<()> {
    let pool = pool(settings).await?;
    crate::db::check_schema(&pool).await?;
    let options = Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    match cmd {
        RulesCommand::Import { file, replace } => {
            let parsed = read_rule_file(&file)?;
            for w in crate::pipeline::rules::scope_warnings(&parsed, settings) {
                eprintln!("pubbot: warning: {w}");
            }
            let done = crate::pipeline::rules::import(&pool, parsed, &options, replace)
                .await
                .with_context(|| format!("importing {}", file.display()))?;
            println!("imported {} rule(s) from {}", done.written, file.display());
            if !done.removed.is_empty() {
                println!(
                    "removed {} rule(s) the file does not name: {}",
                    done.removed.len(),
                    done.removed.join(", ")
                );
            }
        }
        RulesCommand::Export { format } => {
            let file = crate::pipeline::rules::export(&pool).await?;
            match format {
                Format::Toml => print!("{}", file.to_toml()?),
                Format::Json => println!("{}", file.to_json()),
            }
        }
        RulesCommand::List => {
            let mut t = table(
                &["ID", "STATE", "PRIORITY", "KIND", "SCOPE", "NAME"],
                &[0, 2],
            );
            for r in crate::pipeline::rules::load(&pool).await? {
                let scope = format!(
                    "{}/{}",
                    r.app_key.as_deref().unwrap_or("*"),
                    r.mcid.as_deref().unwrap_or("*")
                );
                t.add_row(vec![
                    r.id.to_string(),
                    if r.enabled { "enabled" } else { "disabled" }.to_owned(),
                    r.priority.to_string(),
                    format!("{:?}", r.kind).to_lowercase(),
                    scope,
                    r.name,
                ]);
            }
            print_table(&t);
        }
        RulesCommand::Enable { name } => {
            crate::pipeline::rules::set_enabled(&pool, &name, true).await?;
            println!("enabled {name}");
        }
        RulesCommand::Disable { name } => {
            crate::pipeline::rules::set_enabled(&pool, &name, false).await?;
            println!("disabled {name}");
        }
        RulesCommand::Delete { name } => {
            crate::pipeline::rules::delete(&pool, &name).await?;
            println!("deleted {name}");
        }
        RulesCommand::Test {
            app,
            account,
            user,
            kind,
            text,
            event,
            state,
        } => {
            let state: Option<serde_json::Value> = state
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .context("--state is a JSON object, like '{\"step\": \"ask_size\"}'")?;
            let kind = match kind {
                Kind::Text => IncomingKind::Text,
                Kind::Image => IncomingKind::Image,
                Kind::Voice => IncomingKind::Voice,
                Kind::Location => IncomingKind::Location,
                Kind::Imgtxt => IncomingKind::Imgtxt,
                Kind::Subscribe => IncomingKind::Subscribe,
                Kind::Unsubscribe => IncomingKind::Unsubscribe,
                Kind::Event => IncomingKind::Event,
            };
            let trial = crate::pipeline::rules::Trial {
                app,
                account,
                user,
                kind: Some(kind),
                text,
                event,
                state,
            };
            let e = crate::pipeline::rules::explain(&pool, &options, &trial).await?;
            for (matched, rule, reason) in &e.rules {
                println!(
                    "{} {:<24} {}",
                    if *matched { "✔" } else { "·" },
                    rule,
                    reason
                );
            }
            println!();
            if e.replies.is_empty() {
                println!("no reply");
            }
            for r in &e.replies {
                println!("{r}");
            }
            if let Some(s) = &e.state {
                println!("state: {s}");
            }
            for p in &e.problems {
                println!("{p}");
            }
        }
    }
    Ok(())
}
