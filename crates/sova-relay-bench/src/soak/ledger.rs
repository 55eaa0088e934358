//! What the clients know together: every registration the soak made (so a receiver can
//! check who sent an update and whether it saw the sender's last one), and the running
//! totals that `/metrics` is compared with at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use uuid::Uuid;

use super::wire::Transport;

/// How a registered instance behaves as a source of updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Sends numbered updates 1, 2, 3, … well under the rate limit.
    Sender,
    /// Sends no update.
    Silent,
    /// Floods far over the rate limit: the relay drops some, so its counters have gaps.
    Abuser,
}

/// One registration, as the other clients may look it up.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its instance name.
    pub name: String,
    /// How it behaves.
    pub kind: SourceKind,
    /// Its last counter, written once it has stopped sending and the relay has processed
    /// everything it sent (a Ping answered), before it leaves: receivers that see it leave
    /// must have seen this one.
    pub last: Option<u64>,
    /// For an abuser: how many of its updates its session's witness received.
    pub witnessed: Option<u64>,
}

/// An abuser's own account of one life.
#[derive(Debug, Clone)]
pub struct AbuserLife {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Updates sent.
    pub updates: u64,
    /// Pings sent (after the flood, to learn that everything was processed).
    pub pings: u64,
    /// Pongs received (pings the rate limiter let through).
    pub pongs: u64,
    /// Body bytes of the answered pings.
    pub pong_bytes: u64,
    /// Body bytes of one update.
    pub update_bytes: u64,
    /// `Rate limit exceeded` errors received.
    pub errors: u64,
    /// Seconds from sending `RegisterInstance` to the last Pong: an upper bound of how long
    /// its rate limiter ran.
    pub active_secs: f64,
}

/// Every registration of the run.
#[derive(Default)]
pub struct Ledger {
    sources: Mutex<HashMap<Uuid, Source>>,
    abusers: Mutex<Vec<AbuserLife>>,
}

impl Ledger {
    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Source>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a registration, before it sends anything.
    pub fn registered(&self, id: Uuid, name: &str, kind: SourceKind) {
        let last = (kind == SourceKind::Silent).then_some(0);
        self.sources().insert(
            id,
            Source {
                name: name.to_owned(),
                kind,
                last,
                witnessed: None,
            },
        );
    }

    /// Records a sender's last counter, before it leaves.
    pub fn finished(&self, id: Uuid, last: u64) {
        if let Some(source) = self.sources().get_mut(&id) {
            source.last = Some(last);
        }
    }

    /// Records how many of an abuser's updates its witness received.
    pub fn witnessed(&self, id: Uuid, count: u64) {
        if let Some(source) = self.sources().get_mut(&id) {
            source.witnessed = Some(count);
        }
    }

    /// The registration `id`, if the soak made it.
    pub fn source(&self, id: Uuid) -> Option<Source> {
        self.sources().get(&id).cloned()
    }

    /// Records an abuser's life once it has ended.
    pub fn abuser_done(&self, life: AbuserLife) {
        self.abusers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(life);
    }

    /// Every abuser life, with what its witness saw.
    pub fn abusers(&self) -> Vec<(AbuserLife, Option<u64>)> {
        let lives = self.abusers.lock().unwrap_or_else(|p| p.into_inner());
        let sources = self.sources();
        lives
            .iter()
            .map(|life| {
                let seen = sources.get(&life.id).and_then(|s| s.witnessed);
                (life.clone(), seen)
            })
            .collect()
    }
}

macro_rules! tally {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Running totals of what the clients did and saw.
        #[derive(Default)]
        pub struct Tally {
            $($(#[$doc])* pub $field: AtomicU64,)*
        }

    };
}

tally! {
    /// Messages a registered connection sent that the relay processed within the rate
    /// limit (everything but `Pong`s and frames it closed on): `messages_in_total`.
    msgs_in,
    /// Their body bytes: `bytes_in_total`.
    bytes_in,
    /// Well-behaved updates (each is relayed): with the abusers' relayed ones,
    /// `broadcasts_total`.
    updates,
    /// Successful registrations, fresh or resumed.
    registrations,
    /// Connections whose first byte made the relay speak frames: `connections_total{tcp}`.
    framed_connections,
    /// Well-behaved connections inside TLS: `connections_total{tls}`.
    tls_connections,
    /// Well-behaved connections over WebSocket: `connections_total{websocket}`.
    websocket_connections,
    /// Well-behaved connections over WebSocket inside TLS: `connections_total{wss}`.
    wss_connections,
    /// Random bytes that began like a TLS handshake: `tls_handshake_failures_total`.
    tls_failures,
    /// HTTP requests made (probes, kicks, bad HTTP).
    http_requests,
    /// Broadcasts well-behaved clients received live (not replayed on resume).
    received_live,
    /// Broadcasts received in a resume's replay.
    received_replayed,
    /// Deliberate abrupt drops of resuming clients.
    drops,
    /// Resumes answered `ok`.
    resumes_ok,
    /// Resumes answered `resync_required`.
    resumes_resync,
    /// Resumes on another node than the dropped connection's (cluster only).
    resumes_moved,
    /// Churners that joined.
    churn_joins,
    /// Churners that left by closing (FIN).
    churn_closed,
    /// Churners that left by a reset (RST).
    churn_reset,
    /// Kicks answered 200.
    kicks,
    /// Slow consumers started.
    slow_started,
    /// Slow consumers the relay dropped.
    slow_dropped,
    /// Bad-input connections and requests.
    bad_inputs,
    /// `client_errors_total{kind="invalid_message"}` expected.
    err_invalid_message,
    /// `client_errors_total{kind="source_mismatch"}` expected.
    err_source_mismatch,
    /// `client_errors_total{kind="already_registered"}` expected.
    err_already_registered,
    /// `client_errors_total{kind="unexpected"}` expected.
    err_unexpected,
    /// `client_errors_total{kind="snapshot_refused"}` expected.
    err_snapshot_refused,
    /// Oversize headers after registration: `oversize_messages_total`.
    err_oversize,
    /// Zero-length headers after registration: `client_errors_total{kind="zero_length"}`.
    err_zero_length,
    /// `registrations_rejected_total{reason="version_mismatch"}` expected.
    rej_version_mismatch,
    /// `registrations_rejected_total{reason="invalid_name"}` expected.
    rej_invalid_name,
    /// `registrations_rejected_total{reason="name_taken"}` expected.
    rej_name_taken,
    /// Pre-registration frame errors sent on purpose (random bytes may add more).
    rej_invalid_frame,
    /// First messages other than `RegisterInstance` sent on purpose (random bytes may add more).
    rej_not_register,
    /// Handshakes left incomplete on purpose (random bytes may add more).
    rej_timeout,
}

impl Tally {
    /// A well-behaved client connected over `transport`.
    pub fn connected(&self, transport: Transport) {
        add(self.connections(transport), 1);
    }

    /// Connections over `transport`.
    pub fn connections(&self, transport: Transport) -> &AtomicU64 {
        match transport {
            Transport::Tcp => &self.framed_connections,
            Transport::Tls => &self.tls_connections,
            Transport::WebSocket => &self.websocket_connections,
            Transport::WebSocketTls => &self.wss_connections,
        }
    }
}

/// Adds `n` to a total.
pub fn add(total: &AtomicU64, n: u64) {
    total.fetch_add(n, Ordering::Relaxed);
}

/// Reads a total.
pub fn get(total: &AtomicU64) -> u64 {
    total.load(Ordering::Relaxed)
}
