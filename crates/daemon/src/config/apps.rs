//! `[[apps]]`: an app key, its secrets, the platform it calls and the
//! accounts pubbot hosts for it (R16).

use std::path::PathBuf;

use super::{invalid, ConfigError};
use secrecy::SecretString;
use serde::Deserialize;

/// One `[[apps]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// App key.
    pub key: String,
    /// Secret.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// File holding the secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Older secrets still accepted on pushes.
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// Platform API base URL.
    pub api_base_url: String,
    /// Calls per second.
    #[serde(default = "default_rate")]
    pub rate_limit_per_sec: u32,
    /// The accounts of this app key pubbot answers for (R16): a list, or
    /// `"*"` for every account of the app key. A push for any other
    /// account is stored but not answered.
    #[serde(default)]
    pub accounts: Hosted,
    /// The unit of `RC-Timestamp` on calls (R2): the header table says
    /// milliseconds, the document's example seconds.
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// The database this app lives on: the `NAME` of a `[databases.NAME]`;
    /// unset, `[database]`. Its pushes, replies, rules' effects,
    /// followers and broadcasts are all kept there.
    #[serde(default)]
    pub database: Option<String>,
    /// While the app moves to another database (`pubbot app move`): the
    /// `NAME` it goes to. Both databases' pipelines then serve it; once
    /// the move is done, set `database` to it and remove this.
    #[serde(default)]
    pub move_to: Option<String>,
}

/// `timestamp_unit` of an app (R2).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    /// Seconds, as the document's example and PHP code send (default).
    #[default]
    Seconds,
    /// Milliseconds, as the header table says.
    Milliseconds,
}

impl From<TimestampUnit> for pubbot_protocol::TimestampUnit {
    fn from(u: TimestampUnit) -> Self {
        match u {
            TimestampUnit::Seconds => Self::Seconds,
            TimestampUnit::Milliseconds => Self::Milliseconds,
        }
    }
}

/// Which accounts of an app key pubbot hosts (R16).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Hosted {
    /// `accounts = "*"`: every account of the app key.
    Every,
    /// `accounts = ["shop", ...]`.
    Only(Vec<String>),
    /// Not set: refused at start.
    #[default]
    Unset,
}

impl Hosted {
    /// Whether pubbot answers for `mcid`.
    pub fn hosts(&self, mcid: &str) -> bool {
        match self {
            Self::Every => true,
            Self::Only(list) => list.iter().any(|m| m == mcid),
            Self::Unset => false,
        }
    }

    /// The accounts listed (none for `"*"`).
    pub fn listed(&self) -> &[String] {
        match self {
            Self::Only(list) => list,
            _ => &[],
        }
    }
}

impl<'de> Deserialize<'de> for Hosted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) if s == "*" => Ok(Self::Every),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "accounts is a list of accounts, or \"*\" for every account; got {s:?}"
            ))),
            Raw::List(l) => Ok(Self::Only(l)),
        }
    }
}

fn default_rate() -> u32 {
    50
}

impl AppSettings {
    /// The signing secret (from `secret` or `secret_file`).
    ///
    /// # Errors
    /// When neither or both are set, or the file cannot be read.
    pub fn signing_secret(&self) -> Result<SecretString, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        format!("apps.{}.secret_file", self.key),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok(SecretString::from(text.trim().to_owned()))
            }
            (Some(_), Some(_)) => Err(invalid(
                format!("apps.{}", self.key),
                "set secret or secret_file, not both",
            )),
            (None, None) => Err(invalid(
                format!("apps.{}", self.key),
                "secret or secret_file is required",
            )),
        }
    }

    /// Every secret accepted on pushes: the signing one first.
    ///
    /// # Errors
    /// As [`Self::signing_secret`].
    pub fn push_secrets(&self) -> Result<Vec<SecretString>, ConfigError> {
        let mut all = vec![self.signing_secret()?];
        all.extend(self.secrets.iter().cloned());
        Ok(all)
    }
}

impl super::Settings {
    /// A client for an operator's calls to `app_key`'s platform API (the
    /// CLI's, the console's): idempotent calls are tried again with backoff
    /// on retryable answers (1000, 1008, 5xx, no answer), as the platform's
    /// error texts say; adds and sends are not (they could land twice).
    ///
    /// # Errors
    /// The app is not configured, or its secret cannot be read.
    pub fn operator_client(&self, app_key: &str) -> anyhow::Result<pubbot_api_client::Client> {
        use anyhow::Context as _;
        let app = self
            .apps
            .iter()
            .find(|a| a.key == app_key)
            .with_context(|| format!("app {app_key:?} is not configured"))?;
        Ok(pubbot_api_client::Client::builder(
            app.key.clone(),
            app.signing_secret()?,
            app.api_base_url.clone(),
        )
        .timestamp_unit(app.timestamp_unit.into())
        .retry(pubbot_api_client::RetryPolicy::default())
        .build()?)
    }
}
