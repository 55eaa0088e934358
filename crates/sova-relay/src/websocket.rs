//! The WebSocket transport: each binary message carries one MessagePack body (no length
//! prefix). Registration, sessions, limits and fan-out are the TCP transport's, shared.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{self, CloseFrame, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use sova_relay_protocol::{ProtocolError, FRAME_HEADER_LEN};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tracing::{debug, info, Instrument, Span};

use crate::audit::AuditEvent;
use crate::connection::{self, handshake_limit, Inbound, Peer};
use crate::outbox::{FrameSink, Outbox};
use crate::reason::DisconnectReason;
use crate::server::Shared;

/// Read buffer of one WebSocket connection, in bytes.
const WS_READ_BUFFER: usize = 4096;

/// Longest close reason a WebSocket close frame can carry, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// `GET /ws`: upgrades, then serves the socket as one instance's connection.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let max = shared.config.max_message_size;
    let span = Span::current();
    // tungstenite's read buffer is allocated up front (128 KiB by default): keep it small.
    // Its write buffer only grows with a burst, and batching writes is what it is for.
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_failed_upgrade(|err| debug!(error = %err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            // axum spawns this on its own; tracking it lets shutdown wait for it.
            let tracker = shared.tracker.clone();
            tracker.track_future(serve(shared, socket, peer).instrument(span))
        })
}

async fn serve(shared: Arc<Shared>, socket: WebSocket, peer: Peer) {
    info!("New WebSocket connection from {}", peer.addr);
    let _open = shared.stats.connection_opened(peer.transport);
    shared.audit.record(
        AuditEvent::new("connect")
            .peer(peer.addr.ip())
            .transport(peer.transport),
    );
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let (sink, stream) = socket.split();
    let (outbox, receiver) = Outbox::new(shared.config.max_pending_bytes, &shared.hard_stop);
    shared.tracker.spawn(
        receiver
            .run_writer(WsSink(sink), shared.config.write_timeout)
            .in_current_span(),
    );
    let inbound = WsInbound {
        stream,
        max_len: handshake_limit(shared.config.max_message_size),
    };
    connection::serve(shared.clone(), outbox, peer, deadline, inbound).await;
}

/// Binary messages in, as frame bodies.
struct WsInbound {
    stream: SplitStream<WebSocket>,
    max_len: usize,
}

impl Stream for WsInbound {
    type Item = Result<Bytes, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let message = match ready!(self.stream.poll_next_unpin(cx)) {
                None | Some(Ok(ws::Message::Close(_))) => return Poll::Ready(None),
                Some(Err(err)) => return Poll::Ready(Some(Err(protocol_error(err)))),
                Some(Ok(message)) => message,
            };
            return Poll::Ready(Some(match message {
                ws::Message::Binary(body) if body.is_empty() => Err(ProtocolError::ZeroLength),
                ws::Message::Binary(body) if body.len() > self.max_len => {
                    Err(ProtocolError::TooLarge {
                        len: body.len(),
                        max: self.max_len,
                    })
                }
                ws::Message::Binary(body) => Ok(body),
                ws::Message::Text(_) => Err(ProtocolError::Invalid(
                    "text messages are not supported: send MessagePack in binary messages".into(),
                )),
                // Pings are answered by the WebSocket layer itself.
                ws::Message::Ping(_) | ws::Message::Pong(_) | ws::Message::Close(_) => continue,
            }));
        }
    }
}

impl Inbound for WsInbound {
    fn set_max_message_size(&mut self, max: usize) {
        self.max_len = max;
    }

    fn has_partial_frame(&self) -> bool {
        false
    }
}

fn protocol_error(err: axum::Error) -> ProtocolError {
    let inner = err.into_inner();
    match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            size,
            max_size,
        })) => ProtocolError::TooLarge {
            len: *size,
            max: *max_size,
        },
        Some(tokio_tungstenite::tungstenite::Error::Io(_)) | None => {
            ProtocolError::Io(io::Error::other(inner))
        }
        Some(other) => ProtocolError::Invalid(format!("WebSocket: {other}")),
    }
}

/// Frames out, as binary messages without the length prefix.
struct WsSink(SplitSink<WebSocket, ws::Message>);

impl FrameSink for WsSink {
    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        for frame in frames {
            let body = frame.slice(FRAME_HEADER_LEN..);
            self.0
                .feed(ws::Message::Binary(body))
                .await
                .map_err(io::Error::other)?;
        }
        self.0.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self, reason: Option<&DisconnectReason>) {
        let frame = reason.map(|reason| CloseFrame {
            code: reason.close_code(),
            reason: truncate(reason.to_string(), MAX_CLOSE_REASON).into(),
        });
        let _ = self.0.send(ws::Message::Close(frame)).await;
        let _ = self.0.close().await;
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
