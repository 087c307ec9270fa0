//! # pubbot-rules (skeleton)
//!
//! Will be the pure reply engine: a compiled rule set and templates that
//! turn an inbound message into planned replies. No I/O at all, no clock of
//! its own. Tracked by its own issue.
