//! The handles an application holds: [`RelayClient`] and its cloneable [`RelaySender`].

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::{UpdateData, CAPABILITY_SNAPSHOT};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::handshake::register;
use crate::state::Shared;
use crate::task::{Channels, Control, Outgoing, Task};
use crate::transport::Target;
use crate::{ClientConfig, ClientError, ClockOffset, Event, Events, Peer, UpdateForm};

/// Size of a `StateUpdate` body around its `update_data`, at most: map and variant name (13),
/// field map (1), `source_instance_id` and its 16-byte bin (37), `timestamp` and a u64 (19),
/// `update_data` key (12).
const STATE_UPDATE_OVERHEAD: usize = 82;

/// Size of a `SessionSnapshot` body around its `data`, at most: map and variant name (17),
/// field map (1), `seq` and a u64 (13), `data` key (5).
const SNAPSHOT_OVERHEAD: usize = 36;

/// Requests (`ping`, `close`) that may wait for the task at once.
const CONTROL_CAPACITY: usize = 64;

/// A registered connection to a relay: send updates, read [`Event`]s.
///
/// One background task owns the socket; this handle talks to it through bounded channels.
/// The connection lives while a handle ([`RelayClient`] or a [`RelaySender`]) does; dropping
/// them all writes what is queued and disconnects. Use [`RelayClient::close`] to wait for it.
#[derive(Debug)]
pub struct RelayClient {
    sender: RelaySender,
    events: Events,
}

/// A cloneable handle for sending updates and pings from any task.
#[derive(Debug, Clone)]
pub struct RelaySender {
    shared: Arc<Shared>,
    updates: mpsc::Sender<Outgoing>,
    control: mpsc::Sender<Control>,
    queue_capacity: usize,
    max_message_size: usize,
    update_form: UpdateForm,
    request_timeout: Duration,
}

impl RelayClient {
    /// Connects to `address` (`HOST:PORT`, `tls://HOST:PORT`, `ws://HOST:PORT/ws` or
    /// `wss://HOST:PORT/ws`, see the [crate] docs) and registers; fails with the relay's
    /// reason.
    ///
    /// This first attempt is not retried: reconnection applies once registered.
    pub async fn connect(address: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let target = Target::new(address, config.ca_file.as_deref())?;
        let (transport, registration) = register(&target, &config, None).await?;
        tracing::info!(relay = %target, id = %registration.id, name = %config.name, "registered");
        let (shared, written) = Shared::new(&registration);
        let shared = Arc::new(shared);
        let (updates_tx, updates) = mpsc::channel(config.queue_capacity.max(1));
        let (control_tx, control) = mpsc::channel(CONTROL_CAPACITY);
        let (events_tx, events) = mpsc::channel(config.event_capacity.max(1));
        let sender = RelaySender {
            shared: Arc::clone(&shared),
            updates: updates_tx,
            control: control_tx,
            queue_capacity: config.queue_capacity.max(1),
            max_message_size: config.max_message_size,
            update_form: config.update_form,
            request_timeout: config.request_timeout,
        };
        let channels = Channels {
            updates,
            control,
            events: events_tx,
            written,
        };
        let task = Task::new(target, config, &registration, Arc::clone(&shared), channels);
        tokio::spawn(task.run(transport));
        Ok(Self {
            sender,
            events: Events::new(events, shared),
        })
    }

    /// The next event; `None` once the client has stopped for good.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The event stream, e.g. to use it as a `futures::Stream`.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// A cloneable sending handle.
    pub fn sender(&self) -> RelaySender {
        self.sender.clone()
    }

    /// Separates the sending handle from the event stream, e.g. to move them into two tasks.
    pub fn split(self) -> (RelaySender, Events) {
        (self.sender, self.events)
    }

    /// Queues an update stamped now; see [`RelaySender::send_update`].
    pub fn send_update(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.sender.send_update(data)
    }

    /// Queues an update with a timestamp of the caller's; see [`RelaySender::send_update_at`].
    pub fn send_update_at(
        &self,
        data: impl AsRef<[u8]>,
        timestamp: u64,
    ) -> Result<(), ClientError> {
        self.sender.send_update_at(data, timestamp)
    }

    /// Queues an update, waiting for room; see [`RelaySender::send_update_wait`].
    pub async fn send_update_wait(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.sender.send_update_wait(data).await
    }

    /// Queues a snapshot of the session's state; see [`RelaySender::send_snapshot`].
    pub fn send_snapshot(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.sender.send_snapshot(data)
    }

    /// Waits until every update queued so far is written; see [`RelaySender::flush`].
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.sender.flush().await
    }

    /// Measures one round trip to the relay; see [`RelaySender::ping`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.sender.ping().await
    }

    /// The relay's clock relative to ours, once known; see [`RelaySender::clock_offset`].
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        self.sender.clock_offset()
    }

    /// Our id while registered; `None` while reconnecting.
    pub fn instance_id(&self) -> Option<Uuid> {
        self.sender.instance_id()
    }

    /// The other instances of the session.
    pub fn peers(&self) -> Vec<Peer> {
        self.sender.peers()
    }

    /// Capabilities the relay granted at the last registration.
    pub fn capabilities(&self) -> Vec<String> {
        self.sender.capabilities()
    }

    /// Writes what is queued, ends the connection and waits for the relay to close it.
    /// Events that arrived meanwhile stay readable.
    pub async fn close(&self) {
        self.sender.close().await;
    }
}

impl RelaySender {
    /// Queues an update stamped with the current time (ms since the Unix epoch).
    ///
    /// Never waits: fails with [`ClientError::QueueFull`] when `queue_capacity` updates are
    /// already waiting (e.g. during a long disconnection). Queued updates survive reconnects.
    pub fn send_update(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.send_update_at(data, now_ms())
    }

    /// Queues an update with the given timestamp, forwarded unchanged to the other instances.
    pub fn send_update_at(
        &self,
        data: impl AsRef<[u8]>,
        timestamp: u64,
    ) -> Result<(), ClientError> {
        let update = self.outgoing(data.as_ref(), timestamp)?;
        self.enqueue(update)
    }

    /// Queues a `SessionSnapshot` for late joiners (and clients that must resync): `data` is
    /// the application's state with every broadcast it has taken from the event stream
    /// applied (the last one's `seq` goes with it, or a `Snapshot`'s) and every update it has
    /// queued before this call. Written in order with those updates; `data` is forwarded
    /// byte for byte to the clients that join later, as [`Event::Snapshot`].
    ///
    /// Needs [`ClientConfig::snapshots`](crate::ClientConfig) and a relay that granted the
    /// capability ([`ClientError::NotGranted`] otherwise). A snapshot still queued when the
    /// session restarts (new epoch: relay restart, session recreated) is not sent: an
    /// [`Event::Error`] says so, since the state it describes belongs to the old session.
    pub fn send_snapshot(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        let (granted, position) = {
            let state = self.shared.lock();
            let granted = state.capabilities.iter().any(|c| c == CAPABILITY_SNAPSHOT);
            (granted, state.consumed)
        };
        if !granted {
            return Err(ClientError::NotGranted(CAPABILITY_SNAPSHOT));
        }
        let at = position.ok_or_else(|| {
            ClientError::Unexpected("the relay gave no position in the session".to_owned())
        })?;
        let data = UpdateData::from_bin(data.as_ref());
        let len = data.raw().len() + SNAPSHOT_OVERHEAD;
        if len > self.max_message_size {
            return Err(ClientError::TooLarge {
                len,
                max: self.max_message_size,
            });
        }
        self.enqueue(Outgoing::Snapshot { at, data })
    }

    fn enqueue(&self, item: Outgoing) -> Result<(), ClientError> {
        self.updates.try_send(item).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => ClientError::QueueFull {
                capacity: self.queue_capacity,
            },
            mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
        })?;
        self.shared.enqueued();
        Ok(())
    }

    /// Queues an update stamped now, waiting for room in the queue instead of failing.
    pub async fn send_update_wait(&self, data: impl AsRef<[u8]>) -> Result<(), ClientError> {
        let update = self.outgoing(data.as_ref(), now_ms())?;
        self.updates
            .send(update)
            .await
            .map_err(|_| ClientError::Closed)?;
        self.shared.enqueued();
        Ok(())
    }

    fn outgoing(&self, data: &[u8], timestamp: u64) -> Result<Outgoing, ClientError> {
        let data = match self.update_form {
            UpdateForm::Array => UpdateData::from_array(data),
            UpdateForm::Bin => UpdateData::from_bin(data),
        };
        let len = data.raw().len() + STATE_UPDATE_OVERHEAD;
        if len > self.max_message_size {
            return Err(ClientError::TooLarge {
                len,
                max: self.max_message_size,
            });
        }
        Ok(Outgoing::Update { timestamp, data })
    }

    /// Waits until every update queued before this call has been written to the socket
    /// (through reconnections if need be). Written is not yet received: see `close`.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let target = self.shared.enqueued_count();
        let mut written = self.shared.watch_written();
        written
            .wait_for(|written| *written >= target)
            .await
            .map(drop)
            .map_err(|_| ClientError::Closed)
    }

    /// Measures one round trip to the relay (`Ping`, answered by `Pong`).
    ///
    /// Fails with [`ClientError::NotConnected`] while reconnecting and
    /// [`ClientError::Timeout`] after `request_timeout`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Ping(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }

    /// The relay's clock relative to ours, estimated from the relay's own `Ping`s and our
    /// round trips; `None` until the relay has pinged us. See [`ClockOffset`] for the bound.
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        self.shared.lock().clock.offset()
    }

    /// Our id while registered; `None` while reconnecting.
    pub fn instance_id(&self) -> Option<Uuid> {
        self.shared.lock().id
    }

    /// The other instances of the session.
    pub fn peers(&self) -> Vec<Peer> {
        self.shared.lock().peers.clone()
    }

    /// Capabilities the relay granted at the last registration.
    pub fn capabilities(&self) -> Vec<String> {
        self.shared.lock().capabilities.clone()
    }

    /// Writes what is queued, ends the connection and waits for the relay to close it.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.control.send(Control::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}
