//! Broadcasts and campaigns: the one mass send a natural day allows (R11),
//! exactly once across replicas, and messages to every follower in
//! `batchsend` chunks.
//!
//! # Invariants
//!
//! 1. **Once a day, by a row.** `broadcasts` has at most one live row
//!    (`scheduled`, `sending`, `sent`, `unknown`) per (app, account,
//!    platform day) — a unique index, so of two replicas (or a daily
//!    schedule and a one-off) only one insert wins. The platform's day is
//!    its natural day in UTC+8 ([`crate::clock::platform_day`]), whatever
//!    zone a schedule is written in. No leader election: every replica runs
//!    the scheduler.
//! 2. **One claim.** `scheduled -> sending` is an update of a locked row
//!    (`FOR UPDATE SKIP LOCKED`): one replica sends a given row.
//! 3. **Never twice by itself.** `called_at` is set just before the call.
//!    A `sending` row whose lease expired goes back to `scheduled` if it was
//!    never called, and to `unknown` if it was: a second send would
//!    double-post or hit `1007`, so only the operator settles an `unknown`
//!    (`pubbot broadcast resolve ID sent|failed`). It is logged, counted and
//!    shown.
//! 4. **Late, within grace.** A row whose time passed while every replica
//!    was down is sent late within `broadcast.grace_secs`, else `missed`.
//! 5. **Campaign chunks** (<= 100 users) follow the same rules: claimed with
//!    `SKIP LOCKED` by any replica, `called_at` before the call, a chunk
//!    whose call may have been accepted is never sent again (`unknown`), a
//!    chunk refused with a retryable code (`1008`, `1000`, 5xx, no
//!    connection) is retried with backoff.
//! 6. **The clock is injectable** ([`crate::clock::Clock`]); every "is it
//!    due" and "which day" is computed from it and passed to SQL.
mod campaigns;
mod content;
mod days;
mod scheduler;
mod schedules;

pub use campaigns::*;
pub use content::*;
pub use days::{coming, DaySend};
pub(crate) use scheduler::Scheduler;
pub use schedules::*;
