//! # pubbot (daemon)
//!
//! The only crate that owns PostgreSQL, tasks, configuration, metrics and
//! the CLI. It wires the webhook (inbound), the rules engine (decide) and
//! the API client (outbound) into one durable pipeline. The pipeline itself
//! is tracked by its own issue; today this crate holds the schema and its
//! migrations.
//!
//! Not for: protocol details (they live in `pubbot-api-client` and
//! `pubbot-webhook`) or reply logic (`pubbot-rules`).

pub mod db;
