//! `pubbot`: the command line. Parses arguments and calls the library.

// glibc's allocator spent 30% of the daemon's CPU at ingest saturation
// (malloc_consolidate, arena locks); mimalloc is a drop-in (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pubbot::config::Settings;
use pubbot_rules::{Context as RuleContext, Incoming, IncomingKind, Options, RuleFile, RuleSet};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pubbot",
    version,
    about = "Host bots for Public Service accounts"
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
    Migrate,
    /// Run the daemon: webhook, decide and send workers.
    Serve,
    /// Manage the reply rules stored in the database.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Everything at once on this machine: the platform simulator, the
    /// daemon and demo rules, against DATABASE_URL (scripts/demo.sh brings
    /// up a throwaway PostgreSQL for it).
    Demo {
        /// Simulator address.
        #[arg(long, default_value = "127.0.0.1:8090")]
        sim_listen: std::net::SocketAddr,
        /// Daemon webhook address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Rules to load.
        #[arg(long, default_value = "config/demo-rules.toml")]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a TOML (or .json) file and store its rules, by name; nothing
    /// is written when any rule is invalid.
    Import {
        /// The file.
        file: PathBuf,
        /// Also delete stored rules the file does not name.
        #[arg(long)]
        replace: bool,
    },
    /// Print the stored rules as TOML (or JSON).
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Toml)]
        format: Format,
    },
    /// One line per stored rule.
    List,
    /// Turn a rule on.
    Enable {
        /// Rule name.
        name: String,
    },
    /// Turn a rule off.
    Disable {
        /// Rule name.
        name: String,
    },
    /// Dry run: what the stored rules answer to a message, and why.
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

async fn pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    pubbot::db::connect(&settings.database)
        .await
        .context("connecting to the database (database.url)")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    pubbot::telemetry::init(settings.log.format);
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
            let token = CancellationToken::new();
            let running = pubbot::start(settings, pool, listener, token.clone()).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            token.cancel();
            running.shutdown().await;
        }
        Command::Rules(cmd) => rules(cmd, &settings).await?,
        Command::Demo {
            sim_listen,
            listen,
            rules,
        } => demo(settings, sim_listen, listen, rules).await?,
    }
    Ok(())
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
            let n = pubbot::rules::import(&pool, parsed, &options, replace).await?;
            println!("imported {n} rule(s) from {}", file.display());
        }
        RulesCommand::Export { format } => {
            let file = pubbot::rules::export(&pool).await?;
            match format {
                Format::Toml => print!("{}", file.to_toml()?),
                Format::Json => println!("{}", file.to_json()),
            }
        }
        RulesCommand::List => {
            for r in pubbot::rules::load(&pool).await? {
                let scope = format!(
                    "{}/{}",
                    r.app_key.as_deref().unwrap_or("*"),
                    r.mcid.as_deref().unwrap_or("*")
                );
                println!(
                    "{:>5}  {:<8} {:>4}  {:<9} {:<20} {}",
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
        RulesCommand::Test {
            app,
            account,
            user,
            kind,
            text,
            event,
        } => {
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
                println!("reply: {}", serde_json::to_string(r)?);
            }
            for p in &e.decision.problems {
                println!("problem in {}: {}", p.rule, p.message);
            }
        }
    }
    Ok(())
}

async fn demo(
    mut settings: Settings,
    sim_listen: std::net::SocketAddr,
    listen: std::net::SocketAddr,
    rules_file: PathBuf,
) -> anyhow::Result<()> {
    use secrecy::SecretString;

    let key = "demo-app";
    let secret = "demo-secret";
    let sim = pubbot_sim::Simulator::new(pubbot_sim::SimConfig {
        apps: vec![pubbot_sim::AppCredentials {
            key: key.into(),
            secret: secret.into(),
        }],
        ..pubbot_sim::SimConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let sim_listener = tokio::net::TcpListener::bind(sim_listen)
        .await
        .with_context(|| format!("binding {sim_listen}"))?;
    let token = CancellationToken::new();
    let stop = token.clone();
    let sim_task = {
        let sim = sim.clone();
        tokio::spawn(async move {
            sim.serve(sim_listener, async move { stop.cancelled().await })
                .await
        })
    };

    settings.apps = vec![pubbot::config::AppSettings {
        key: key.into(),
        secret: Some(SecretString::from(secret)),
        secret_file: None,
        secrets: Vec::new(),
        api_base_url: format!("http://{sim_listen}"),
        rate_limit_per_sec: 50,
        accounts: pubbot::config::Hosted::Only(vec!["shop".into()]),
        timestamp_unit: pubbot::config::TimestampUnit::Seconds,
    }];
    let pool = pool(&settings).await?;
    pubbot::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    let options = Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    let n = pubbot::rules::import(&pool, read_rule_file(&rules_file)?, &options, false).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let running = pubbot::start(settings.clone(), pool, listener, token.clone()).await?;

    let api = pubbot_api_client::Client::builder(
        key,
        SecretString::from(secret),
        format!("http://{sim_listen}"),
    )
    .build()?;
    let account = pubbot_api_client::NewAccount {
        mcid: "shop".into(),
        profile: pubbot_api_client::AccountProfile {
            display_name: "Demo Shop".into(),
            portrait_url: "http://example.com/logo.png".into(),
            ui_type: 0,
            introduction: "pubbot demo".into(),
        },
        is_follow: false,
        route_url: format!("http://{listen}/webhook/{key}"),
    };
    match api.add_account(&account).await {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "creating the demo account"),
    }
    println!("pubbot demo: {n} rule(s) from {}", rules_file.display());
    println!("  platform simulator  http://{sim_listen}   (app {key}, secret {secret})");
    println!("  pubbot webhook      http://{listen}/webhook/{key}");
    let control = format!("http://{sim_listen}/_sim");
    let http = pubbot_api_client::HttpClient::new();
    let script = [
        (
            "follow",
            serde_json::json!({"mcid": "shop", "user": "alice", "wait": true}),
        ),
        (
            "message",
            serde_json::json!({"mcid": "shop", "user": "alice", "type": "text", "content": "What are your opening hours?", "wait": true}),
        ),
        (
            "message",
            serde_json::json!({"mcid": "shop", "user": "alice", "type": "text", "content": "ＨＥＬＬＯ", "wait": true}),
        ),
        (
            "message",
            serde_json::json!({"mcid": "shop", "user": "alice", "type": "image", "pic_url": "http://example.com/cat.jpg", "wait": true}),
        ),
    ];
    for (what, body) in script {
        println!(
            "\nalice -> shop: {what} {}",
            body.get("content")
                .or(body.get("pic_url"))
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        http.post(format!("{control}/{what}"))
            .json(&body)
            .send()
            .await?;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let inbox: serde_json::Value = http
        .get(format!("{control}/inbox/alice"))
        .send()
        .await?
        .json()
        .await?;
    println!("\nalice's inbox on the platform:");
    for d in inbox.as_array().into_iter().flatten() {
        println!(
            "  shop -> alice [{}] {}",
            d["msgtype"].as_str().unwrap_or("?"),
            d["payload"]
        );
    }
    println!("\nTry it yourself (Ctrl-C stops):");
    println!("  curl -s {control}/message -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"mcid\":\"shop\",\"user\":\"bob\",\"type\":\"text\",\"content\":\"hours?\",\"wait\":true}}'");
    println!("  curl -s {control}/inbox/bob");
    shutdown_signal().await;
    token.cancel();
    running.shutdown().await;
    let _ = sim_task.await;
    Ok(())
}
