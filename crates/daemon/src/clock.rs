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

/// The system's clock moved by an offset read from a file (seconds, an
/// integer; read again at most once a second): how a soak
/// (`scripts/soak.sh`) moves every replica's calendar a day at a time
/// while they run. Chosen by `PUBBOT_CLOCK_FILE` ([`from_env`]); a file that
/// is missing or does not parse counts as no offset.
#[derive(Debug)]
pub struct FileClock {
    path: std::path::PathBuf,
    read: std::sync::Mutex<(Option<std::time::Instant>, i64)>,
}

impl FileClock {
    /// A clock offset by what `path` says.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            read: std::sync::Mutex::new((None, 0)),
        }
    }

    fn offset_secs(&self) -> i64 {
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read
            .0
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            read.1 = std::fs::read_to_string(&self.path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            read.0 = Some(std::time::Instant::now());
        }
        read.1
    }
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_secs())
    }
}

/// The clock broadcasts are scheduled by: the system's, or a
/// [`FileClock`] when `PUBBOT_CLOCK_FILE` names a file (soaks and demos;
/// never set it in production).
pub fn from_env() -> std::sync::Arc<dyn Clock> {
    match std::env::var_os("PUBBOT_CLOCK_FILE") {
        Some(path) if !path.is_empty() => std::sync::Arc::new(FileClock::new(path)),
        _ => std::sync::Arc::new(SystemClock),
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
    fn a_file_clock_follows_its_file() {
        let dir = std::env::temp_dir().join(format!("pubbot-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("offset");
        let c = FileClock::new(&path);
        // No file: no offset.
        assert!((c.now() - Utc::now()).num_seconds().abs() < 5);
        std::fs::write(&path, "86400\n").unwrap();
        let c = FileClock::new(&path);
        assert!((c.now() - Utc::now()).num_seconds() >= 86_390);
        std::fs::write(&path, "not a number").unwrap();
        let c = FileClock::new(&path);
        assert!((c.now() - Utc::now()).num_seconds().abs() < 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_offset_clock_moves() {
        let c = OffsetClock::default();
        let a = c.now();
        c.advance(86_400);
        assert!(c.now() - a >= chrono::Duration::seconds(86_400));
    }
}
