//! `pubbot`: the command line. Parses arguments and calls the library.
//!
//! Output: a command's result goes to stdout, logs and errors to stderr.
//! An error is one line (`pubbot: error: ...`, each cause once), with a
//! backtrace only under `RUST_BACKTRACE=1`. Exit codes: 0 done, 1 failed,
//! 2 usage, 69 the database cannot be reached, 78 configuration.

// glibc's allocator spent 30% of the daemon's CPU at ingest saturation
// (malloc_consolidate, arena locks); mimalloc is a drop-in (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "demo")]
mod demo;
mod ops;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pubbot::config::{ConfigError, Settings};
use pubbot_rules::{Context as RuleContext, Incoming, IncomingKind, Options, RuleFile, RuleSet};
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
    Rules(RulesCommand),
    /// The daily mass send (one a natural day, R11): schedule, one-off,
    /// list, show, cancel, history, resolve.
    #[command(subcommand)]
    Broadcast(ops::BroadcastCommand),
    /// A message to every follower (or a list of users) by batchsend.
    #[command(subcommand)]
    Campaign(ops::CampaignCommand),
    /// The followers pubbot tracks: count, list, export, subscribe,
    /// unsubscribe.
    #[command(subcommand)]
    Followers(ops::FollowersCommand),
    /// Accounts as code: apply a file, or read one account.
    #[command(subcommand)]
    Account(ops::AccountCommand),
    /// Menus as code: apply a file, show the stored menu.
    #[command(subcommand)]
    Menu(ops::MenuCommand),
    /// Uploaded media by local name: upload, news, list.
    #[command(subcommand)]
    Media(ops::MediaCommand),
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
    /// Failed replies, and sending them again.
    #[command(subcommand)]
    Outbound(ops::OutboundCommand),
    /// Handler bots that rules call over HTTP: add, list, test.
    #[command(subcommand)]
    Handler(ops::HandlerCommand),
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
        /// Rules to load.
        #[arg(long, default_value = "config/demo-rules.toml")]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
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
enum Format {
    Toml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
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

fn main() -> ExitCode {
    // Usage errors: clap prints them and exits 2.
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    pubbot::telemetry::init(settings.log.format);
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
    match pubbot::db::connect(&settings.database).await {
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
    pubbot::db::check_schema(&pool).await?;
    Ok(pool)
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let pool = pool(&settings).await?;
            pubbot::db::migrate(&pool)
                .await
                .context("applying migrations")?;
            println!("migrations applied");
        }
        Command::Serve => {
            let pool = pool(&settings).await?;
            let listener = tokio::net::TcpListener::bind(settings.http.listen)
                .await
                .with_context(|| format!("binding http.listen {}", settings.http.listen))?;
            tracing::info!(database = %settings.database_target(), "configuration loaded");
            let token = CancellationToken::new();
            let running = pubbot::start(settings, pool, listener, token.clone()).await?;
            // systemd Type=notify: ready once listening with rules loaded.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            let watchdog = watchdog(&running);
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            if let Some(w) = watchdog {
                w.abort();
            }
            token.cancel();
            running.shutdown().await;
        }
        Command::Config => show_config(&settings),
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
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
            let p = if dry_run {
                pubbot::retention::dry_run(&pool, cutoff).await?
            } else {
                pubbot::retention::prune(&pool, cutoff, settings.retention.batch).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} (older than {days} days, before {}): {} replies, {} pushes, {} campaign chunks",
                    cutoff.format("%Y-%m-%d %H:%M UTC"),
                    p.replies,
                    p.pushes,
                    p.campaign_chunks
                );
            }
        }
        Command::Rules(cmd) => rules(cmd, &settings).await?,
        Command::Broadcast(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::broadcast_cmd(cmd, &settings, &pool).await?;
        }
        Command::Campaign(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::campaign_cmd(cmd, &settings, &pool).await?;
        }
        Command::Account(cmd) => ops::account_cmd(cmd, &settings).await?,
        Command::Menu(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::menu_cmd(cmd, &settings, &pool).await?;
        }
        Command::Media(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::media_cmd(cmd, &settings, &pool).await?;
        }
        Command::Conversation {
            user,
            account,
            limit,
            json,
        } => {
            let pool = migrated_pool(&settings).await?;
            ops::conversation_cmd(&user, account.as_deref(), limit, json, &pool).await?;
        }
        Command::Handler(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::handler_cmd(cmd, &settings, &pool).await?;
        }
        Command::Outbound(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::outbound_cmd(cmd, &settings, &pool).await?;
        }
        Command::Followers(cmd) => {
            let pool = migrated_pool(&settings).await?;
            ops::followers_cmd(cmd, &settings, &pool).await?;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            sim_listen,
            listen,
            admin_listen,
            rules,
        } => demo::run(settings, sim_listen, listen, admin_listen, rules).await?,
    }
    Ok(())
}

/// Pings systemd's watchdog every half `WatchdogSec` while no stage is
/// stuck, so systemd restarts a wedged daemon.
fn watchdog(running: &pubbot::Running) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    let health = running.health();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let stuck = health.stuck();
            if stuck.is_empty() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!(?stuck, "not pinging the watchdog: a stage is stuck");
            }
        }
    }))
}

fn show_config(settings: &Settings) {
    println!("database        {}", settings.database_target());
    println!("webhook         {}", settings.http.listen);
    println!("admin           {}", settings.http.admin_listen);
    println!(
        "spool           {}",
        settings
            .spool_dir()
            .map_or_else(|| "off".to_owned(), |d| d.display().to_string())
    );
    println!(
        "workers         decide {} send {} (lease {} s)",
        settings.workers.decide, settings.workers.send, settings.workers.lease_secs
    );
    for app in &settings.apps {
        let accounts = match &app.accounts {
            pubbot::config::Hosted::Every => "every account (\"*\")".to_owned(),
            other => other.listed().join(", "),
        };
        println!(
            "app             {} -> {} ({} calls/s, {:?} timestamps), accounts: {accounts}",
            app.key, app.api_base_url, app.rate_limit_per_sec, app.timestamp_unit
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn read_rule_file(path: &std::path::Path) -> anyhow::Result<RuleFile> {
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

async fn rules(cmd: RulesCommand, settings: &Settings) -> anyhow::Result<()> {
    let pool = pool(settings).await?;
    pubbot::db::check_schema(&pool).await?;
    let options = Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    match cmd {
        RulesCommand::Import { file, replace } => {
            let parsed = read_rule_file(&file)?;
            for w in pubbot::rules::scope_warnings(&parsed, settings) {
                eprintln!("pubbot: warning: {w}");
            }
            let done = pubbot::rules::import(&pool, parsed, &options, replace)
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
            let file = pubbot::rules::export(&pool).await?;
            match format {
                Format::Toml => print!("{}", file.to_toml()?),
                Format::Json => println!("{}", file.to_json()),
            }
        }
        RulesCommand::List => {
            println!(
                "{:>5}  {:<8} {:>8}  {:<9} {:<20} NAME",
                "ID", "STATE", "PRIORITY", "KIND", "SCOPE"
            );
            for r in pubbot::rules::load(&pool).await? {
                let scope = format!(
                    "{}/{}",
                    r.app_key.as_deref().unwrap_or("*"),
                    r.mcid.as_deref().unwrap_or("*")
                );
                println!(
                    "{:>5}  {:<8} {:>8}  {:<9} {:<20} {}",
                    r.id,
                    if r.enabled { "enabled" } else { "disabled" },
                    r.priority,
                    format!("{:?}", r.kind).to_lowercase(),
                    scope,
                    r.name
                );
            }
        }
        RulesCommand::Enable { name } => {
            pubbot::rules::set_enabled(&pool, &name, true).await?;
            println!("enabled {name}");
        }
        RulesCommand::Disable { name } => {
            pubbot::rules::set_enabled(&pool, &name, false).await?;
            println!("disabled {name}");
        }
        RulesCommand::Delete { name } => {
            pubbot::rules::delete(&pool, &name).await?;
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
            let options = pubbot::rules::with_media(&pool, &options).await?;
            let set = RuleSet::compile(pubbot::rules::load(&pool).await?, &options)?;
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
            let msg = Incoming {
                app_key: &app,
                mcid: &account,
                user: &user,
                kind,
                text: &text,
                event: &event,
                state: state.as_ref(),
            };
            let e = set.explain(
                &msg,
                &RuleContext {
                    now: chrono::Utc::now(),
                    random: rand::random(),
                },
            );
            for v in &e.rules {
                println!(
                    "{} {:<24} {}",
                    if v.matched { "✔" } else { "·" },
                    v.rule,
                    v.reason
                );
            }
            println!();
            if e.decision.replies.is_empty() {
                println!("no reply");
            }
            for r in &e.decision.replies {
                match r {
                    pubbot_rules::PlannedReply::Handler {
                        handler, fallback, ..
                    } => println!(
                        "handler: {handler} (its answer becomes the replies; fallback: {})",
                        serde_json::to_string(fallback)?
                    ),
                    other => println!("reply: {}", serde_json::to_string(other)?),
                }
            }
            if !e.decision.state_set.is_empty() || !e.decision.state_clear.is_empty() {
                println!(
                    "state: {}",
                    pubbot_rules::next_state(state.as_ref(), &e.decision)
                );
            }
            for p in &e.decision.problems {
                println!("problem in {}: {}", p.rule, p.message);
            }
        }
    }
    Ok(())
}
