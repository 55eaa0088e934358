//! Counters, gauges and histograms. Each event bumps a plain atomic (what the status page and
//! JSON API read, per relay) and the Prometheus recorder (what `/metrics` renders). Never
//! labelled by instance or session: label values come from fixed sets, so cardinality stays
//! bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::reason::DisconnectReason;

/// Totals since the relay started, and handles to the recorder's hot-path series (looked
/// up once here, so a message costs atomic adds rather than a registry lookup per metric).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) broadcasts: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) registrations_rejected: AtomicU64,
    pub(crate) client_errors: AtomicU64,
    hot: HotSeries,
}

#[derive(Debug)]
struct HotSeries {
    messages_in: Counter,
    bytes_in: Counter,
    messages_out: Counter,
    bytes_out: Counter,
    broadcasts: Counter,
    fanout_seconds: Histogram,
}

/// Series that record nothing, until [`Stats::new`] registers real ones.
impl Default for HotSeries {
    fn default() -> Self {
        HotSeries {
            messages_in: Counter::noop(),
            bytes_in: Counter::noop(),
            messages_out: Counter::noop(),
            bytes_out: Counter::noop(),
            broadcasts: Counter::noop(),
            fanout_seconds: Histogram::noop(),
        }
    }
}

fn bump(total: &AtomicU64, by: u64) {
    total.fetch_add(by, Ordering::Relaxed);
}

impl Stats {
    /// Installs the Prometheus recorder if needed, then registers the hot-path series.
    pub(crate) fn new() -> Self {
        prometheus();
        Stats {
            hot: HotSeries {
                messages_in: counter!("sova_relay_messages_in_total"),
                bytes_in: counter!("sova_relay_bytes_in_total"),
                messages_out: counter!("sova_relay_messages_out_total"),
                bytes_out: counter!("sova_relay_bytes_out_total"),
                broadcasts: counter!("sova_relay_broadcasts_total"),
                fanout_seconds: histogram!("sova_relay_fanout_seconds"),
            },
            ..Stats::default()
        }
    }

    /// A connection was accepted and identified as `transport` (`tcp`, `http`, `websocket`).
    pub(crate) fn connection_opened(&self, transport: &'static str) -> OpenConnection<'_> {
        bump(&self.connections, 1);
        bump(&self.open_connections, 1);
        counter!("sova_relay_connections_total", "transport" => transport).increment(1);
        gauge!("sova_relay_open_connections", "transport" => transport).increment(1.0);
        OpenConnection {
            stats: self,
            transport,
        }
    }

    /// A connection was refused at accept (`reason`: fixed set).
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        bump(&self.connections_refused, 1);
        counter!("sova_relay_connections_refused_total", "reason" => reason).increment(1);
    }

    /// A TLS handshake failed or timed out.
    pub(crate) fn tls_failed(&self) {
        counter!("sova_relay_tls_handshake_failures_total").increment(1);
    }

    /// A registration was refused.
    pub(crate) fn registration_rejected(&self, reason: &'static str) {
        bump(&self.registrations_rejected, 1);
        counter!("sova_relay_registrations_rejected_total", "reason" => reason).increment(1);
    }

    /// A registered instance left.
    pub(crate) fn disconnected(&self, reason: &DisconnectReason) {
        counter!("sova_relay_disconnects_total", "reason" => reason.label()).increment(1);
        if reason.is_slow_consumer() {
            bump(&self.slow_consumer_disconnects, 1);
            counter!("sova_relay_slow_consumer_disconnects_total").increment(1);
        }
    }

    /// A message arrived from a registered instance.
    pub(crate) fn message_in(&self, bytes: usize) {
        bump(&self.messages_in, 1);
        bump(&self.bytes_in, bytes as u64);
        self.hot.messages_in.increment(1);
        self.hot.bytes_in.increment(bytes as u64);
    }

    /// An update was queued for `recipients` instances, `frame_len` bytes each, `elapsed`
    /// after it was received.
    pub(crate) fn broadcast(&self, recipients: usize, frame_len: usize, elapsed: Duration) {
        let bytes = (recipients * frame_len) as u64;
        bump(&self.broadcasts, 1);
        bump(&self.messages_out, recipients as u64);
        bump(&self.bytes_out, bytes);
        self.hot.broadcasts.increment(1);
        self.hot.messages_out.increment(recipients as u64);
        self.hot.bytes_out.increment(bytes);
        self.hot.fanout_seconds.record(elapsed.as_secs_f64());
    }

    /// A message was dropped for exceeding the rate limit.
    pub(crate) fn rate_limited(&self) {
        bump(&self.rate_limited, 1);
        counter!("sova_relay_rate_limited_total").increment(1);
    }

    /// An `Error` was sent to an instance because of its input (`kind`: fixed set).
    pub(crate) fn client_error(&self, kind: &'static str) {
        bump(&self.client_errors, 1);
        counter!("sova_relay_client_errors_total", "kind" => kind).increment(1);
        if kind == "oversize" {
            counter!("sova_relay_oversize_messages_total").increment(1);
        }
    }

    /// Reads a total.
    pub(crate) fn get(total: &AtomicU64) -> u64 {
        total.load(Ordering::Relaxed)
    }
}

/// Decrements the open-connection gauges when the connection ends.
pub(crate) struct OpenConnection<'a> {
    stats: &'a Stats,
    transport: &'static str,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
        gauge!("sova_relay_open_connections", "transport" => self.transport).decrement(1.0);
    }
}

/// Current instances and sessions.
pub(crate) fn set_population(instances: usize, sessions: usize) {
    gauge!("sova_relay_instances").set(instances as f64);
    gauge!("sova_relay_sessions").set(sessions as f64);
}

/// `accept()` failed (e.g. out of file descriptors).
/// Whether this node reaches NATS and the cluster's objects (cluster mode).
pub(crate) fn cluster_connected(connected: bool) {
    gauge!("sova_cluster_connected").set(if connected { 1.0 } else { 0.0 });
}

/// The cluster as this node sees it: live nodes, instances registered on the others.
pub(crate) fn set_cluster_population(nodes: usize, remote_instances: usize) {
    gauge!("sova_cluster_nodes").set(nodes as f64);
    gauge!("sova_cluster_remote_instances").set(remote_instances as f64);
}

/// Updates published to the cluster's stream: a handle, looked up once (one per update).
pub(crate) fn cluster_published() -> Counter {
    counter!("sova_cluster_published_total")
}

/// An update or snapshot NATS did not take: other nodes may miss it.
pub(crate) fn cluster_publish_failed() {
    counter!("sova_cluster_publish_failures_total").increment(1);
}

/// A node declared dead by this one (its instances released).
pub(crate) fn cluster_dead_node() {
    counter!("sova_cluster_dead_nodes_total").increment(1);
}

pub(crate) fn accept_failed() {
    counter!("sova_relay_accept_errors_total").increment(1);
}

/// The process-wide Prometheus recorder, installed on first use. Metrics are global to the
/// process (as Prometheus scrapes a process); tests that run several relays in one process
/// therefore see each other's counts.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
            0.05,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("sova_relay_fanout_seconds".into()),
                &buckets,
            )
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("Another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}
