//! The clock broadcasts are scheduled by, injectable so that the day logic
//! is tested without waiting for midnight. Everything that decides "which
//! day" or "is it due" asks a [`Clock`] and passes the instant to SQL as a
//! parameter; nothing in that path calls `now()` in the database.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};

/// Tells the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system's clock moved by an offset that tests change (time still
/// flows).
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_secs: AtomicI64,
}

impl OffsetClock {
    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }

    /// The offset from the system's clock, seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset_secs.load(Ordering::SeqCst)
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_secs())
    }
}

/// The platform's natural day of an instant: its date in UTC+8 (R11),
/// whatever zone a schedule is written in.
pub fn platform_day(at: DateTime<Utc>) -> NaiveDate {
    let cst = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    at.with_timezone(&cst).date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_platform_day_turns_at_midnight_utc_plus_8() {
        let before = Utc.with_ymd_and_hms(2026, 11, 26, 15, 59, 59).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 26, 16, 0, 0).unwrap();
        assert_eq!(platform_day(before).to_string(), "2026-11-26");
        assert_eq!(platform_day(after).to_string(), "2026-11-27");
    }

    #[test]
    fn an_offset_clock_moves() {
        let c = OffsetClock::default();
        let a = c.now();
        c.advance(86_400);
        assert!(c.now() - a >= chrono::Duration::seconds(86_400));
    }
}
