//! `pubbot`: the command line. Parses arguments and calls the library.
//!
//! Output: a command's result goes to stdout, logs and errors to stderr.
//! An error is one line (`pubbot: error: ...`, each cause once), with a
//! backtrace only under `RUST_BACKTRACE=1`. Exit codes: 0 done, 1 failed,
//! 2 usage, 69 the database cannot be reached, 78 configuration.

mod account;
mod app;
mod broadcast;
mod console;
#[cfg(feature = "demo")]
mod demo;
mod followers;
mod handler;
mod outbound;
mod output;
mod rules;
mod serve;
mod target;

use output::{print_json, print_table, table};
use target::{app_of, client, Target};

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{ConfigError, Settings};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Exit code: a command that failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: PostgreSQL cannot be reached (sysexits EX_UNAVAILABLE).
const EXIT_DB_UNREACHABLE: u8 = 69;
/// Exit code: the configuration is invalid (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

const CONFIG_HELP: &str = "\
Configuration: the built-in defaults (config/default.toml), then --config or
PUBBOT_CONFIG, then PUBBOT__SECTION__KEY environment variables (they win).
The database URL: PUBBOT__DATABASE__URL, else PUBBOT__DATABASE__URL_FILE,
else DATABASE_URL, else database.url_file, else database.url; `pubbot config`
shows which one won. Logs go to stderr (RUST_LOG, log.format).
Exit codes: 0 done, 1 failed, 2 usage, 69 database unreachable, 78 configuration.";

#[derive(Parser)]
#[command(
    name = "pubbot",
    version,
    about = "Host bots for Public Service accounts",
    after_help = CONFIG_HELP
)]
struct Cli {
    /// Configuration overlay (TOML) on top of the built-in defaults;
    /// PUBBOT__* environment variables win over both.
    #[arg(long, global = true, env = "PUBBOT_CONFIG")]
    config: Option<PathBuf>,
    /// The database a command reads and writes: the NAME of a
    /// `[databases.NAME]`, where the apps placed there keep their rules,
    /// followers, broadcasts and messages; unset, `[database]`. `migrate`
    /// without it migrates every configured database; `serve` runs them
    /// all.
    #[arg(long, global = true, env = "PUBBOT_DATABASE", value_name = "NAME")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    #[command(
        after_help = "Example:\n  PUBBOT__DATABASE__URL=postgres://pubbot@db/pubbot pubbot migrate\n\nReads database.*."
    )]
    Migrate,
    /// Run the daemon: webhook, decide and send workers, admin listener.
    #[command(
        after_help = "Example:\n  pubbot --config /etc/pubbot/pubbot.toml serve\n\nReads every key; see config/default.toml. SIGTERM or SIGINT stops it gracefully."
    )]
    Serve,
    /// Show the configuration in force (secrets left out) and where the
    /// database URL came from.
    #[command(after_help = "Example:\n  DATABASE_URL=postgres://localhost/pubbot pubbot config")]
    Config,
    /// Manage the reply rules stored in the database.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// The daily mass send (one a natural day, R11): schedule, one-off,
    /// list, show, cancel, history, resolve.
    #[command(subcommand)]
    Broadcast(broadcast::BroadcastCommand),
    /// A message to every follower (or a list of users) by batchsend.
    #[command(subcommand)]
    Campaign(broadcast::CampaignCommand),
    /// The followers pubbot tracks: count, list, export, subscribe,
    /// unsubscribe.
    #[command(subcommand)]
    Followers(followers::FollowersCommand),
    /// Accounts as code: apply a file, or read one account.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Menus as code: apply a file, show the stored menu.
    #[command(subcommand)]
    Menu(account::MenuCommand),
    /// Uploaded media by local name: upload, news, list.
    #[command(subcommand)]
    Media(account::MediaCommand),
    /// One user's pushes and pubbot's replies, in time order, with the rule,
    /// status and latency of each reply.
    #[command(after_help = "Example:\n  pubbot conversation alice --account shop --limit 20")]
    Conversation {
        /// The user.
        user: String,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// The last N pushes.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The web console's users: add, list, remove.
    #[command(subcommand)]
    Console(console::ConsoleCommand),
    /// An app's place among the databases: move.
    #[command(subcommand)]
    App(app::AppCommand),
    /// Failed replies, and sending them again.
    #[command(subcommand)]
    Outbound(outbound::OutboundCommand),
    /// Handler bots that rules call over HTTP: add, list, test.
    #[command(subcommand)]
    Handler(handler::HandlerCommand),
    /// Delete decided pushes and settled replies older than
    /// retention.days now (the daemon does it every retention.every_secs).
    #[command(
        after_help = "Examples:\n  pubbot prune --dry-run\n  pubbot prune --days 7\n\nReads retention.*; undecided pushes and unsettled replies are never deleted."
    )]
    Prune {
        /// Only count what would go.
        #[arg(long)]
        dry_run: bool,
        /// Keep this many days instead of retention.days.
        #[arg(long)]
        days: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Everything at once on this machine: the platform simulator, the
    /// daemon and demo rules, a scripted conversation, then a prompt to
    /// talk to the bot yourself.
    #[cfg(feature = "demo")]
    #[command(
        after_help = "Example:\n  ./scripts/demo.sh      (brings up PostgreSQL for it)\n\nAt the prompt: text is sent as the current user; /follow, /unfollow,\n/image URL, /user NAME, /quit."
    )]
    Demo {
        /// Simulator address.
        #[arg(long, default_value = "127.0.0.1:8090")]
        sim_listen: std::net::SocketAddr,
        /// Daemon webhook address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin address (/metrics, /healthz, /readyz).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
        /// Web console address (sign in as demo / pubbot-demo).
        #[arg(long, default_value = "127.0.0.1:8091")]
        console_listen: std::net::SocketAddr,
        /// Rules to load.
        #[arg(long, default_value = "config/demo-rules.toml")]
        rules: PathBuf,
    },
}

/// Parses the command line, loads the settings, runs the command and
/// turns its outcome into an exit code (see the module doc).
pub fn main() -> ExitCode {
    // Usage errors: clap prints them and exits 2.
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => match &cli.database {
            // Every command but `serve` and `migrate` works on one
            // database: the one named takes `[database]`'s place.
            Some(name) if !matches!(cli.command, Command::Serve | Command::Migrate) => {
                match s.database_named(name) {
                    Ok(db) => Settings {
                        database: db,
                        database_url_source: "databases",
                        ..s
                    },
                    Err(e) => return fail(&anyhow::Error::new(e)),
                }
            }
            _ => s,
        },
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    crate::telemetry::init(settings.log.format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if settings.workers.threads > 0 {
        runtime.worker_threads(settings.workers.threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the runtime")),
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error as one line, each cause once, and picks the exit code.
fn fail(e: &anyhow::Error) -> ExitCode {
    let mut line = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        // One line: a multi-line message (every invalid rule) is joined.
        let text = cause
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // thiserror's `{0}` and `#[source]` together repeat a cause.
        if !text.is_empty() && !last.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        last = text;
    }
    eprintln!("pubbot: error: {line}");
    if std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0") {
        eprintln!("{:?}", e.backtrace());
    }
    ExitCode::from(exit_code(e))
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return EXIT_CONFIG;
        }
        if cause.downcast_ref::<DbUnreachable>().is_some() {
            return EXIT_DB_UNREACHABLE;
        }
    }
    EXIT_FAILED
}

/// PostgreSQL could not be reached: names where and what was tried.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach PostgreSQL at {target} (tried for {secs} s; check the database URL and that the server is up)")]
struct DbUnreachable {
    target: String,
    secs: u64,
    #[source]
    source: sqlx::Error,
}

async fn pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    match crate::db::connect(&settings.database).await {
        Ok(p) => Ok(p),
        Err(source @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_))) => {
            Err(anyhow::Error::new(DbUnreachable {
                target: settings.database_target(),
                secs: settings.database.acquire_timeout_secs,
                source,
            }))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "connecting to PostgreSQL at {}",
            settings.database_target()
        ))),
    }
}

async fn migrated_pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = pool(settings).await?;
    crate::db::check_schema(&pool).await?;
    Ok(pool)
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            // Every database `serve` will use, or the one named.
            if let Some(name) = &cli.database {
                settings.database_named(name)?;
            }
            for placement in settings.placements()? {
                if cli.database.as_ref().is_some_and(|n| *n != placement.name) {
                    continue;
                }
                let one = Settings {
                    database: placement.database.clone(),
                    ..settings.clone()
                };
                let pool = pool(&one).await?;
                crate::db::migrate(&pool).await.with_context(|| {
                    format!("applying migrations to database {}", placement.name)
                })?;
                println!("migrations applied ({})", placement.name);
            }
        }
        Command::Serve => {
            let pool = pool(&settings).await?;
            let listener =
                crate::pipeline::listener::bind(settings.http.listen, settings.http.listen_backlog)
                    .with_context(|| format!("binding http.listen {}", settings.http.listen))?;
            tracing::info!(database = %settings.database_target(), "configuration loaded");
            let token = CancellationToken::new();
            let running = crate::start_with_clock(
                settings,
                pool,
                listener,
                token.clone(),
                crate::clock::from_env(),
            )
            .await?;
            // systemd Type=notify: ready once listening with rules loaded.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            let watchdog = serve::watchdog(&running);
            serve::shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            if let Some(w) = watchdog {
                w.abort();
            }
            token.cancel();
            running.shutdown().await;
        }
        Command::Config => serve::show_config(&settings),
        Command::Prune {
            dry_run,
            days,
            json,
        } => {
            let pool = migrated_pool(&settings).await?;
            let days = days.unwrap_or(settings.retention.days);
            if days == 0 {
                anyhow::bail!("retention.days is 0 (keep everything): give --days N");
            }
            let cutoff = crate::admin::retention::cutoff(chrono::Utc::now().date_naive(), days);
            let started = std::time::Instant::now();
            let p = if dry_run {
                crate::admin::retention::dry_run(&pool, cutoff).await?
            } else {
                crate::admin::retention::prune(&pool, cutoff).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let verb = if dry_run { "would drop" } else { "dropped" };
                let list = |d: &[chrono::NaiveDate]| {
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "{verb} (days before {cutoff}, keeping {days}): {} days [{}], about {} rows; {} campaign chunks ({} ms)",
                    p.days.len(),
                    list(&p.days),
                    p.rows_estimate,
                    p.campaign_chunks,
                    started.elapsed().as_millis()
                );
                if !p.kept_open.is_empty() {
                    println!(
                        "kept (something in them is still open): {}",
                        list(&p.kept_open)
                    );
                }
            }
        }
        Command::Rules(cmd) => rules::rules(cmd, &settings).await?,
        Command::Console(cmd) => console::console(cmd, &settings).await?,
        Command::App(cmd) => app::app(cmd, &settings).await?,
        Command::Broadcast(cmd) => {
            let pool = migrated_pool(&settings).await?;
            broadcast::broadcast_cmd(cmd, &settings, &pool).await?;
        }
        Command::Campaign(cmd) => {
            let pool = migrated_pool(&settings).await?;
            broadcast::campaign_cmd(cmd, &settings, &pool).await?;
        }
        Command::Account(cmd) => account::account_cmd(cmd, &settings).await?,
        Command::Menu(cmd) => {
            let pool = migrated_pool(&settings).await?;
            account::menu_cmd(cmd, &settings, &pool).await?;
        }
        Command::Media(cmd) => {
            let pool = migrated_pool(&settings).await?;
            account::media_cmd(cmd, &settings, &pool).await?;
        }
        Command::Conversation {
            user,
            account,
            limit,
            json,
        } => {
            let pool = migrated_pool(&settings).await?;
            outbound::conversation_cmd(&user, account.as_deref(), limit, json, &settings, &pool)
                .await?;
        }
        Command::Handler(cmd) => {
            let pool = migrated_pool(&settings).await?;
            handler::handler_cmd(cmd, &settings, &pool).await?;
        }
        Command::Outbound(cmd) => {
            let pool = migrated_pool(&settings).await?;
            outbound::outbound_cmd(cmd, &settings, &pool).await?;
        }
        Command::Followers(cmd) => {
            let pool = migrated_pool(&settings).await?;
            followers::followers_cmd(cmd, &settings, &pool).await?;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            sim_listen,
            listen,
            admin_listen,
            console_listen,
            rules,
        } => {
            demo::run(
                settings,
                sim_listen,
                listen,
                admin_listen,
                console_listen,
                rules,
            )
            .await?
        }
    }
    Ok(())
}
