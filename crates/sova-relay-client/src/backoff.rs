use std::time::Duration;

use crate::ReconnectConfig;

/// The delays of successive reconnection attempts: exponential, capped, with jitter so
/// that many clients dropped at once by a relay restart do not all come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: ReconnectConfig,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A fresh backoff following `config`.
    pub fn new(config: ReconnectConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// A backoff with a seeded random generator, for reproducible tests.
    pub fn with_seed(config: ReconnectConfig, seed: u64) -> Self {
        Self::with_rng(config, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(config: ReconnectConfig, rng: fastrand::Rng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt, or `None` once `max_attempts` is used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.attempt >= max)
        {
            return None;
        }
        let exponent = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        let base = self.config.initial_delay.as_secs_f64() * self.config.multiplier.powi(exponent);
        let capped = base.min(self.config.max_delay.as_secs_f64());
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let delay = capped * (1.0 - jitter * self.rng.f64());
        Some(Duration::try_from_secs_f64(delay).unwrap_or(self.config.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: f64) -> ReconnectConfig {
        ReconnectConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter,
            ..ReconnectConfig::default()
        }
    }

    #[test]
    fn without_jitter_delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(config(0.0));
        let delays: Vec<u128> = (0..7)
            .map(|_| backoff.next_delay().unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn jitter_stays_within_the_fraction_and_varies() {
        let mut backoff = Backoff::with_seed(config(0.5), 7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            backoff.reset();
            let delay = backoff.next_delay().unwrap();
            assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(100));
            seen.insert(delay);
        }
        assert!(seen.len() > 10, "jitter should spread delays: {seen:?}");
    }

    #[test]
    fn max_attempts_ends_the_sequence() {
        let mut backoff = Backoff::new(ReconnectConfig {
            max_attempts: Some(2),
            ..config(0.0)
        });
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert_eq!(backoff.next_delay(), None);
    }

    #[test]
    fn absurd_settings_do_not_panic() {
        let mut backoff = Backoff::new(ReconnectConfig {
            multiplier: f64::MAX,
            jitter: 7.0,
            ..config(0.0)
        });
        for _ in 0..2000 {
            assert!(backoff.next_delay().unwrap() <= Duration::from_secs(2));
        }
    }
}
