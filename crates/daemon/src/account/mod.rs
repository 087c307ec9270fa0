//! The account: profile and route, menus, media and followers. The first three
//! described in a file and made so on the platform with the fewest calls,
//! the plan shown first (`--dry-run` shows only the plan).
//!
//! - **Accounts** (`pubbot account apply`): `add` when `info` does not know
//!   the account, `refresh` when a profile field differs, `setUrl` /
//!   `setSwitch` when routing differs, nothing when all is equal.
//! - **Menus** (`pubbot menu apply`): the platform has add, delete and order
//!   but cannot list a menu, so pubbot keeps the ids it created
//!   (`menu_items`). An item is matched by its place (parent name, name):
//!   gone or changed items are deleted (a first-level item takes its
//!   children), new ones added (parents first, the returned `menuId` as
//!   `pid`), then one `order` call when the order changed (R13).
//! - **Media** (`pubbot media upload|news|list`): format and size are
//!   checked by content before uploading (R9), the file's SHA-256 is kept so
//!   the same file uploaded again reuses its `media_id`, and a local name
//!   lets rules and broadcasts say `media = "welcome-banner"`.

//!
//! Followers ([`followers`]) are kept from subscribe/unsubscribe events and
//! changed through the platform's subscribe API.

pub mod followers;
mod media;
mod menus;
mod profile;

pub use media::*;
pub use menus::*;
pub use profile::*;

/// Why an account operation stopped. Each says what was being done and,
/// in its text as well as its source, why (the platform's code and
/// message, the I/O error): a log line of it alone is enough.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not of the expected shape.
    #[error("{} is not a {what} file: {source}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What it should have been (`news`, `menu`, ...).
        what: &'static str,
        /// Where and why it does not parse.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The request or file is invalid; nothing was called.
    #[error("{0}")]
    Invalid(String),
    /// A platform call failed; `step` says which.
    #[error("{step}: {source}")]
    Platform {
        /// What was being done.
        step: String,
        /// The platform's answer (code and message) or the transport error.
        #[source]
        source: pubbot_api_client::Error,
    },
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
}

impl AccountError {
    /// A platform call's failure, saying what was being done.
    pub(crate) fn platform(
        step: impl Into<String>,
    ) -> impl FnOnce(pubbot_api_client::Error) -> Self {
        let step = step.into();
        move |source| Self::Platform { step, source }
    }

    /// A file that could not be read.
    pub(crate) fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Read {
            path: path.to_owned(),
            source,
        }
    }
}
