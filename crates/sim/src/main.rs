//! `pubbot-sim`: run the platform simulator, or sign a call for curl.

// The load generator allocates per push; glibc's allocator cost more CPU
// than the pushing itself (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pubbot_sim::{AppCredentials, Faults, PushConfig, SimConfig, Simulator};

#[derive(Parser)]
#[command(
    name = "pubbot-sim",
    version,
    about = "The Public Service platform, simulated"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Threads of the simulator's runtime. 1 (the default) runs everything
    /// on one thread, which costs the least CPU per push and call up to a
    /// few thousand a second; more take more pushes a second at a higher
    /// cost each (BENCHMARKS.md).
    #[arg(long, global = true, default_value_t = 1, env = "PUBBOT_SIM_THREADS")]
    threads: usize,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "PUBBOT_SIM_LISTEN")]
    listen: SocketAddr,
    /// An app as KEY:SECRET; repeat for several.
    #[arg(long = "app", value_parser = AppCredentials::parse, default_value = "demo-app:demo-secret")]
    apps: Vec<AppCredentials>,
    /// Accepted RC-Timestamp skew in seconds (R2).
    #[arg(long, default_value_t = 300)]
    skew_secs: u64,
    /// Accept only this RC-Timestamp unit on calls: either, seconds or
    /// milliseconds (R2).
    #[arg(long, value_enum, default_value_t = UnitArg::Either)]
    timestamp_unit: UnitArg,
    /// Push attempt timeout in milliseconds (the platform: 5000).
    #[arg(long, default_value_t = 5000)]
    push_timeout_ms: u64,
    /// Push attempts in all, the first included (the platform: a first
    /// try and three retries).
    #[arg(long, default_value_t = 4)]
    push_tries: u32,
    /// Also retry a push answered with a 5xx (the document retries only
    /// when there is no answer within the timeout).
    #[arg(long)]
    push_retry_on_5xx: bool,
    /// Pause between push attempts, in milliseconds.
    #[arg(long, default_value_t = 500)]
    push_retry_delay_ms: u64,
    /// Push tries in flight at once (the platform's connections); a try
    /// waits for one within its timeout.
    #[arg(long, default_value_t = 2048)]
    push_connections: usize,
    /// Answer 1008 above this many calls per second and app.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Fraction of calls answered 1000.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of calls whose connection is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the platform API and the control API (the default).
    Serve,
    /// Load generator: serve the platform (for the daemon's replies) and push
    /// `bench <n>` messages to a routeUrl, then report acknowledged pushes,
    /// lost and duplicate replies and push-to-reply latency. The daemon must
    /// answer `ack <n>` (config/bench-rules.toml).
    Load {
        /// The daemon's webhook for the app.
        #[arg(long)]
        route_url: String,
        /// Account pushed to.
        #[arg(long, default_value = "bench")]
        mcid: String,
        /// Pushes per second (open loop).
        #[arg(long, conflicts_with = "concurrency")]
        rate: Option<u32>,
        /// Closed loop: this many pushers at once, as fast as acknowledged.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Seconds of pushing.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Distinct users.
        #[arg(long, default_value_t = 1000)]
        users: u32,
        /// Every push from a new user; replies are matched by recipient, so
        /// the daemon may answer anything (one static reply to all, say).
        #[arg(long)]
        unique_users: bool,
        /// Seconds to wait for the last replies.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Write to an account as a user of a running simulator (its control
    /// API), then print what became of the push and the replies the user
    /// got: try a bot's rules from the command line.
    #[command(
        after_help = "Examples:\n  pubbot-sim message --mcid shop --user alice \"opening hours?\"\n  pubbot-sim message --mcid shop --user alice --image http://example.com/p.jpg\n  pubbot-sim message --mcid shop --user alice --follow"
    )]
    Message {
        /// The simulator's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8090", env = "PUBBOT_SIM_URL")]
        sim: String,
        /// App key (needed when the simulator serves several apps).
        #[arg(long)]
        app_key: Option<String>,
        /// The account written to.
        #[arg(long)]
        mcid: String,
        /// The user writing.
        #[arg(long)]
        user: String,
        /// Send an image by URL instead of text.
        #[arg(long, conflicts_with_all = ["text", "follow", "unfollow"])]
        image: Option<String>,
        /// Follow the account (the subscribe event) instead of writing.
        #[arg(long, conflicts_with_all = ["text", "unfollow"])]
        follow: bool,
        /// Unfollow the account (the unsubscribe event).
        #[arg(long, conflicts_with = "text")]
        unfollow: bool,
        /// Seconds to wait for replies after the push is answered.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        /// The text to write.
        text: Option<String>,
    },
    /// Print the four signature headers for a call, as curl -H arguments.
    Sign {
        /// App key.
        #[arg(long, default_value = "demo-app")]
        app_key: String,
        /// App secret.
        #[arg(long, default_value = "demo-secret")]
        secret: String,
        /// Print query parameters (for /media/upload and /media/uploadnews)
        /// instead of headers.
        #[arg(long)]
        query: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.serve).await,
        Command::Load {
            route_url,
            mcid,
            rate,
            concurrency,
            duration,
            users,
            unique_users,
            grace,
        } => {
            let config = sim_config(&cli.serve);
            let listener = tokio::net::TcpListener::bind(cli.serve.listen)
                .await
                .with_context(|| format!("binding {}", cli.serve.listen))?;
            let load = pubbot_sim::load::LoadConfig {
                mcid,
                route_url,
                rate: if concurrency.is_some() {
                    None
                } else {
                    Some(rate.unwrap_or(100))
                },
                concurrency: concurrency.unwrap_or(1),
                duration: Duration::from_secs(duration),
                users,
                unique_users,
                grace: Duration::from_secs(grace),
            };
            let report = pubbot_sim::load::run(config, listener, load).await?;
            println!("{report}");
            Ok(())
        }
        Command::Message {
            sim,
            app_key,
            mcid,
            user,
            image,
            follow,
            unfollow,
            wait,
            text,
        } => {
            let (path, mut body) = if follow || unfollow {
                (
                    if follow { "follow" } else { "unfollow" },
                    serde_json::json!({"mcid": mcid, "user": user}),
                )
            } else if let Some(url) = image {
                (
                    "message",
                    serde_json::json!({"mcid": mcid, "user": user, "type": "image", "pic_url": url}),
                )
            } else {
                let Some(text) = text else {
                    anyhow::bail!(
                        "say what the user writes: a TEXT, --image URL, --follow or --unfollow"
                    );
                };
                (
                    "message",
                    serde_json::json!({"mcid": mcid, "user": user, "type": "text", "content": text}),
                )
            };
            body["wait"] = true.into();
            if let Some(k) = &app_key {
                body["app_key"] = k.as_str().into();
            }
            pubbot_sim::cli::message(
                &sim,
                path,
                body,
                &user,
                app_key.as_deref(),
                Duration::from_secs_f64(wait),
            )
            .await
        }
        Command::Sign {
            app_key,
            secret,
            query,
        } => {
            let nonce = rand_nonce();
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = pubbot_sim::signature::sign(&secret, &nonce, &ts);
            if query {
                println!(
                    "RC-App-Key={app_key}&RC-Nonce={nonce}&RC-Timestamp={ts}&RC-Signature={sig}"
                );
            } else {
                println!("-H RC-App-Key:{app_key} -H RC-Nonce:{nonce} -H RC-Timestamp:{ts} -H RC-Signature:{sig}");
            }
            Ok(())
        }
    }
}

fn rand_nonce() -> String {
    rand::random::<u32>().to_string()
}

/// `--timestamp-unit`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum UnitArg {
    Either,
    Seconds,
    Milliseconds,
}

fn sim_config(args: &ServeArgs) -> SimConfig {
    SimConfig {
        apps: args.apps.clone(),
        skew_secs: args.skew_secs,
        timestamp_unit: match args.timestamp_unit {
            UnitArg::Either => pubbot_sim::AcceptedUnit::Either,
            UnitArg::Seconds => pubbot_sim::AcceptedUnit::Seconds,
            UnitArg::Milliseconds => pubbot_sim::AcceptedUnit::Milliseconds,
        },
        push: PushConfig {
            timeout: Duration::from_millis(args.push_timeout_ms),
            tries: args.push_tries,
            retry_delay: Duration::from_millis(args.push_retry_delay_ms),
            retry_on_5xx: args.push_retry_on_5xx,
            connections: args.push_connections,
            ..PushConfig::default()
        },
        faults: Faults {
            rate_limit_per_sec: args.rate_limit,
            error_rate: args.error_rate,
            latency_ms: args.latency_ms,
            drop_rate: args.drop_rate,
        },
        ..SimConfig::default()
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = sim_config(&args);
    let keys: Vec<&str> = config.apps.iter().map(|a| a.key.as_str()).collect();
    tracing::info!(listen = %args.listen, apps = ?keys, "pubbot-sim serving; control API under /_sim");
    let sim = Simulator::new(config).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    sim.serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
