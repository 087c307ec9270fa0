//! # pubbot-webhook (skeleton)
//!
//! Will receive the platform's pushes: signature and replay window (R3),
//! lenient XML (R4, R5), the dedup key (R6), and a hand-off to an `Inbox`
//! the daemon implements. Knows no SQL. Tracked by its own issue.
