//! What an operator watches and keeps:
//!
//! - [`health`]: the admin listener (`/metrics`, `/healthz`, `/readyz`) and
//!   stage progress.
//! - [`queue`]: queue depths as gauges.
//! - [`retention`]: old rows deleted in small batches.
//! - [`inspect`]: one user's conversation, failed replies, a retry.
//! - [`moves`]: an app moved to another database while it is served.

pub(crate) mod catalog;
pub(crate) mod health;
pub mod inspect;
pub mod moves;
pub mod queue;
pub(crate) mod retention;
