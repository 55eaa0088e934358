//! State the connection task publishes for the handles to read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::ClockEstimator;
use crate::handshake::Registration;
use crate::resume::SeqPosition;
use crate::Peer;

/// Shared between the handles and the task. The mutex is a std one because it guards a few
/// fields read or written in place, never across an `.await`.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Updates accepted into the queue so far; `flush` waits until `written` catches up.
    enqueued: AtomicU64,
    /// Updates written to a socket so far, published by the task (which owns the sender, so
    /// waiters learn when it stops).
    written: watch::Receiver<u64>,
}

/// What the current (or last) registration looks like.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Our id while registered; `None` while disconnected.
    pub(crate) id: Option<Uuid>,
    /// The other instances of the session, kept up to date from presence messages.
    pub(crate) peers: Vec<Peer>,
    /// Capabilities granted at the last registration.
    pub(crate) capabilities: Vec<String>,
    /// Round trips and relay timestamps of the current connection.
    pub(crate) clock: ClockEstimator,
    /// How far the application's state reaches: the last broadcast, snapshot or resync it
    /// took from the event stream. What a snapshot it publishes claims to contain.
    pub(crate) consumed: Option<SeqPosition>,
}

impl Shared {
    /// State for a freshly registered client, and the sender the task publishes
    /// written-update counts on.
    pub(crate) fn new(registration: &Registration) -> (Self, watch::Sender<u64>) {
        let (written_tx, written) = watch::channel(0);
        let shared = Self {
            state: Mutex::default(),
            enqueued: AtomicU64::new(0),
            written,
        };
        shared.registered(registration);
        shared.lock().consumed = registration.epoch.map(|epoch| SeqPosition {
            epoch,
            seq: registration.seq.unwrap_or(0),
        });
        (shared, written_tx)
    }

    /// Locks the state. A panic elsewhere cannot leave these plain fields half-updated in a
    /// way that matters, so a poisoned lock is used as is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a (re-)registration; returns the peers known before it.
    pub(crate) fn registered(&self, registration: &Registration) -> Vec<Peer> {
        let mut state = self.lock();
        state.id = Some(registration.id);
        state.capabilities = registration.capabilities.clone();
        state.clock = ClockEstimator::default();
        std::mem::replace(&mut state.peers, registration.peers.clone())
    }

    /// Records that the application took in an event that moves its state to `position`.
    pub(crate) fn consumed(&self, position: SeqPosition) {
        self.lock().consumed = Some(position);
    }

    /// Records the loss of the connection.
    pub(crate) fn disconnected(&self) {
        self.lock().id = None;
    }

    /// Counts one more update accepted into the queue.
    pub(crate) fn enqueued(&self) {
        self.enqueued.fetch_add(1, Ordering::AcqRel);
    }

    /// Updates accepted so far.
    pub(crate) fn enqueued_count(&self) -> u64 {
        self.enqueued.load(Ordering::Acquire)
    }

    /// Watches the number of updates written.
    pub(crate) fn watch_written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }
}
