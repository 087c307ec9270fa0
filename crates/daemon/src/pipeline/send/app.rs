//! An app's client and the limit its calls keep to (R10: `1008` when a
//! calendar second holds too many).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pubbot_api_client::Client;

/// How much sooner, at most, a call may reach the platform than the one
/// the rate limit let go before it (scheduling; a lease renewal no longer
/// comes between the permit and the call): evenly spaced calls that arrive
/// unevenly put `per_sec + 1` into one calendar second. Measured: a
/// daemon limited to the platform's 5 calls a second was answered `1008`
/// in 2 runs of 6 without this margin. It costs 2.4% of the limit.
const ARRIVAL_JITTER: Duration = Duration::from_millis(25);

/// The client and rate limit of one app.
pub(crate) struct AppClient {
    /// The signed client.
    pub client: Client,
    /// This daemon's calls per second for the app.
    pub limiter: DefaultDirectRateLimiter,
    /// One call at a time waits on `limiter`, the others in line behind it
    /// (a fair lock: first come, first called). Without it every waiting
    /// call woke at each timer tick to try the limit again, and which one
    /// won was chance.
    pub turn: tokio::sync::Mutex<()>,
}

impl AppClient {
    /// A limiter of `per_sec` calls a second, evenly spaced: the platform
    /// counts calls per calendar second, and a burst allowance of a
    /// second's worth let up to twice the limit into one of its seconds
    /// (answered `1008`). Spaced by a second and [`ARRIVAL_JITTER`] over
    /// `per_sec`, so that `per_sec + 1` calls span more than a second even
    /// when the later ones reach the platform that much sooner than the
    /// first; see [`burst`] for the few that may go back to back.
    pub(crate) fn new(client: Client, per_sec: u32) -> Self {
        let n = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = (Duration::from_secs(1) + ARRIVAL_JITTER) / n.get();
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(n))
            .allow_burst(burst(n));
        Self {
            client,
            limiter: RateLimiter::direct(quota),
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Calls the limit lets go back to back after a pause: as many as half of
/// [`ARRIVAL_JITTER`]'s margin holds (one below 80 calls a second; 1,251 at
/// 100,000). A waiting call sleeps on tokio's timer, which counts whole
/// milliseconds, so with no burst at all one call went per tick whatever
/// the limit (measured at 3,000-5,000 replies/s under a limit of 100,000:
/// p90 wait 9-17 ms, p99 22-25 ms). In any second the limit then lets
/// through at most `burst - 1 + per_sec / 1.025` calls, under `per_sec`
/// with half the margin left for calls that arrive unevenly.
fn burst(per_sec: NonZeroU32) -> NonZeroU32 {
    let half_margin = u64::try_from((ARRIVAL_JITTER / 2).as_micros()).unwrap_or(u64::MAX);
    let extra = u64::from(per_sec.get()).saturating_mul(half_margin) / 1_000_000;
    NonZeroU32::new(u32::try_from(extra).unwrap_or(u32::MAX).saturating_add(1))
        .unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the limit lets through in the worst second: the burst, then
    /// one call a period for the rest of it.
    fn most_in_a_second(per_sec: u32) -> u64 {
        let n = NonZeroU32::new(per_sec).unwrap();
        let period = (Duration::from_secs(1) + ARRIVAL_JITTER) / per_sec;
        u64::from(burst(n).get()) - 1
            + u64::from(1 + (Duration::from_secs(1).as_nanos() / period.as_nanos()) as u32)
    }

    #[test]
    fn the_burst_keeps_every_second_under_the_limit_with_room_for_uneven_arrival() {
        for per_sec in [
            1, 2, 5, 50, 79, 80, 81, 200, 500, 1_000, 5_000, 100_000, 1_000_000,
        ] {
            let n = NonZeroU32::new(per_sec).unwrap();
            let most = most_in_a_second(per_sec);
            assert!(
                most <= u64::from(per_sec),
                "{per_sec}/s: {most} calls could fall into one second"
            );
            // Calls that arrive up to 10 ms sooner than they left still fit
            // (a window of 1.01 s of departures).
            let period = (Duration::from_secs(1) + ARRIVAL_JITTER) / per_sec;
            let in_window = u64::from(burst(n).get()) - 1
                + 1
                + (Duration::from_millis(1_010).as_nanos() / period.as_nanos()) as u64;
            assert!(
                in_window <= u64::from(per_sec),
                "{per_sec}/s: {in_window} in 1.01 s"
            );
        }
        assert_eq!(burst(NonZeroU32::new(79).unwrap()).get(), 1);
        assert_eq!(burst(NonZeroU32::new(100_000).unwrap()).get(), 1_251);
    }

    fn client() -> Client {
        Client::builder(
            "app",
            secrecy::SecretString::from("secret".to_owned()),
            "http://127.0.0.1:9",
        )
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn a_high_limit_lets_a_round_of_calls_go_at_once() {
        // 64 calls of one round (a hand-off unit's worth) against a limit of
        // 100,000 a second: none waits for the timer.
        let app = AppClient::new(client(), 100_000);
        let passed = (0..64).filter(|_| app.limiter.check().is_ok()).count();
        assert_eq!(passed, 64);
        // A low limit still spaces them: one, then a wait.
        let slow = AppClient::new(client(), 5);
        assert!(slow.limiter.check().is_ok());
        assert!(slow.limiter.check().is_err());
    }
}
