//! # pubbot-protocol: the platform's facts, in one home
//!
//! The Public Service document (`../shared/spec/public_service.md`, read in
//! `READING.md`) fixes a handful of facts that several of pubbot's crates
//! need: the ids, the limits of R9, how a description's width is counted,
//! the two timestamp units of R2, the signature of R1/R3, and what an AMR
//! voice file is. Each lives here once; the webhook, the API client, the
//! rule engine and the daemon use these, so they cannot disagree.
//!
//! **What it is for:** pure values and functions — no I/O, no async, no
//! policy (what to do when a limit is broken is the caller's).
//!
//! **What it is not for:** the simulator. `pubbot-sim` keeps its own
//! independent implementation of these facts on purpose — it plays the
//! platform, and a shared bug would make both sides agree on something
//! the document does not say. A test in the simulator's crate runs both
//! implementations over one table of cases.

mod ids;
pub mod limits;
mod media;
mod sign;

pub use ids::{AppKey, MassMsgId, McId, MediaId, MenuId, MsgId, UserId};
pub use media::{amr_duration_millis, sniff, FileFormat};
pub use sign::{sign, unix_millis, unix_secs, TimestampUnit};

/// Width as the document counts it: a CJK character is two ("1 个汉字等于
/// 2 个字符"); East Asian wide and full-width forms count as CJK (R9).
///
/// ```
/// assert_eq!(pubbot_protocol::width("a汉，"), 5);
/// ```
pub fn width(s: &str) -> usize {
    s.chars().map(|c| if is_wide(c) { 2 } else { 1 }).sum()
}

fn is_wide(c: char) -> bool {
    matches!(u32::from(c),
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_and_full_width_count_double() {
        assert_eq!(width("ab"), 2);
        assert_eq!(width("汉字"), 4);
        assert_eq!(width("ＨＩ"), 4);
        assert_eq!(width("한"), 2);
        assert_eq!(width(""), 0);
    }
}
