//! What every task of a soak shares: where the relay is and how it is configured, the
//! books, the phase of the run, and the channel on which long-lived members report.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::kick::Kickable;
use super::receiver::Books;
use super::wire::{self, Conn, Join, Registered, Transport};
use tokio_rustls::TlsConnector;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Everything runs.
    Run,
    /// Disturbances finish what they are doing and start nothing new; members go on.
    Wind,
    /// Senders stop, make sure the relay processed all they sent, and
    /// say what their last update was.
    Quiesce,
    /// Every receiver makes sure it received everything, then checks the tails.
    Barrier,
    /// The relay is being stopped: every member expects `Relay shutting down`.
    Shutdown,
}

/// The relay's settings that the checks depend on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--rate-limit`, messages a minute (and the burst).
    pub rate_limit: u32,
    /// `--max-pending-bytes`.
    pub max_pending_bytes: usize,
    /// `--max-message-size`.
    pub max_message_size: usize,
    /// `--handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// `--history-max-updates`.
    pub history_max_updates: u64,
    /// `--history-max-age`.
    pub history_max_age: Duration,
    /// `--admin-token`.
    pub admin_token: String,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How a long-lived member ended the run, for the cross-member checks.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Its session token.
    pub session: String,
    /// Its name.
    pub name: String,
    /// Its registration's id at the end.
    pub id: Uuid,
    /// It sends nothing (so its `last_seq` is the session's).
    pub silent: bool,
    /// It sends and never re-registered: its seq span can be accounted exactly.
    pub accountable: bool,
    /// The session's members as its notices told it.
    pub view: HashSet<Uuid>,
    /// The last `seq` it received.
    pub last_seq: u64,
    /// `seq` at its fresh registration.
    pub base_seq: u64,
    /// Broadcasts it received since then.
    pub received: u64,
    /// Updates it sent since then.
    pub own: u64,
}

/// What long-lived members report to the conductor.
#[derive(Debug)]
pub enum Ack {
    /// Stopped sending; the relay processed everything it sent.
    Quiesced,
    /// Received everything; tails checked.
    Final(Box<Summary>),
    /// Saw the relay's shutdown (or not).
    Closed,
}

/// Shared by every task.
pub struct Ctx {
    /// The relay (in a cluster: the first node, for HTTP).
    pub addr: SocketAddr,
    /// In a cluster (`--nodes`): every node, which clients join round-robin; else empty.
    pub nodes: Vec<SocketAddr>,
    /// The next node a fresh registration goes to.
    pub next_node: AtomicUsize,
    /// Its settings.
    pub settings: Settings,
    /// The books.
    pub books: Books,
    /// The phase.
    pub phase: watch::Receiver<Phase>,
    /// Reports of long-lived members.
    pub acks: mpsc::UnboundedSender<Ack>,
    /// Churners that may be kicked.
    pub kickable: Kickable,
    /// When the run started.
    pub started: Instant,
    /// Share of well-behaved connections (members, churners, resumes) over WebSocket.
    pub websocket_share: f64,
    /// Share of the same connections inside TLS.
    pub tls_share: f64,
    /// Trusts the relay's certificate.
    pub tls: Option<TlsConnector>,
}

impl Ctx {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether disturbances should go on.
    pub fn running(&self) -> bool {
        self.phase() == Phase::Run
    }

    /// Whether the relay is a cluster of nodes (whose `seq`s are not contiguous).
    pub fn cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The node a fresh registration goes to (round-robin; 0 without a cluster).
    pub fn pick_node(&self) -> usize {
        match self.nodes.len() {
            0 => 0,
            n => self.next_node.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// The node a client on `node` resumes on: the next one, so that it changes node.
    pub fn other_node(&self, node: usize) -> usize {
        match self.nodes.len() {
            0 => 0,
            n => (node + 1) % n,
        }
    }

    /// The transport of a well-behaved client's next connection.
    pub fn pick_transport(&self, rng: &mut fastrand::Rng) -> Transport {
        let websocket = rng.f64() < self.websocket_share;
        let tls = self.tls.is_some() && rng.f64() < self.tls_share;
        match (websocket, tls) {
            (false, false) => Transport::Tcp,
            (false, true) => Transport::Tls,
            (true, false) => Transport::WebSocket,
            (true, true) => Transport::WebSocketTls,
        }
    }

    /// Connects to `node` over `transport` and registers.
    pub async fn join_over(
        &self,
        transport: Transport,
        node: usize,
        join: &Join<'_>,
    ) -> std::io::Result<Result<(Conn, Registered), String>> {
        wire::join_over(transport, self.node_addr(node), self.tls.as_ref(), join).await
    }

    /// The address of `node`.
    pub fn node_addr(&self, node: usize) -> SocketAddr {
        self.nodes.get(node).copied().unwrap_or(self.addr)
    }

    /// Reports to the conductor (which may have given up waiting; that is fine).
    pub fn ack(&self, ack: Ack) {
        let _ = self.acks.send(ack);
    }
}

/// Waits until the phase is at least `phase`.
pub async fn reached(phase: &mut watch::Receiver<Phase>, at_least: Phase) {
    let _ = phase.wait_for(|p| *p >= at_least).await;
}

/// Milliseconds since the Unix epoch, as a `StateUpdate` timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random duration in `[lo, hi]` milliseconds.
pub fn millis(rng: &mut fastrand::Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}
