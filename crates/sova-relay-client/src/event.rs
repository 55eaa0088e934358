use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::resume::SeqPosition;
use crate::state::Shared;

/// Something that happened on the connection, in the order it happened.
///
/// After a lost connection the events come in this order: `Disconnected`; then, once
/// registered again, `Reconnected`; `Resynced` or `ResyncRequired` if the client asked to
/// resume (see [`ClientConfig::resume`](crate::ClientConfig)); `Left` and `Joined` for who
/// came and went meanwhile; with `ResyncRequired` and snapshots on, the session's `Snapshot`
/// if it has one; then `Broadcast`s: after `Resynced` the ones missed while disconnected,
/// oldest first, then live ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Another instance of the session sent an update.
    Broadcast {
        /// Name of the sending instance.
        from: String,
        /// The sender's timestamp, unchanged by the relay.
        timestamp: u64,
        /// The update's bytes (decoded from either wire form).
        data: Vec<u8>,
    },
    /// An instance joined the session (live, or found present after a reconnect).
    Joined {
        /// Its id.
        id: Uuid,
        /// Its name.
        name: String,
    },
    /// An instance left the session (live, or found gone after a reconnect).
    Left {
        /// Its id.
        id: Uuid,
        /// Its name.
        name: String,
    },
    /// The relay reported a problem (e.g. rate limit), or the client gave up reconnecting.
    Error(String),
    /// The connection was lost; if reconnection is on, the client is retrying.
    Disconnected(String),
    /// The client registered again after a `Disconnected`; queued updates follow.
    Reconnected,
    /// The relay resumed the session where the lost connection stopped: the broadcasts
    /// missed meanwhile follow as `Broadcast`s, each exactly once, before live ones. The
    /// application's state is still good.
    Resynced,
    /// The relay could not resume (it restarted, the session was recreated, or its history
    /// no longer covers the gap): broadcasts were missed, and the application must rebuild
    /// its state, from the `Snapshot` that follows if snapshots are on and the session has
    /// one, or from its peers. Live broadcasts follow.
    ResyncRequired,
    /// The session's state as a peer published it ([`crate::RelaySender::send_snapshot`]):
    /// replace the application's state with it, then apply the `Broadcast`s that follow.
    /// Sent when joining a session that has one, and after `ResyncRequired`, to clients with
    /// snapshots on.
    Snapshot {
        /// The last broadcast the state contains.
        seq: u64,
        /// The state, as its publisher encoded it.
        data: Vec<u8>,
    },
}

/// An event on its way to the application, with the point in the session's history the
/// application's state reaches once it has taken it in (for `send_snapshot`).
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) event: Event,
    pub(crate) position: Option<SeqPosition>,
}

impl From<Event> for Delivered {
    fn from(event: Event) -> Self {
        Self {
            event,
            position: None,
        }
    }
}

/// Another instance of the session, as known to this client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Id assigned by the relay (a new one each time the peer registers).
    pub id: Uuid,
    /// Instance name.
    pub name: String,
}

/// The stream of [`Event`]s of one client. Ends when the client stops for good.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Delivered>,
    /// Where the application's state is: the snapshot position `send_snapshot` uses.
    shared: Arc<Shared>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Delivered>, shared: Arc<Shared>) -> Self {
        Self { rx, shared }
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        let delivered = self.rx.recv().await;
        delivered.map(|d| self.taken(d))
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        let delivered = self.rx.try_recv().ok();
        delivered.map(|d| self.taken(d))
    }

    /// Notes how far the application's state reaches once it has `delivered`.
    fn taken(&self, delivered: Delivered) -> Event {
        if let Some(position) = delivered.position {
            self.shared.consumed(position);
        }
        delivered.event
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx
            .poll_recv(cx)
            .map(|delivered| delivered.map(|d| self.taken(d)))
    }
}
