//! Counters, gauges and histograms, named in one place. Never labelled by instance or
//! session: label values are fixed sets, so cardinality stays bounded.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::reason::DisconnectReason;

/// A connection was accepted on `transport` (`tcp`, …).
pub(crate) fn connection_opened(transport: &'static str) {
    counter!("sova_relay_connections_total", "transport" => transport).increment(1);
}

/// Current instances and sessions.
pub(crate) fn set_population(instances: usize, sessions: usize) {
    gauge!("sova_relay_instances").set(instances as f64);
    gauge!("sova_relay_sessions").set(sessions as f64);
}

/// A registration was refused.
pub(crate) fn registration_rejected(reason: &'static str) {
    counter!("sova_relay_registrations_rejected_total", "reason" => reason).increment(1);
}

/// A registered instance left.
pub(crate) fn disconnected(reason: &DisconnectReason) {
    counter!("sova_relay_disconnects_total", "reason" => reason.label()).increment(1);
    if reason.is_slow_consumer() {
        counter!("sova_relay_slow_consumer_disconnects_total").increment(1);
    }
}

/// A message arrived from a registered instance.
pub(crate) fn message_in(bytes: usize) {
    counter!("sova_relay_messages_in_total").increment(1);
    counter!("sova_relay_bytes_in_total").increment(bytes as u64);
}

/// An update was queued for `recipients` instances, `frame_len` bytes each, `elapsed`
/// after it was received.
pub(crate) fn broadcast(recipients: usize, frame_len: usize, elapsed: Duration) {
    counter!("sova_relay_broadcasts_total").increment(1);
    counter!("sova_relay_messages_out_total").increment(recipients as u64);
    counter!("sova_relay_bytes_out_total").increment((recipients * frame_len) as u64);
    histogram!("sova_relay_fanout_seconds").record(elapsed.as_secs_f64());
}

/// A message was dropped for exceeding the rate limit.
pub(crate) fn rate_limited() {
    counter!("sova_relay_rate_limited_total").increment(1);
}

/// An `Error` was sent to an instance because of its input.
pub(crate) fn client_error(kind: &'static str) {
    counter!("sova_relay_client_errors_total", "kind" => kind).increment(1);
}

/// `accept()` failed (e.g. out of file descriptors).
pub(crate) fn accept_failed() {
    counter!("sova_relay_accept_errors_total").increment(1);
}
