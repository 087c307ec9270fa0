//! # pubbot-api-client (skeleton)
//!
//! Will be the typed async client for every endpoint of the Public Service
//! platform API, with request signing (R1/R2), validation before sending
//! (R9) and error codes mapped per R10. Outbound only: no I/O policy beyond
//! an opt-in retry, no database. Tracked by its own issue.
