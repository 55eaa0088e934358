//! The relay's resident memory over the run: sampled every second from
//! `/proc/PID/status`, then judged after warm-up by comparing the median of the second
//! quarter of the run with the median of the last quarter (medians shrug off the moments
//! when a burst is queued), with a least-squares slope for the report.

use std::time::{Duration, Instant};

use crate::procfs::ProcSample;

/// Samples: seconds since the start, RSS in KiB.
#[derive(Debug, Default, Clone)]
pub struct Series {
    /// `(seconds, KiB)`.
    pub samples: Vec<(f64, u64)>,
    /// CPU seconds the process used between the first and the last sample.
    pub cpu_secs: f64,
}

/// The judgement.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Samples taken.
    pub count: usize,
    /// Smallest, median and largest RSS over the whole run, KiB.
    pub min_median_max: (u64, u64, u64),
    /// Median of the second quarter (after warm-up), KiB.
    pub early: u64,
    /// Median of the last quarter, KiB.
    pub late: u64,
    /// Least-squares slope after warm-up, KiB a minute.
    pub slope_kib_per_min: f64,
    /// Whether `late - early` stays within the bounds.
    pub flat: bool,
    /// The bound applied, KiB.
    pub allowed_kib: u64,
    /// CPU seconds the relay used over the samples.
    pub cpu_secs: f64,
    /// Median RSS of each tenth of the run, KiB: the shape of the series.
    pub tenths: Vec<u64>,
    /// Seconds the samples span.
    pub span_secs: f64,
}

impl Series {
    /// Samples `pid` every second until `stop` resolves; ends early (returning `false`
    /// as the second value) if the process disappears.
    pub async fn sample(
        pid: u32,
        started: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> (Series, bool) {
        let mut series = Series::default();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut first = None;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return (series, true),
                _ = ticks.tick() => match ProcSample::read(pid) {
                    Ok(sample) => {
                        let first = *first.get_or_insert(sample);
                        series.cpu_secs = first.cpu_seconds_until(&sample);
                        series.samples.push((started.elapsed().as_secs_f64(), sample.rss_kib));
                    }
                    Err(_) => return (series, false),
                },
            }
        }
    }

    /// Judges the series: flat if the last quarter's median exceeds the second quarter's
    /// by no more than `max_pct` percent of it and no more than `max_kib`.
    pub fn judge(&self, max_pct: f64, max_kib: u64) -> Option<Judgement> {
        let n = self.samples.len();
        if n < 8 {
            return None;
        }
        let kib: Vec<u64> = self.samples.iter().map(|s| s.1).collect();
        let early = median(&kib[n / 4..n / 2]);
        let late = median(&kib[n * 3 / 4..]);
        let allowed = ((early as f64 * max_pct / 100.0) as u64).min(max_kib);
        let mut sorted = kib.clone();
        sorted.sort_unstable();
        Some(Judgement {
            count: n,
            min_median_max: (sorted[0], sorted[n / 2], sorted[n - 1]),
            early,
            late,
            slope_kib_per_min: slope(&self.samples[n / 5..]) * 60.0,
            flat: late <= early + allowed,
            allowed_kib: allowed,
            cpu_secs: self.cpu_secs,
            tenths: (0..10)
                .map(|i| median(&kib[n * i / 10..n * (i + 1) / 10]))
                .collect(),
            span_secs: self.samples[n - 1].0 - self.samples[0].0,
        })
    }
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// Least-squares slope of KiB over seconds.
fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y as f64));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        (num + (x - mx) * (y as f64 - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_passes_and_a_leak_fails() {
        let flat = Series {
            cpu_secs: 0.0,
            samples: (0..100)
                .map(|i| (f64::from(i), 10_000 + (i % 7) as u64 * 100))
                .collect(),
        };
        let judged = flat.judge(20.0, 16 * 1024).unwrap();
        assert!(judged.flat, "{judged:?}");
        let leak = Series {
            cpu_secs: 0.0,
            samples: (0..100)
                .map(|i| (f64::from(i), 10_000 + i as u64 * 100))
                .collect(),
        };
        let judged = leak.judge(20.0, 16 * 1024).unwrap();
        assert!(!judged.flat, "{judged:?}");
        assert!((judged.slope_kib_per_min - 6_000.0).abs() < 1.0);
    }
}
