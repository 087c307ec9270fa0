//! One message's trip, in the order it takes it:
//!
//! ```text
//! listener -> ingest (spool when the database is away) -> decide -> outbox -> send
//!                                                              \-> handlers (bots over HTTP)
//! ```
//!
//! - [`listener`]: the webhook's sockets, capped.
//! - [`days`]: the day partitions of both hot tables; owns `partition_days` and their DDL.
//! - [`ingest`]: the webhook's inbox on PostgreSQL; owns `inbound_messages`.
//! - [`spool`]: pushes kept on disk while the database cannot take them (R15).
//! - [`decision`]: a push before the rules (at receipt, by a worker, on retry).
//! - [`decide`]: rules over stored pushes; plans replies through the outbox.
//! - [`outbox`]: owns `outbound_messages`: planned replies, leases, claims, outcomes.
//! - [`send`]: calls the platform for held replies; hands outcomes to the outbox's recorder.
//! - [`handlers`]: handler bots called over HTTP, and per-user conversation state.
//! - [`rules`]: the rules in PostgreSQL, loaded and reloaded live.
//! - [`takeover`]: a person holding a conversation; the bot stays silent for the user.
//! - [`moves`]: apps moving between databases: where their pushes go, whether they wait.
//! - [`wakeups`]: LISTEN/NOTIFY and in-process wake-ups between the stages.

pub(crate) mod days;
pub(crate) mod decide;
pub(crate) mod decision;
pub mod handlers;
pub(crate) mod ingest;
pub(crate) mod listener;
pub(crate) mod moves;
pub(crate) mod outbox;
pub mod rules;
pub(crate) mod send;
pub(crate) mod spool;
pub mod takeover;
pub(crate) mod wakeups;
