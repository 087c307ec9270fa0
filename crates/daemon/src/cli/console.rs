//! `pubbot console`: the web console's users.

use std::path::PathBuf;

use super::*;
use crate::config::Settings;
use crate::console::Role;
use anyhow::Context;
use clap::Subcommand;

/// `pubbot console ...`
#[derive(Subcommand, Debug)]
pub(super) enum ConsoleCommand {
    /// The console's users.
    #[command(subcommand)]
    User(UserCommand),
}

/// `pubbot console user ...`
#[derive(Subcommand, Debug)]
pub(super) enum UserCommand {
    /// Add a user, or change one's role and password (their sessions end).
    #[command(
        after_help = "Examples:\n  printf '%s\\n' \"$PASSWORD\" | pubbot console user add alice --role editor\n  pubbot console user add bob --role viewer --password-file bob.pw\n  pubbot console user add carol --role admin --no-password   (signs in through the trusted proxy header only)\n\nRoles: viewer (reads), editor (also rules, menus, broadcasts, retries), admin (everything).\nThe password is read from the first line of standard input unless --password-file\nor --no-password is given; at least 10 characters. Stored as an argon2id hash."
    )]
    Add {
        /// The name to sign in with.
        name: String,
        /// viewer, editor or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from this file's first line.
        #[arg(long, conflicts_with = "no_password")]
        password_file: Option<PathBuf>,
        /// No password: the user signs in only through the trusted proxy
        /// header (console.trusted_user_header).
        #[arg(long)]
        no_password: bool,
    },
    /// The users, their roles and open sessions (no hashes shown).
    #[command(after_help = "Example:\n  pubbot console user list")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user; their sessions end at once.
    #[command(after_help = "Example:\n  pubbot console user remove alice")]
    Remove {
        /// The user.
        name: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

pub(super) async fn console(cmd: ConsoleCommand, settings: &Settings) -> anyhow::Result<()> {
    let pool = pool(settings).await?;
    crate::db::check_schema(&pool).await?;
    let ConsoleCommand::User(cmd) = cmd;
    match cmd {
        UserCommand::Add {
            name,
            role,
            password_file,
            no_password,
        } => {
            let password = if no_password {
                None
            } else {
                let text = match &password_file {
                    Some(p) => std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                    None => {
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .context("reading the password from standard input")?;
                        line
                    }
                };
                let first = text.lines().next().unwrap_or("").to_owned();
                if first.is_empty() {
                    anyhow::bail!("no password given: pipe it on standard input, or give --password-file or --no-password");
                }
                Some(first)
            };
            let existed =
                crate::console::auth::add_user(&pool, &name, role, password.as_deref()).await?;
            println!(
                "{} console user {name} ({role}{})",
                if existed { "updated" } else { "added" },
                if password.is_some() {
                    ""
                } else {
                    ", proxy sign-in only"
                }
            );
        }
        UserCommand::List { json } => {
            let users = crate::console::auth::users(&pool).await?;
            if json {
                return print_json(&users);
            }
            let mut t = table(&["NAME", "ROLE", "PASSWORD", "SESSIONS"], &[3]);
            for u in users {
                t.add_row(vec![
                    u.name,
                    u.role,
                    if u.password { "yes" } else { "proxy only" }.to_owned(),
                    u.sessions.to_string(),
                ]);
            }
            print_table(&t);
        }
        UserCommand::Remove { name } => {
            crate::console::auth::remove_user(&pool, &name).await?;
            println!("removed console user {name}");
        }
    }
    Ok(())
}
