//! What an operator watches and keeps:
//!
//! - [`health`]: the admin listener (`/metrics`, `/healthz`, `/readyz`) and
//!   stage progress.
//! - [`queue`]: queue depths as gauges.
//! - [`retention`]: old rows deleted in small batches.
//! - [`inspect`]: one user's conversation, failed replies, a retry.

pub(crate) mod catalog;
pub(crate) mod health;
pub mod inspect;
pub mod queue;
pub(crate) mod retention;
