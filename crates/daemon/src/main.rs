//! `pubbot`: the command line. Parses arguments and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pubbot",
    version,
    about = "Host bots for Public Service accounts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Run the platform simulator on 127.0.0.1:8090 with the app
    /// demo-app:demo-secret, to try the API by hand.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let pool = sqlx::PgPool::connect(&database_url)
                .await
                .context("connecting to the database")?;
            pubbot::db::migrate(&pool)
                .await
                .context("applying migrations")?;
            println!("migrations applied");
        }
        Command::Demo { listen } => {
            let sim = pubbot_sim::Simulator::new(pubbot_sim::SimConfig {
                apps: vec![pubbot_sim::AppCredentials {
                    key: "demo-app".into(),
                    secret: "demo-secret".into(),
                }],
                ..pubbot_sim::SimConfig::default()
            })
            .map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("platform simulator on http://{listen} (app demo-app, secret demo-secret); Ctrl-C stops");
            sim.serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
    }
    Ok(())
}
