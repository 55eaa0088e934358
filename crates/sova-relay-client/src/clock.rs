//! Round-trip times and the relay's clock, from `Ping`/`Pong` timestamps (see [`ClockOffset`]).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Samples kept: a window short enough that clock drift inside it is negligible.
const WINDOW: usize = 16;

/// Relay timestamps further than this from our clock are not epoch milliseconds: ignored.
const PLAUSIBLE_SKEW_MS: f64 = 24.0 * 3600.0 * 1000.0;

/// Resolution of the relay's timestamps.
const RELAY_RESOLUTION: Duration = Duration::from_millis(1);

/// Milliseconds since the Unix epoch on the local clock, the protocol's timestamp unit.
pub fn now_ms() -> u64 {
    u64::try_from(local_ms_f64() as i128).unwrap_or(0)
}

fn local_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The relay's clock relative to ours, e.g. to stamp edits in the relay's time so that
/// instances in different cities quantise them alike.
///
/// How it is estimated: the relay echoes our `Ping` timestamps unchanged, which gives round
/// trips but says nothing about its clock. Its own `Ping`s (sent to `pong`-capable clients)
/// carry its clock in milliseconds since the Unix epoch. A relay `Ping` stamped `t_relay` and
/// received locally at `t_recv` travelled some one-way delay `d`, so
/// `offset = relay − local = t_relay − t_recv + d`. Over the last 16 samples, the one with
/// the largest `t_relay − t_recv` had the smallest delay, and that delay lies in
/// `[0, rtt_min]`. Hence `offset ≈ max(t_relay − t_recv) + rtt_min / 2`.
///
/// Error bound: `error_bound = rtt_min / 2 + 1 ms` (the 1 ms is the relay's millisecond
/// truncation). It holds as long as the fastest relay `Ping` in the window took no longer
/// than our fastest round trip, which is the case on any path that is not wildly asymmetric;
/// on an asymmetric path the estimate is biased, but still within that bound. On a 40 ms
/// round trip between two cities, each instance knows the relay's clock within ±21 ms, so
/// two instances agree within ±42 ms in the worst case, and usually far better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockOffset {
    /// Relay clock minus local clock, in milliseconds (positive: the relay is ahead).
    pub offset_ms: f64,
    /// The true offset lies within `offset_ms ± error_bound` (see the module docs' assumption).
    pub error_bound: Duration,
    /// Number of relay `Ping`s the estimate is drawn from.
    pub samples: usize,
}

impl ClockOffset {
    /// The relay's current time in milliseconds since the Unix epoch, as estimated.
    pub fn relay_now_ms(&self) -> u64 {
        u64::try_from((local_ms_f64() + self.offset_ms) as i128).unwrap_or(0)
    }
}

/// Collects round trips and relay timestamps for one connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClockEstimator {
    rtts: VecDeque<Duration>,
    skews_ms: VecDeque<f64>,
}

impl ClockEstimator {
    /// Records a measured round trip.
    pub(crate) fn add_rtt(&mut self, rtt: Duration) {
        push_bounded(&mut self.rtts, rtt);
    }

    /// Records a relay `Ping` timestamp received now.
    pub(crate) fn add_relay_timestamp(&mut self, relay_ms: u64) {
        self.add_relay_sample(relay_ms, local_ms_f64());
    }

    fn add_relay_sample(&mut self, relay_ms: u64, local_recv_ms: f64) {
        let skew = relay_ms as f64 - local_recv_ms;
        if skew.abs() < PLAUSIBLE_SKEW_MS {
            push_bounded(&mut self.skews_ms, skew);
        }
    }

    /// The smallest recent round trip.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.rtts.iter().min().copied()
    }

    /// The current estimate; needs at least one relay `Ping` and one round trip.
    pub(crate) fn offset(&self) -> Option<ClockOffset> {
        let rtt = self.min_rtt()?;
        let best = self.skews_ms.iter().copied().reduce(f64::max)?;
        let half_rtt = rtt / 2;
        Some(ClockOffset {
            offset_ms: best + half_rtt.as_secs_f64() * 1000.0,
            error_bound: half_rtt + RELAY_RESOLUTION,
            samples: self.skews_ms.len(),
        })
    }
}

fn push_bounded<T>(window: &mut VecDeque<T>, value: T) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_without_both_kinds_of_sample() {
        let mut clock = ClockEstimator::default();
        assert!(clock.offset().is_none());
        clock.add_rtt(Duration::from_millis(10));
        assert!(clock.offset().is_none());
        clock.add_relay_sample(1_000, 900.0);
        assert!(clock.offset().is_some());
    }

    #[test]
    fn the_least_delayed_sample_and_fastest_round_trip_win() {
        // Relay ahead by 500 ms; one-way delays 5, 40 and 12 ms; round trips 10 and 80 ms.
        let mut clock = ClockEstimator::default();
        for delay in [5.0, 40.0, 12.0] {
            let sent_local = 10_000.0;
            clock.add_relay_sample((sent_local + 500.0) as u64, sent_local + delay);
        }
        clock.add_rtt(Duration::from_millis(80));
        clock.add_rtt(Duration::from_millis(10));
        let estimate = clock.offset().unwrap();
        assert_eq!(estimate.samples, 3);
        assert_eq!(estimate.error_bound, Duration::from_millis(6));
        assert!((estimate.offset_ms - 500.0).abs() <= 6.0, "{estimate:?}");
    }

    #[test]
    fn implausible_relay_clocks_are_ignored() {
        let mut clock = ClockEstimator::default();
        clock.add_rtt(Duration::from_millis(1));
        clock.add_relay_timestamp(42);
        assert!(clock.offset().is_none());
    }

    #[test]
    fn the_window_is_bounded() {
        let mut clock = ClockEstimator::default();
        for i in 0..100 {
            clock.add_rtt(Duration::from_millis(100 - i));
            clock.add_relay_sample(1_000, 1_000.0);
        }
        assert_eq!(clock.offset().unwrap().samples, WINDOW);
        assert_eq!(clock.min_rtt(), Some(Duration::from_millis(1)));
    }
}
