//! `[console]`: the web console's settings.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[console]`: the web console (`crate::console`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Its own listener; unset: no console. Never the webhook's address
    /// (refused at start), so the platform-facing port exposes no pages.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The path a reverse proxy forwards to the console (`/pubbot`);
    /// empty: served at the root.
    pub path_prefix: String,
    /// The session cookie is `Secure` (HTTPS only). Off only where the
    /// console is reached over plain HTTP on a trusted network.
    pub secure_cookies: bool,
    /// Hours a sign-in lasts.
    pub session_hours: u32,
    /// Failed sign-ins allowed per name, and per client address, within
    /// `login_window_secs`; more are refused until the window passes.
    pub login_max_failures: u32,
    /// The window failed sign-ins are counted over.
    pub login_window_secs: u64,
    /// A header an authenticating proxy sets to the signed-in user's name
    /// (`X-Forwarded-User`); empty: off. Honoured only from
    /// `trusted_proxies`.
    pub trusted_user_header: String,
    /// Addresses whose `trusted_user_header` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a person's hold of a conversation (human takeover) keeps
    /// the bot silent after their last message to the user.
    pub takeover_idle_secs: u64,
    /// Role of a proxy-signed-in name that is not a console user
    /// (`viewer`, `editor`, `admin`); empty: such a name is refused.
    pub proxy_default_role: String,
}
