//! The WebSocket transport: each binary message carries one MessagePack body, the same body
//! as a TCP frame without its length prefix.

use std::io;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, ProtocolError, FRAME_HEADER_LEN};
use tokio_tungstenite::tungstenite::error::{
    CapacityError, Error as WsError, ProtocolError as WsProtocolError,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::transport::{Received, Stream};
use crate::ClientError;

/// One WebSocket connection to the relay.
pub(crate) struct WsConnection {
    socket: WebSocketStream<Stream>,
}

impl WsConnection {
    /// Upgrades `stream` (plain TCP or TLS, already open) with a request for `url`.
    /// Messages over `max_len` bytes (or frames) end the connection.
    pub(crate) async fn connect(
        stream: Stream,
        url: &str,
        max_len: usize,
    ) -> Result<Self, ClientError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_len))
            .max_frame_size(Some(max_len));
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                .await
                .map_err(|err| match err {
                    WsError::Http(response) => ClientError::WebSocket(format!(
                        "{url} refused the upgrade: HTTP {}",
                        response.status()
                    )),
                    other => ws_error(other),
                })?;
        Ok(Self { socket })
    }

    /// The next message; see [`crate::transport::Transport::recv`]. Cancel-safe: the socket
    /// buffers a partly read message, and each loop turn consumes a whole one.
    pub(crate) async fn recv(&mut self) -> Result<Received, ClientError> {
        loop {
            let message = match self.socket.next().await {
                None => return Ok(Received::Closed(None)),
                Some(Ok(message)) => message,
                Some(Err(err)) if is_end_of_stream(&err) => return Ok(Received::Closed(None)),
                Some(Err(err)) => return Err(ws_error(err)),
            };
            match message {
                WsMessage::Binary(body) => {
                    return Ok(Received::Message(decode_body(body).map_err(Into::into)))
                }
                WsMessage::Text(_) => {
                    return Err(ClientError::Protocol(ProtocolError::Invalid(
                        "text WebSocket message (the relay sends MessagePack in binary messages)"
                            .to_owned(),
                    )))
                }
                WsMessage::Close(frame) => {
                    return Ok(Received::Closed(frame.as_ref().map(describe_close)))
                }
                // The WebSocket layer answers pings itself.
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Writes frames as binary messages without their length prefix, then flushes.
    pub(crate) async fn send(
        &mut self,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), ClientError> {
        for frame in frames {
            let body = frame.slice(FRAME_HEADER_LEN.min(frame.len())..);
            self.socket
                .feed(WsMessage::Binary(body))
                .await
                .map_err(ws_error)?;
        }
        self.socket.flush().await.map_err(ws_error)
    }

    /// Starts the closing handshake; the relay answers with its own close frame.
    pub(crate) async fn shutdown(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.socket.close(Some(frame)).await;
    }
}

/// Whether `err` only says the connection is over (with or without a closing handshake).
fn is_end_of_stream(err: &WsError) -> bool {
    matches!(
        err,
        WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(WsProtocolError::ResetWithoutClosingHandshake)
    )
}

fn ws_error(err: WsError) -> ClientError {
    match err {
        WsError::Io(err) => ClientError::Io(err),
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            ClientError::Protocol(ProtocolError::TooLarge {
                len: size,
                max: max_size,
            })
        }
        err if is_end_of_stream(&err) => ClientError::Io(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "WebSocket connection closed",
        )),
        other => ClientError::WebSocket(other.to_string()),
    }
}

/// The relay's close reason and code, as one line.
fn describe_close(frame: &CloseFrame) -> String {
    if frame.reason.is_empty() {
        format!("code {}", frame.code)
    } else {
        format!("{} (code {})", frame.reason, frame.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_read_as_one_line() {
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "relay shutting down".into(),
        };
        assert_eq!(describe_close(&frame), "relay shutting down (code 1001)");
        let bare = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        assert_eq!(describe_close(&bare), "code 1000");
    }
}
