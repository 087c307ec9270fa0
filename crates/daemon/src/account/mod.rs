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
