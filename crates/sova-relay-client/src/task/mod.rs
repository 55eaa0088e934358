//! The one task that owns the socket: it writes queued updates, turns incoming messages into
//! events, answers the relay's pings, keeps a heartbeat, and reconnects.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message, UpdateData, CAPABILITY_SNAPSHOT};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, warn};

mod ending;
mod reconnect;

use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::event::Delivered;
use crate::handshake::Registration;
use crate::resume::{Position, SeqPosition};
use crate::state::Shared;
use crate::transport::{Received, Target, Transport};
use crate::{ClientConfig, ClientError, Event, Peer};

/// Most updates written in one flush.
const WRITE_BATCH: usize = 64;

/// Most of our pings awaiting a pong; beyond it `ping()` fails at once.
const MAX_PENDING_PINGS: usize = 64;

/// How long `close` waits for the relay to acknowledge the end of the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the handles queue for the relay, written in queue order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A `StateUpdate`; the id is added at write time, since it changes when the client
    /// registers again.
    Update { timestamp: u64, data: UpdateData },
    /// A `SessionSnapshot` of the application's state at `at`; dropped (with an `Error`
    /// event) if the session's epoch changed before it could be written.
    Snapshot { at: SeqPosition, data: UpdateData },
}

/// Requests from the handles other than updates.
#[derive(Debug)]
pub(crate) enum Control {
    /// Measure one round trip.
    Ping(oneshot::Sender<Result<Duration, ClientError>>),
    /// Write what is queued, end the connection, stop.
    Close(oneshot::Sender<()>),
}

/// A ping of ours awaiting its pong.
struct PendingPing {
    timestamp: u64,
    sent: Instant,
    /// `None` for the task's own heartbeat pings.
    reply: Option<oneshot::Sender<Result<Duration, ClientError>>>,
}

/// Why serving a connection ended.
enum Exit {
    /// The connection failed; reconnect if configured.
    Lost(String),
    /// The handles asked to stop (`close`), or all of them are gone (`None`).
    Stop(Option<oneshot::Sender<()>>),
}

/// The channels the task is built from.
pub(crate) struct Channels {
    pub(crate) updates: mpsc::Receiver<Outgoing>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) events: mpsc::Sender<Delivered>,
    pub(crate) written: watch::Sender<u64>,
}

/// The connection task's state.
pub(crate) struct Task {
    target: Target,
    config: ClientConfig,
    shared: Arc<Shared>,
    updates: mpsc::Receiver<Outgoing>,
    control: mpsc::Receiver<Control>,
    events: mpsc::Sender<Delivered>,
    /// Events not yet handed to the application; the socket is not read while any wait, so
    /// a slow application slows the relay's sends to us instead of growing memory.
    backlog: VecDeque<Delivered>,
    /// Where we are in the session's history, to resume from after a lost connection.
    position: Position,
    /// Updates taken from the queue whose write failed; written first after reconnecting.
    unsent: VecDeque<Outgoing>,
    /// Updates written so far, published through `written_tx` for `flush`.
    written: u64,
    written_tx: watch::Sender<u64>,
    pings: VecDeque<PendingPing>,
    last_ping_timestamp: u64,
    backoff: Backoff,
}

impl Task {
    /// A task for a client that has just registered as `registration` says.
    pub(crate) fn new(
        target: Target,
        config: ClientConfig,
        registration: &Registration,
        shared: Arc<Shared>,
        channels: Channels,
    ) -> Self {
        let backoff = Backoff::new(config.reconnect.clone());
        Self {
            position: Position::new(registration),
            target,
            config,
            shared,
            updates: channels.updates,
            control: channels.control,
            events: channels.events,
            backlog: VecDeque::new(),
            unsent: VecDeque::new(),
            written: 0,
            written_tx: channels.written,
            pings: VecDeque::new(),
            last_ping_timestamp: 0,
            backoff,
        }
    }

    /// Runs until the client is closed, dropped, or gives up reconnecting.
    pub(crate) async fn run(mut self, mut transport: Transport) {
        loop {
            let reply = match self.serve(&mut transport).await {
                Exit::Stop(reply) => {
                    self.close(&mut transport).await;
                    reply
                }
                Exit::Lost(reason) => {
                    warn!(%reason, "connection to relay lost");
                    // Let go of the socket now, so that a relay still holding it learns
                    // at once that our registration (and its name) is free.
                    drop(transport);
                    self.connection_lost(reason);
                    if !self.config.reconnect.enabled {
                        self.finish(None).await;
                        return;
                    }
                    match self.reconnect().await {
                        Ok(Some(next)) => {
                            transport = next;
                            continue;
                        }
                        Ok(None) => None,
                        Err(stop) => stop,
                    }
                }
            };
            self.finish(reply).await;
            return;
        }
    }

    /// Serves one registered connection until it fails or the client stops.
    async fn serve(&mut self, transport: &mut Transport) -> Exit {
        if let Err(err) = self.write_unsent(transport).await {
            return Exit::Lost(err.to_string());
        }
        if let Err(err) = self.send_ping(transport, None).await {
            return Exit::Lost(err.to_string());
        }
        let mut heartbeat = self.config.heartbeat_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        // A clone, so that a reserved permit does not borrow `self` in the other branches.
        let events = self.events.clone();
        loop {
            let result = tokio::select! {
                biased;
                permit = events.reserve(), if !self.backlog.is_empty() => {
                    deliver(&mut self.backlog, permit.ok());
                    Ok(())
                }
                command = self.control.recv() => match command {
                    Some(Control::Ping(reply)) => self.send_ping(transport, Some(reply)).await,
                    Some(Control::Close(reply)) => return Exit::Stop(Some(reply)),
                    None => return Exit::Stop(None),
                },
                received = transport.recv(), if self.backlog.is_empty() => match received {
                    Ok(Received::Message(message)) => self.on_message(transport, message).await,
                    Ok(Received::Closed(reason)) => return Exit::Lost(closed_by_relay(reason)),
                    Err(err) => Err(err),
                },
                update = self.updates.recv() => match update {
                    Some(update) => self.write_updates(transport, update).await,
                    None => return Exit::Stop(None),
                },
                () = tick(&mut heartbeat) => self.heartbeat(transport).await,
            };
            if let Err(err) = result {
                return Exit::Lost(err.to_string());
            }
        }
    }

    /// Writes `first` and whatever else is queued, up to a batch, in one flush.
    async fn write_updates(
        &mut self,
        transport: &mut Transport,
        first: Outgoing,
    ) -> Result<(), ClientError> {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match self.updates.try_recv() {
                Ok(update) => batch.push(update),
                Err(_) => break,
            }
        }
        self.write_batch(transport, batch).await
    }

    /// Writes updates that failed on the previous connection, in their original order.
    async fn write_unsent(&mut self, transport: &mut Transport) -> Result<(), ClientError> {
        while !self.unsent.is_empty() {
            let count = self.unsent.len().min(WRITE_BATCH);
            let batch: Vec<_> = self.unsent.drain(..count).collect();
            self.write_batch(transport, batch).await?;
        }
        Ok(())
    }

    async fn write_batch(
        &mut self,
        transport: &mut Transport,
        batch: Vec<Outgoing>,
    ) -> Result<(), ClientError> {
        let (id, snapshots) = {
            let state = self.shared.lock();
            let granted = state.capabilities.iter().any(|c| c == CAPABILITY_SNAPSHOT);
            (state.id, granted)
        };
        let Some(id) = id else {
            self.unsent.extend(batch);
            return Err(ClientError::NotConnected);
        };
        let mut frames: Vec<Bytes> = Vec::with_capacity(batch.len());
        let mut kept = Vec::with_capacity(batch.len());
        for item in batch {
            let frame = match &item {
                Outgoing::Update { timestamp, data } => encode_frame(&Message::StateUpdate {
                    source_instance_id: id,
                    timestamp: *timestamp,
                    update_data: data.clone(),
                }),
                Outgoing::Snapshot { at, data } => match self.snapshot_refusal(*at, snapshots) {
                    None => encode_frame(&Message::SessionSnapshot {
                        seq: at.seq,
                        data: data.clone(),
                    }),
                    Some(reason) => {
                        // Done with, as far as `flush` is concerned; never resent.
                        warn!(%reason, "snapshot dropped");
                        self.push(Event::Error(reason));
                        self.written += 1;
                        continue;
                    }
                },
            };
            frames.push(frame);
            kept.push(item);
        }
        let batch = kept;
        let result = transport.send(frames, self.config.request_timeout).await;
        self.written_tx.send_replace(self.written);
        match result {
            Ok(()) => {
                self.written += batch.len() as u64;
                self.written_tx.send_replace(self.written);
                debug!(count = batch.len(), "updates written");
                Ok(())
            }
            Err(err) => {
                // Nothing says how much of the batch reached the relay: resend all of it
                // after reconnecting (at-least-once for this batch only).
                for update in batch.into_iter().rev() {
                    self.unsent.push_front(update);
                }
                Err(err)
            }
        }
    }

    /// Why a snapshot taken at `at` may not be written on this connection, if it may not.
    fn snapshot_refusal(&self, at: SeqPosition, granted: bool) -> Option<String> {
        if !granted {
            Some("snapshot not sent: the relay no longer grants the `snapshot` capability".into())
        } else if !self.position.is_current_epoch(at) {
            Some(
                "snapshot not sent: it was taken before the session restarted \
                 (relay restart or session recreated); rebuild the state first"
                    .into(),
            )
        } else {
            None
        }
    }

    /// Reacts to one message from the relay.
    async fn on_message(
        &mut self,
        transport: &mut Transport,
        message: Result<Message, ClientError>,
    ) -> Result<(), ClientError> {
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                warn!(%err, "undecodable message from relay");
                self.push(Event::Error(format!(
                    "undecodable message from relay: {err}"
                )));
                return Ok(());
            }
        };
        match message {
            Message::Ping { timestamp } => {
                let pong = encode_frame(&Message::Pong { timestamp });
                transport.send([pong], self.config.request_timeout).await?;
                self.shared.lock().clock.add_relay_timestamp(timestamp);
                if self.pings.is_empty() {
                    self.send_ping(transport, None).await?;
                }
            }
            Message::Pong { timestamp } => self.on_pong(timestamp),
            other => {
                let event = self.event_for(other);
                self.backlog.extend(event);
            }
        }
        Ok(())
    }

    /// Queues an event for the application.
    fn push(&mut self, event: Event) {
        self.backlog.push_back(event.into());
    }

    /// The event a relay message means, updating the peer list and the position in the
    /// session's history on the way.
    fn event_for(&mut self, message: Message) -> Option<Delivered> {
        let event = match message {
            Message::StateBroadcast {
                source_instance_name,
                timestamp,
                update_data,
                seq,
            } => {
                let me = &self.config.name;
                if !self.position.broadcast(seq, &source_instance_name, me) {
                    debug!(?seq, "our own update, replayed by the relay: skipped");
                    return None;
                }
                let event = match update_data.to_vec() {
                    Ok(data) => Event::Broadcast {
                        from: source_instance_name,
                        timestamp,
                        data,
                    },
                    Err(err) => {
                        Event::Error(format!("broadcast from {source_instance_name}: {err}"))
                    }
                };
                let position = seq.and(self.position.current());
                return Some(Delivered { event, position });
            }
            Message::SessionSnapshot { seq, data } => {
                let position = self.position.snapshot(seq);
                let event = match data.to_vec() {
                    Ok(data) => Event::Snapshot { seq, data },
                    Err(err) => Event::Error(format!("session snapshot: {err}")),
                };
                return Some(Delivered { event, position });
            }
            Message::InstanceConnected {
                instance_id,
                instance_name,
            } => {
                let peer = Peer {
                    id: instance_id,
                    name: instance_name.clone(),
                };
                let mut state = self.shared.lock();
                if state.peers.contains(&peer) {
                    return None;
                }
                state.peers.push(peer);
                Event::Joined {
                    id: instance_id,
                    name: instance_name,
                }
            }
            Message::InstanceDisconnected {
                instance_id,
                instance_name,
            } => {
                self.shared
                    .lock()
                    .peers
                    .retain(|peer| peer.id != instance_id);
                Event::Left {
                    id: instance_id,
                    name: instance_name,
                }
            }
            Message::Error { message } => {
                warn!(%message, "relay reported an error");
                Event::Error(message)
            }
            other => Event::Error(format!("unexpected {} from relay", other.kind())),
        };
        Some(event.into())
    }

    /// Sends a ping of ours; `reply` gets the round trip.
    async fn send_ping(
        &mut self,
        transport: &mut Transport,
        reply: Option<oneshot::Sender<Result<Duration, ClientError>>>,
    ) -> Result<(), ClientError> {
        if self.pings.len() >= MAX_PENDING_PINGS {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ClientError::Timeout(self.config.request_timeout)));
            }
            return Ok(());
        }
        // Strictly increasing, so that each pong matches exactly one ping.
        let timestamp = now_ms().max(self.last_ping_timestamp + 1);
        self.last_ping_timestamp = timestamp;
        self.pings.push_back(PendingPing {
            timestamp,
            sent: Instant::now(),
            reply,
        });
        let ping = encode_frame(&Message::Ping { timestamp });
        transport.send([ping], self.config.request_timeout).await
    }

    fn on_pong(&mut self, timestamp: u64) {
        let Some(index) = self.pings.iter().position(|p| p.timestamp == timestamp) else {
            debug!(timestamp, "pong for no ping of ours");
            return;
        };
        let Some(ping) = self.pings.remove(index) else {
            return;
        };
        let rtt = ping.sent.elapsed();
        self.shared.lock().clock.add_rtt(rtt);
        if let Some(reply) = ping.reply {
            let _ = reply.send(Ok(rtt));
        }
    }

    /// Declares the connection dead if a ping went unanswered too long, then pings again.
    async fn heartbeat(&mut self, transport: &mut Transport) -> Result<(), ClientError> {
        let limit = self.config.request_timeout;
        if self.pings.front().is_some_and(|p| p.sent.elapsed() > limit) {
            return Err(ClientError::Timeout(limit));
        }
        self.send_ping(transport, None).await
    }
}

/// Hands the oldest backlog event to the application, or drops the backlog if the
/// application no longer listens.
fn deliver(backlog: &mut VecDeque<Delivered>, permit: Option<mpsc::Permit<'_, Delivered>>) {
    match (permit, backlog.pop_front()) {
        (Some(permit), Some(event)) => permit.send(event),
        _ => backlog.clear(),
    }
}

/// The `Disconnected` reason for a connection the relay ended, with its close reason if any.
fn closed_by_relay(reason: Option<String>) -> String {
    match reason {
        Some(reason) => format!("relay closed the connection: {reason}"),
        None => "relay closed the connection".to_owned(),
    }
}

/// Waits for the next heartbeat tick, or forever if heartbeats are off.
async fn tick(heartbeat: &mut Option<Interval>) {
    match heartbeat {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
