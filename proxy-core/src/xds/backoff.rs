//! Exponential backoff with full jitter ("Exponential Backoff And Jitter",
//! AWS architecture blog): the n-th retry waits a uniformly random time in
//! `[0, min(max, initial · 2ⁿ)]`, so proxies that lost the same control
//! plane do not all come back at once.

use std::time::Duration;

use tokio::time::Instant;

/// Backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Cap of the first delay.
    pub initial: Duration,
    /// Largest cap.
    pub max: Duration,
    /// A connection that stayed up this long counts as stable: the next
    /// retry starts from `initial` again.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Retry delays for one reconnecting client.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failed attempts since the last reset.
    attempts: u32,
}

impl Backoff {
    /// A backoff at its first attempt.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempts: 0,
        }
    }

    /// The upper bound of the next delay: `min(max, initial · 2^attempts)`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// The next delay, uniformly random in `[0, cap]`; counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempts = self.attempts.saturating_add(1);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Resets if a connection established at `since` stayed up long enough
    /// to count as stable.
    pub fn reset_if_stable(&mut self, since: Option<Instant>) {
        if since.is_some_and(|t| t.elapsed() >= self.config.stable_after) {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn caps_double_up_to_the_maximum() {
        let mut b = Backoff::new(config());
        let caps: Vec<u64> = (0..12)
            .map(|_| {
                let cap = b.cap();
                let delay = b.next_delay();
                assert!(delay <= cap, "{delay:?} > {cap:?}");
                u64::try_from(cap.as_millis()).unwrap()
            })
            .collect();
        assert_eq!(
            caps,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000, 15000, 15000
            ]
        );
        // Far beyond any shift width, still capped.
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_secs(15));
    }

    #[test]
    fn delays_are_jittered_over_the_whole_range() {
        let mut low = false;
        let mut high = false;
        for _ in 0..200 {
            let mut b = Backoff::new(config());
            for _ in 0..8 {
                b.next_delay();
            }
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(15));
            low |= d < Duration::from_secs(5);
            high |= d > Duration::from_secs(10);
        }
        assert!(low && high, "full jitter spreads delays over [0, cap]");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_resets_the_backoff() {
        let mut b = Backoff::new(config());
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_millis(3200));

        // Up for 9 s: not stable, keeps growing.
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(9)).await;
        b.reset_if_stable(Some(since));
        assert_eq!(b.attempts(), 5);
        b.reset_if_stable(None);
        assert_eq!(b.attempts(), 5);

        // Up for 10 s: stable, back to the first delay.
        tokio::time::advance(Duration::from_secs(1)).await;
        b.reset_if_stable(Some(since));
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.cap(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_the_delays_takes_bounded_time() {
        let mut b = Backoff::new(config());
        let start = Instant::now();
        let mut bound = Duration::ZERO;
        for _ in 0..10 {
            bound += b.cap();
            tokio::time::sleep(b.next_delay()).await;
        }
        // 100+200+…+12800 + 2·15000 ms.
        assert!(start.elapsed() <= bound);
        assert_eq!(bound, Duration::from_millis(55_500));
    }
}
