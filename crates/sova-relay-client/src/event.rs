use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Something that happened on the connection, in the order it happened.
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
    rx: mpsc::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
