//! # pubbot (daemon)
//!
//! The only crate that owns PostgreSQL, tasks, configuration, metrics and
//! the CLI. It wires the pieces into one durable pipeline:
//!
//! ```text
//! platform push -> webhook (pubbot-webhook) -> pipeline::ingest (group commit) -> inbound_messages
//!   -> pipeline::decide (pubbot-rules) -> pipeline::outbox: outbound_messages (same transaction)
//!   -> pipeline::send (pubbot-api-client, rate-limited, retried) -> platform API
//! ```
//!
//! A push the rules can decide without the database skips the decide
//! workers: it is decided on receipt and stored `done` with its outbound
//! rows in the group commit itself ([`pipeline::ingest`], "Decided at
//! receipt").
//!
//! Every arrow is a table row or a typed value; every claim is a lease taken
//! with `FOR UPDATE SKIP LOCKED`, so replicas share one database safely.
//! Dedup (R6) and "planned once" are unique constraints.
//!
//! # The rooms
//!
//! | room | what it is | tables it writes |
//! |---|---|---|
//! | [`app`] | wiring: builds every room from [`config::Settings`], starts and stops them | `accounts` (the hosted list, at start) |
//! | [`pipeline`] | one message's trip: listener, ingest (+ spool), decide, outbox, send, handler bots, rules in force, wake-ups | `inbound_messages` (ingest), `outbound_messages` (outbox), `conversation_state`, `handlers`, `rules`, `takeovers` (a person holding a conversation) |
//! | [`mass`] | the one mass send a natural day (R11): schedules, the ledger, campaigns, the scheduler | `broadcasts`, `broadcast_schedules`, `campaigns`, `campaign_chunks` |
//! | [`account`] | the account as code: profile and route, menus, media, followers | `menu_items`, `media`, `followers` |
//! | [`admin`] | what an operator watches and keeps: health and metrics listener (every metric registered at start, `admin::catalog`), queue depths, retention, conversation views | deletes old rows (retention) |
//! | [`console`] | the web console on its own listener: pages for rules, conversations, broadcasts, followers, menus, statistics; users, sessions, CSRF, audit | `console_users`, `console_sessions`, `console_login_failures`, `console_audit` (every other change through the room that owns it) |
//! | [`cli`] | the `pubbot` command: one file per command group, shared output | none (asks the rooms) |
//! | [`config`], [`db`], [`clock`], [`telemetry`] | settings, pools and migrations, the injectable clock, logging | |
//!
//! # Error policy
//!
//! - Each room's boundary returns a typed error (`thiserror`) whose
//!   variants a caller can act on: [`config::ConfigError`],
//!   [`db::SchemaError`], [`mass::BroadcastError`],
//!   [`pipeline::rules::RulesError`], [`pipeline::spool::SpoolError`],
//!   [`account::AccountError`]; a plain database failure is
//!   `sqlx::Error`.
//! - `anyhow` is for the edges only: [`cli`] (each command adds
//!   `.context(..)` and [`cli::main`] prints the chain as one line and picks
//!   the exit code) and start-up ([`start`]: a daemon that cannot start has
//!   nothing to recover, only a reason to print).
//! - No `Result<_, String>`: a reason that is text for a person is wrapped
//!   in a typed variant (`Invalid(String)`), so `?` still says which room
//!   refused.
//! - Workers do not return errors: a failed round is logged once where it
//!   happens (with the trace id when there is one), counted, and tried
//!   again; nothing is logged twice on its way up.
//!
//! # Surface
//!
//! `pub` is what the binary and the end-to-end tests use: [`start`],
//! [`Running`], [`config`], [`db`]'s migrator, the operator operations of
//! [`mass`], [`account`], [`admin::inspect`] and [`pipeline::rules`], and
//! [`cli::main`]. Everything else is `pub(crate)`, and the
//! `unreachable_pub` lint (below) keeps it so: a `pub` item no one outside
//! can reach fails the build.
//!
//! **Not for:** protocol details (in `pubbot-protocol`, `pubbot-api-client`
//! and `pubbot-webhook`) or reply logic (`pubbot-rules`).

#![warn(unreachable_pub)]

pub mod account;
pub mod admin;
pub(crate) mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod db;
pub mod mass;
pub mod pipeline;
pub(crate) mod progress;
pub(crate) mod retry;
pub mod telemetry;

pub use app::{start, start_with_clock, worker_id, Running};
