//! Accounts as code (`pubbot account apply`): `add` when `info` does not
//! know the account, `refresh` when a profile field differs, `setUrl` /
//! `setSwitch` when routing differs, nothing when all is equal.

use std::collections::HashMap;

use pubbot_api_client::{AccountProfile, Client, ErrorCode, McId, NewAccount};
use serde::{Deserialize, Serialize};

use super::AccountError;

/// `accounts.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// The app (default: the only configured one).
    #[serde(default)]
    pub app: Option<String>,
    /// The accounts.
    #[serde(rename = "account", default)]
    pub accounts: Vec<DesiredAccount>,
}

/// One account as it should be.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredAccount {
    /// The account id.
    pub mcid: String,
    /// Display name.
    pub display_name: String,
    /// Portrait URL.
    pub portrait_url: String,
    /// Introduction (required by the platform).
    pub introduction: String,
    /// `uiType`.
    #[serde(default)]
    pub ui_type: i64,
    /// `isFollow` (only at add: refresh cannot change it).
    #[serde(default = "yes")]
    pub is_follow: bool,
    /// Route URL; default `{http.public_base_url}/webhook/{app}`.
    #[serde(default)]
    pub route_url: Option<String>,
    /// Route switch; default on.
    #[serde(default = "yes")]
    pub route_open: bool,
}

fn yes() -> bool {
    true
}

/// One step of an account plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AccountStep {
    /// `/mc/add.json` (then `setSwitch` if the route is to be closed).
    Add(String),
    /// `/mc/refresh.json`, with what differs.
    Refresh(String, Vec<String>),
    /// `/mc/route/setUrl.json`.
    SetUrl(String, String),
    /// `/mc/route/setSwitch.json`.
    SetSwitch(String, bool),
    /// Nothing to do.
    Same(String),
    /// A difference no call can fix (`isFollow` after add).
    Warn(String, String),
}

impl std::fmt::Display for AccountStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Add(m) => write!(f, "+ add {m}"),
            Self::Refresh(m, what) => write!(f, "~ refresh {m}: {}", what.join(", ")),
            Self::SetUrl(m, url) => write!(f, "~ route url of {m} -> {url}"),
            Self::SetSwitch(m, open) => {
                write!(f, "~ route of {m} {}", if *open { "on" } else { "off" })
            }
            Self::Same(m) => write!(f, "= {m} (no change)"),
            Self::Warn(m, w) => write!(f, "! {m}: {w}"),
        }
    }
}

fn not_found(e: &pubbot_api_client::Error) -> bool {
    matches!(e.code(), Some(ErrorCode::BadParameter))
}

/// Plans what `apply` would do for `accounts`.
///
/// # Errors
/// Platform errors other than "no such account".
pub async fn plan_accounts(
    client: &Client,
    accounts: &[DesiredAccount],
    default_route: &str,
) -> Result<Vec<AccountStep>, AccountError> {
    let mut plan = Vec::new();
    for a in accounts {
        let route = a
            .route_url
            .clone()
            .unwrap_or_else(|| default_route.to_owned());
        match client.account_info(&McId::from(a.mcid.as_str())).await {
            Ok(info) => {
                let mut diff = Vec::new();
                if info.display_name != a.display_name {
                    diff.push(format!(
                        "display_name {:?} -> {:?}",
                        info.display_name, a.display_name
                    ));
                }
                if info.portrait_url != a.portrait_url {
                    diff.push(format!(
                        "portrait_url {:?} -> {:?}",
                        info.portrait_url, a.portrait_url
                    ));
                }
                if info.introduction != a.introduction {
                    diff.push(format!(
                        "introduction {:?} -> {:?}",
                        info.introduction, a.introduction
                    ));
                }
                if info.ui_type != a.ui_type {
                    diff.push(format!("ui_type {} -> {}", info.ui_type, a.ui_type));
                }
                let before = plan.len();
                if !diff.is_empty() {
                    plan.push(AccountStep::Refresh(a.mcid.clone(), diff));
                }
                if info.route_url != route {
                    plan.push(AccountStep::SetUrl(a.mcid.clone(), route.clone()));
                }
                if info.route_open != a.route_open {
                    plan.push(AccountStep::SetSwitch(a.mcid.clone(), a.route_open));
                }
                if info.is_follow != a.is_follow {
                    plan.push(AccountStep::Warn(
                        a.mcid.clone(),
                        "is_follow differs, and the platform changes it only at add".into(),
                    ));
                }
                if plan.len() == before {
                    plan.push(AccountStep::Same(a.mcid.clone()));
                }
            }
            Err(e) if not_found(&e) => {
                plan.push(AccountStep::Add(a.mcid.clone()));
                if !a.route_open {
                    plan.push(AccountStep::SetSwitch(a.mcid.clone(), false));
                }
            }
            Err(e) => {
                return Err(AccountError::platform(format!(
                    "reading account {}",
                    a.mcid
                ))(e))
            }
        }
    }
    Ok(plan)
}

/// Carries out a plan.
///
/// # Errors
/// The first platform error, naming the step.
pub async fn apply_accounts(
    client: &Client,
    accounts: &[DesiredAccount],
    default_route: &str,
    plan: &[AccountStep],
) -> Result<(), AccountError> {
    let by_id: HashMap<&str, &DesiredAccount> =
        accounts.iter().map(|a| (a.mcid.as_str(), a)).collect();
    let profile = |a: &DesiredAccount| AccountProfile {
        display_name: a.display_name.clone(),
        portrait_url: a.portrait_url.clone(),
        ui_type: a.ui_type,
        introduction: a.introduction.clone(),
    };
    for step in plan {
        let r = match step {
            AccountStep::Add(m) => {
                let a = by_id[m.as_str()];
                client
                    .add_account(&NewAccount {
                        mcid: m.as_str().into(),
                        profile: profile(a),
                        is_follow: a.is_follow,
                        route_url: a
                            .route_url
                            .clone()
                            .unwrap_or_else(|| default_route.to_owned()),
                    })
                    .await
                    .map(drop)
            }
            AccountStep::Refresh(m, _) => client
                .refresh_account(&m.as_str().into(), &profile(by_id[m.as_str()]))
                .await
                .map(drop),
            AccountStep::SetUrl(m, url) => client
                .set_route_url(&m.as_str().into(), url)
                .await
                .map(drop),
            AccountStep::SetSwitch(m, open) => client
                .set_route_switch(&m.as_str().into(), *open)
                .await
                .map(drop),
            AccountStep::Same(_) | AccountStep::Warn(..) => Ok(()),
        };
        r.map_err(AccountError::platform(step.to_string()))?;
    }
    Ok(())
}
