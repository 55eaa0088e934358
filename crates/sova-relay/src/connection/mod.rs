//! One instance's connection: the handshake, then the reader loop that rate-limits and
//! routes its messages. Writing is the outbox's writer task; this side never blocks on a
//! peer.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sova_relay_protocol::{
    decode_body, encode_frame, FrameCodec, Message, PendingBroadcast, ProtocolError, UpdateData,
    HANDSHAKE_MAX_MESSAGE_SIZE,
};
use tokio::io::AsyncRead;
use tokio::time::{interval_at, Instant, Interval};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use crate::audit::AuditEvent;
use crate::outbox::Outbox;
use crate::reason::DisconnectReason;
use crate::registry::{now_ms, Registration};
use crate::server::Shared;
use crate::tokens::Role;

mod handshake;

const LISTENER_CANNOT_SEND: &str = "StateUpdate refused: this session token has the listener role";

/// At most one rate-limit `Error` per this interval, so a flood is not answered by a flood.
const RATE_ERROR_INTERVAL: Duration = Duration::from_secs(1);

/// A stream of frame bodies from one peer, whatever the transport.
pub(crate) trait Inbound:
    Stream<Item = Result<Bytes, ProtocolError>> + Unpin + Send
{
    /// Raises (or lowers) the largest body accepted from now on.
    fn set_max_message_size(&mut self, max: usize);
    /// Whether part of a frame has arrived and is waiting for the rest.
    fn has_partial_frame(&self) -> bool;
}

impl<R: AsyncRead + Unpin + Send> Inbound for FramedRead<R, FrameCodec> {
    fn set_max_message_size(&mut self, max: usize) {
        self.decoder_mut().set_max_len(max);
    }

    fn has_partial_frame(&self) -> bool {
        !self.read_buffer().is_empty()
    }
}

/// The frame limit before registration: small, unless the relay's own limit is smaller.
pub(crate) fn handshake_limit(max_message_size: usize) -> usize {
    max_message_size.min(HANDSHAKE_MAX_MESSAGE_SIZE)
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// `tcp`, `tls`, `websocket` or `wss`.
    pub(crate) transport: &'static str,
    /// Whether the connection is encrypted.
    pub(crate) secure: bool,
}

impl Peer {
    pub(crate) fn plain(addr: SocketAddr, transport: &'static str) -> Self {
        Peer {
            addr,
            transport,
            secure: false,
        }
    }

    pub(crate) fn secure(addr: SocketAddr, transport: &'static str) -> Self {
        Peer {
            addr,
            transport,
            secure: true,
        }
    }
}

/// Serves one connection until it ends; the writer task drains `outbox` meanwhile.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    outbox: Outbox,
    peer: Peer,
    handshake_deadline: Instant,
    mut inbound: impl Inbound,
) {
    let connection = Connection {
        shared,
        outbox,
        peer,
    };
    let Some(registration) = connection.handshake(&mut inbound, handshake_deadline).await else {
        connection.outbox.finish(None);
        return;
    };
    inbound.set_max_message_size(connection.shared.config.max_message_size);
    let reason = connection.relay(&mut inbound, &registration).await;
    connection.report_departure(&registration, &reason);
    if let Some(cluster) = &connection.shared.registry.cluster {
        // Its last updates reach the others (here too) through the cluster's stream: they
        // must be there before anyone hears that it left.
        let member = &registration.member;
        if !Box::pin(cluster.wait_sequenced(member)).await {
            warn!(instance = %member.name, "Cluster: the instance's last updates did not come back from the stream before it left");
        }
    }
    drop(registration);
    // After a kill the writer has already stopped and said what it could.
    connection.outbox.finish(Some(reason));
}

struct Connection {
    shared: Arc<Shared>,
    outbox: Outbox,
    peer: Peer,
}

/// Per-connection state of the reader loop.
struct Relaying<'a> {
    registration: &'a Registration,
    limiter: DefaultDirectRateLimiter,
    last_rate_error: Option<Instant>,
    pings: Option<Interval>,
    missed_pongs: u32,
}

impl Connection {
    fn report_departure(&self, registration: &Registration, reason: &DisconnectReason) {
        let member = &registration.member;
        if reason.is_slow_consumer() {
            warn!(instance = %member.name, id = %member.id, %reason,
                  pending_bytes = member.outbox.pending_bytes(),
                  "Instance '{}' disconnected: {reason}", member.name);
            self.audit(
                AuditEvent::new("slow_consumer")
                    .session(&registration.session.label)
                    .instance(&member.name, member.id)
                    .reason(reason),
            );
        } else {
            info!(instance = %member.name, id = %member.id, reason = reason.label(),
                  "Instance '{}' disconnected: {reason}", member.name);
        }
        self.shared.stats.disconnected(reason);
        self.audit(
            AuditEvent::new("disconnected")
                .session(&registration.session.label)
                .instance(&member.name, member.id)
                .reason(reason.label()),
        );
    }

    fn audit(&self, event: AuditEvent) {
        let event = event
            .peer(self.peer.addr.ip())
            .transport(self.peer.transport);
        self.shared.audit.record(event);
    }

    async fn relay(
        &self,
        inbound: &mut impl Inbound,
        registration: &Registration,
    ) -> DisconnectReason {
        let config = &self.shared.config;
        let rate = NonZeroU32::new(config.rate_limit).unwrap_or(NonZeroU32::MIN);
        let pong_capable = registration.member.pong;
        let mut state = Relaying {
            registration,
            limiter: RateLimiter::direct_with_clock(
                Quota::per_minute(rate),
                self.shared.rate_clock.clone(),
            ),
            last_rate_error: None,
            pings: pong_capable.then(|| {
                let first = Instant::now() + config.ping_interval;
                interval_at(first, config.ping_interval)
            }),
            missed_pongs: 0,
        };
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.outbox.killed() => return self.outbox.reason(),
                _ = self.outbox.close_requested() => return self.outbox.reason(),
                _ = self.shared.shutdown.cancelled() => return DisconnectReason::Shutdown,
                _ = next_tick(&mut state.pings) => {
                    if state.missed_pongs >= config.max_missed_pongs {
                        return DisconnectReason::PongTimeout { missed: state.missed_pongs };
                    }
                    state.missed_pongs += 1;
                    self.send(&Message::Ping { timestamp: now_ms() });
                    continue;
                }
                frame = inbound.next() => frame,
            };
            match frame {
                None => return DisconnectReason::ClientClosed,
                Some(Err(ProtocolError::Io(err))) => {
                    return DisconnectReason::ReadFailed(err.kind())
                }
                Some(Err(err)) => {
                    warn!(error = %err, "Invalid frame; closing");
                    self.shared.stats.client_error(frame_error_kind(&err));
                    return match err {
                        ProtocolError::TooLarge { .. } => {
                            DisconnectReason::TooLarge(err.to_string())
                        }
                        _ => DisconnectReason::Protocol(err.to_string()),
                    };
                }
                Some(Ok(body)) => self.handle(body, &mut state).await,
            }
        }
    }

    async fn handle(&self, body: Bytes, state: &mut Relaying<'_>) {
        let len = body.len();
        let message = decode_body(body);
        if let Ok(Message::Pong { .. }) = message {
            state.missed_pongs = 0;
            return;
        }
        if !self.within_rate_limit(state) {
            return;
        }
        let member = &state.registration.member;
        member.touch();
        self.shared.stats.message_in(len);
        match message {
            Ok(Message::StateUpdate {
                source_instance_id,
                timestamp,
                update_data,
            }) => {
                if member.role == Role::Listener {
                    self.send_error("listener", LISTENER_CANNOT_SEND.to_owned());
                } else if source_instance_id == member.id {
                    self.fan_out(state.registration, timestamp, &update_data)
                        .await;
                } else {
                    warn!(claimed = %source_instance_id, "StateUpdate with another instance's id dropped");
                    self.send_error(
                        "source_mismatch",
                        format!("StateUpdate dropped: source_instance_id {source_instance_id} is not this instance's id {}", member.id),
                    );
                }
            }
            Ok(Message::Ping { timestamp }) => self.send(&Message::Pong { timestamp }),
            Ok(Message::SessionSnapshot { seq, data }) => {
                self.publish_snapshot(state.registration, seq, data).await;
            }
            Ok(Message::RegisterInstance { .. }) => {
                self.send_error(
                    "already_registered",
                    format!("Already registered as '{}'", member.name),
                );
            }
            Ok(other) => {
                debug!(kind = other.kind(), "Unexpected message from an instance");
                self.send_error(
                    "unexpected",
                    format!("Unexpected message: {}", other.kind()),
                );
            }
            Err(err) => {
                warn!(error = %err, "Invalid message");
                self.send_error("invalid_message", err.to_string());
            }
        }
    }

    fn within_rate_limit(&self, state: &mut Relaying<'_>) -> bool {
        if state.limiter.check().is_ok() {
            return true;
        }
        self.shared.stats.rate_limited();
        let due = state
            .last_rate_error
            .is_none_or(|at| at.elapsed() >= RATE_ERROR_INTERVAL);
        if due {
            state.last_rate_error = Some(Instant::now());
            let name = &state.registration.member.name;
            warn!(instance = %name, limit_per_minute = self.shared.config.rate_limit, "Rate limit exceeded");
            let session = &state.registration.session.label;
            let id = state.registration.member.id;
            self.audit(
                AuditEvent::new("rate_limited")
                    .session(session)
                    .instance(name, id),
            );
            self.send_error(
                "rate_limited",
                format!("Rate limit exceeded for instance {name}"),
            );
        }
        false
    }

    /// Encodes the broadcast once; every other member's queue gets the same bytes.
    async fn fan_out(&self, registration: &Registration, timestamp: u64, update_data: &UpdateData) {
        let started = Instant::now();
        let source = &registration.member;
        let session = &registration.session;
        let pending = PendingBroadcast::new(&source.name, timestamp, update_data);
        let (delivered, frame_len) = match &self.shared.registry.cluster {
            None => session.broadcast(source, pending),
            // Every node delivers it from the cluster's stream, this one too.
            Some(cluster) => match Box::pin(cluster.publish(session, source, pending)).await {
                Ok(()) => return,
                Err(pending) => session.broadcast_unsequenced(source, pending),
            },
        };
        debug!(recipients = delivered, bytes = frame_len, "Relayed update");
        self.shared
            .stats
            .broadcast(delivered, frame_len, started.elapsed());
    }

    /// Keeps a snapshot of the session's state for late joiners.
    async fn publish_snapshot(&self, registration: &Registration, seq: u64, data: UpdateData) {
        let member = &registration.member;
        let max = self.shared.config.max_snapshot_bytes;
        let refusal = if !member.snapshot {
            Some(
                "Unexpected message: SessionSnapshot (capability `snapshot` not granted)"
                    .to_owned(),
            )
        } else if member.role == Role::Listener {
            Some("SessionSnapshot refused: this session token has the listener role".to_owned())
        } else if data.raw().len() > max {
            Some(format!(
                "Snapshot too large: {} bytes (max: {max})",
                data.raw().len()
            ))
        } else {
            // "Every update I sent before this message": in a cluster, they must first come
            // back from the stream with their seq.
            if let Some(cluster) = &self.shared.registry.cluster {
                if !Box::pin(cluster.wait_sequenced(member)).await {
                    warn!(instance = %member.name, "Cluster: the instance's updates did not all come back from the stream; its snapshot may repeat some");
                }
            }
            match registration.session.publish_snapshot(member, seq, data) {
                Ok(published) => {
                    if let Some(cluster) = &self.shared.registry.cluster {
                        Box::pin(cluster.publish_snapshot(&registration.session, &published)).await;
                    }
                    None
                }
                Err(text) => Some(text),
            }
        };
        match refusal {
            Some(text) => self.send_error("snapshot_refused", text),
            None => debug!(seq, "Session snapshot replaced"),
        }
    }

    fn send(&self, message: &Message) {
        self.outbox.deliver(encode_frame(message));
    }

    fn send_error(&self, kind: &'static str, text: String) {
        self.shared.stats.client_error(kind);
        self.send(&Message::error(text));
    }
}

fn frame_error_kind(err: &ProtocolError) -> &'static str {
    match err {
        ProtocolError::TooLarge { .. } => "oversize",
        ProtocolError::ZeroLength => "zero_length",
        _ => "invalid_frame",
    }
}

async fn next_tick(pings: &mut Option<Interval>) {
    match pings {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// Each connection is a task holding this future: its size is paid per instance, idle
    /// or not (BENCHMARKS.md, idle). Calls whose futures are large (NATS) are boxed.
    #[test]
    fn a_connection_task_stays_small() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let shared = Shared::new(Config::default(), None).unwrap();
        let (outbox, _receiver) = Outbox::new(1024, &shared.hard_stop);
        let (stream, _peer_end) = tokio::io::duplex(64);
        let inbound = FramedRead::new(stream, FrameCodec::new(1024));
        let peer = Peer::plain(SocketAddr::from(([127, 0, 0, 1], 1)), "tcp");
        let task = serve(shared, outbox, peer, Instant::now(), inbound);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1536, "a connection's future takes {size} bytes");
    }
}
