//! What one run measured, as a JSON-friendly struct and as table cells.

use serde::Serialize;

use crate::procfs::ProcSample;
use crate::proto::Target;

/// The outcome of one scenario against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name (`jam`, `burst`, ... or `custom`).
    pub scenario: String,
    /// The server driven.
    pub target: Target,
    /// Connected clients (churners not included).
    pub clients: usize,
    /// Clients that publish.
    pub publishers: usize,
    /// Messages per second per publisher; 0 means as fast as the window allows.
    pub rate: f64,
    /// Payload bytes per message.
    pub size: usize,
    /// Seconds spent publishing (or idling).
    pub duration_s: f64,
    /// Messages published.
    pub sent: u64,
    /// Deliveries owed: every message to every other client of its group.
    pub expected: u64,
    /// Deliveries received (a publisher's own messages never count).
    pub delivered: u64,
    /// `expected - delivered` once the drain wait is over.
    pub lost: u64,
    /// Deliveries per second over the publishing time.
    pub deliveries_per_s: f64,
    /// One-way latency of the deliveries, microseconds.
    pub latency_us: Option<Latency>,
    /// Rate mode: how late publishers sent against their schedule, microseconds. Large
    /// values mean the load generator itself fell behind.
    pub send_lag_us: Option<Latency>,
    /// What the server process used, when its pid was known (a cluster: its relay
    /// nodes together).
    pub server: Option<ServerUsage>,
    /// What the broker behind the servers used (a cluster: nats-server), if any.
    pub broker: Option<ServerUsage>,
    /// Errors the server sent (rate limit, slow consumer, ...).
    pub server_errors: u64,
    /// Deliveries that did not carry a well-formed payload.
    pub malformed: u64,
    /// Connections the server closed while the run went on.
    pub closed_early: u64,
    /// Publishers that gave up because nothing came back for too long.
    pub stalled_publishers: u64,
    /// Churn mode: joins completed and joins that failed.
    pub churn: Option<Churn>,
    /// Anything worth a look: first error texts and the like.
    pub notes: Vec<String>,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest seen.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Server resources over the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerUsage {
    /// CPU seconds (user + system) while publishing and draining (idle mode: while
    /// connecting).
    pub cpu_s: f64,
    /// `cpu_s` per delivery, microseconds.
    pub cpu_us_per_delivery: Option<f64>,
    /// Peak resident memory of the process, KiB (fresh process per scenario).
    pub peak_rss_kib: u64,
    /// Resident memory before any client connected, KiB.
    pub baseline_rss_kib: u64,
    /// Resident memory with every client connected, KiB.
    pub connected_rss_kib: u64,
    /// `(connected - baseline) / clients`, KiB.
    pub per_connection_kib: f64,
}

impl ServerUsage {
    /// The usage between the readings `[before the clients, with them connected, start of
    /// the measured span, its end]`, when all four were taken.
    pub fn between(
        samples: [Option<ProcSample>; 4],
        delivered: u64,
        clients: usize,
    ) -> Option<ServerUsage> {
        let [Some(baseline), Some(connected), Some(from), Some(to)] = samples else {
            return None;
        };
        let cpu_s = from.cpu_seconds_until(&to);
        Some(ServerUsage {
            cpu_s,
            cpu_us_per_delivery: (delivered > 0).then(|| cpu_s * 1e6 / delivered as f64),
            peak_rss_kib: to.peak_rss_kib,
            baseline_rss_kib: baseline.rss_kib,
            connected_rss_kib: connected.rss_kib,
            per_connection_kib: connected.rss_kib.saturating_sub(baseline.rss_kib) as f64
                / clients.max(1) as f64,
        })
    }
}

/// Churn mode counters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Churn {
    /// Joins (connect + register/subscribe) completed.
    pub joins: u64,
    /// Joins that failed.
    pub failed: u64,
    /// Joins per second.
    pub joins_per_s: f64,
}

impl Report {
    /// One line for humans.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{:<14} {:<9} clients={} sent={} delivered={} lost={} rate={:.0}/s",
            self.scenario,
            self.target.label(),
            self.clients,
            self.sent,
            self.delivered,
            self.lost,
            self.deliveries_per_s
        );
        if let Some(l) = &self.latency_us {
            line += &format!(
                " p50={:.0}us p99={:.0}us p99.9={:.0}us max={:.0}us",
                l.p50, l.p99, l.p999, l.max
            );
        }
        if let Some(lag) = &self.send_lag_us {
            line += &format!(" send_lag_p99={:.0}us", lag.p99);
        }
        if let Some(s) = &self.server {
            line += &format!(
                " cpu={:.2}s peak_rss={:.1}MiB per_conn={:.1}KiB",
                s.cpu_s,
                s.peak_rss_kib as f64 / 1024.0,
                s.per_connection_kib
            );
            if let Some(per) = s.cpu_us_per_delivery {
                line += &format!(" cpu/delivery={per:.2}us");
            }
        }
        if let Some(b) = &self.broker {
            line += &format!(" broker_cpu={:.2}s", b.cpu_s);
            if let Some(per) = b.cpu_us_per_delivery {
                line += &format!(" broker_cpu/delivery={per:.2}us");
            }
        }
        if let Some(c) = &self.churn {
            line += &format!(
                " joins={} ({:.0}/s) failed={}",
                c.joins, c.joins_per_s, c.failed
            );
        }
        if self.server_errors + self.malformed + self.closed_early + self.stalled_publishers > 0 {
            line += &format!(
                " server_errors={} malformed={} closed_early={} stalled={}",
                self.server_errors, self.malformed, self.closed_early, self.stalled_publishers
            );
        }
        line
    }
}
