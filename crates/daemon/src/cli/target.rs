//! Which app and account a command is for, and the app's client.

use crate::config::Settings;
use anyhow::{bail, Context};
use clap::Args;

/// The account an operation is for.
#[derive(Args, Debug, Clone)]
pub(super) struct Target {
    /// App key (default: the only configured app).
    #[arg(long)]
    app: Option<String>,
    /// Account (mcid); must be hosted by the app (apps.accounts).
    #[arg(long)]
    account: String,
}

impl Target {
    pub(super) fn resolve(&self, settings: &Settings) -> anyhow::Result<(String, String)> {
        let app = match (&self.app, settings.apps.as_slice()) {
            (Some(a), _) => settings
                .apps
                .iter()
                .find(|x| &x.key == a)
                .with_context(|| format!("app {a:?} is not configured (apps.key)"))?,
            (None, [only]) => only,
            (None, []) => bail!("no app is configured ([[apps]])"),
            (None, _) => bail!("several apps are configured: say which with --app"),
        };
        if !app.accounts.hosts(&self.account) {
            bail!(
                "account {:?} is not hosted by app {:?} (apps.accounts)",
                self.account,
                app.key
            );
        }
        Ok((app.key.clone(), self.account.clone()))
    }
}

pub(super) fn client(
    settings: &Settings,
    app_key: &str,
) -> anyhow::Result<pubbot_api_client::Client> {
    settings.operator_client(app_key)
}

pub(super) fn app_of(settings: &Settings, app: &Option<String>) -> anyhow::Result<String> {
    match (app, settings.apps.as_slice()) {
        (Some(a), _) if settings.apps.iter().any(|x| &x.key == a) => Ok(a.clone()),
        (Some(a), _) => bail!("app {a:?} is not configured (apps.key)"),
        (None, [only]) => Ok(only.key.clone()),
        (None, []) => bail!("no app is configured ([[apps]])"),
        (None, _) => bail!("several apps are configured: say which with --app"),
    }
}
