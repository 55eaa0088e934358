//! The seam between the client and the bytes on the wire: framed TCP and WebSocket today.
//! `tls://` and `wss://` will be further [`Endpoint`] variants whose [`Transport`] yields and
//! takes the same frames, so nothing above this file changes.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, FrameCodec, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::websocket::WsConnection;
use crate::ClientError;

/// Headroom over the configured message size for frames the relay builds around an update
/// (a `StateBroadcast` carries a name where the `StateUpdate` carried an id).
const RECEIVE_HEADROOM: usize = 4096;

/// Port of a `ws://` address that names none.
const WS_DEFAULT_PORT: u16 = 80;

/// Where the relay is, parsed from the address the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Length-prefixed MessagePack over plain TCP: `HOST:PORT` or `tcp://HOST:PORT`.
    Tcp {
        /// `HOST:PORT`, resolved at each connection attempt (a relay may move).
        authority: String,
    },
    /// One MessagePack body per binary message over plain WebSocket: `ws://HOST[:PORT]/PATH`.
    Ws {
        /// `HOST:PORT` to open the TCP connection to (port 80 when the URL names none).
        connect_to: String,
        /// The URL as given: its host and path go into the upgrade request.
        url: String,
    },
}

impl Endpoint {
    /// Parses `HOST:PORT`, `tcp://HOST:PORT` or `ws://HOST[:PORT]/PATH`.
    pub(crate) fn parse(address: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let authority = match address.split_once("://") {
            None => address,
            Some(("tcp", rest)) => rest,
            Some(("ws", rest)) => return Self::parse_ws(address, rest).map_err(invalid),
            Some(("wss" | "tls", _)) => return Err(invalid("this transport is not supported yet")),
            Some(_) => {
                return Err(invalid(
                    "unknown scheme (expected HOST:PORT or ws://HOST:PORT/PATH)",
                ))
            }
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| invalid("missing :PORT"))?;
        if host.is_empty() || host.contains('/') {
            return Err(invalid("expected HOST:PORT"));
        }
        port.parse::<u16>().map_err(|_| invalid("bad port"))?;
        Ok(Self::Tcp {
            authority: authority.to_owned(),
        })
    }

    /// `rest` is what follows `ws://` in `url`.
    fn parse_ws(url: &str, rest: &str) -> Result<Self, &'static str> {
        let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(path_start);
        if !path.starts_with('/') {
            return Err("missing path (the relay serves WebSocket at /ws: ws://HOST:PORT/ws)");
        }
        if path.contains('#') {
            return Err("a WebSocket URL has no #fragment");
        }
        if authority.contains('@') {
            return Err("credentials in the address are not supported");
        }
        // The port is whatever follows the last colon outside an IPv6 literal's brackets.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| "bad port")?)
            }
            _ => (authority, WS_DEFAULT_PORT),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) {
            return Err("expected ws://HOST:PORT/PATH");
        }
        if url
            .parse::<tokio_tungstenite::tungstenite::http::Uri>()
            .is_err()
        {
            return Err("not a valid URL");
        }
        Ok(Self::Ws {
            connect_to: format!("{host}:{port}"),
            url: url.to_owned(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { authority } => f.write_str(authority),
            Self::Ws { url, .. } => f.write_str(url),
        }
    }
}

/// What one read from the relay gave.
pub(crate) enum Received {
    /// A message, or a body that did not decode (reported; the connection goes on).
    Message(Result<Message, ClientError>),
    /// The relay ended the connection cleanly; with WebSocket, its close reason and code.
    Closed(Option<String>),
}

/// Passes already-framed bytes through (frames are encoded once, by the protocol crate).
struct RawFrames;

impl Encoder<Bytes> for RawFrames {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> std::io::Result<()> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// One open connection to the relay: decoded messages in, encoded frames out.
pub(crate) enum Transport {
    /// Framed TCP.
    Tcp(TcpConnection),
    /// WebSocket (boxed: its buffers make it much larger than the TCP variant).
    Ws(Box<WsConnection>),
}

impl Transport {
    /// Opens a connection; the caller bounds the time it may take.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        max_message_size: usize,
    ) -> Result<Self, ClientError> {
        let max_len = max_message_size.saturating_add(RECEIVE_HEADROOM);
        Ok(match endpoint {
            Endpoint::Tcp { authority } => {
                Self::Tcp(TcpConnection::connect(authority, max_len).await?)
            }
            Endpoint::Ws { connect_to, url } => Self::Ws(Box::new(
                WsConnection::connect(connect_to, url, max_len).await?,
            )),
        })
    }

    /// The next message, or the end of the connection. Cancel-safe.
    ///
    /// A transport error ends the connection (the stream can no longer be trusted); a body
    /// that does not decode is returned as `Received::Message(Err(..))` so the caller can
    /// report it and go on.
    pub(crate) async fn recv(&mut self) -> Result<Received, ClientError> {
        match self {
            Self::Tcp(tcp) => tcp.recv().await,
            Self::Ws(ws) => ws.recv().await,
        }
    }

    /// Writes frames (each as `encode_frame` made it, length prefix included) in one flush,
    /// within `limit`.
    pub(crate) async fn send(
        &mut self,
        frames: impl IntoIterator<Item = Bytes>,
        limit: Duration,
    ) -> Result<(), ClientError> {
        let write = async {
            match self {
                Self::Tcp(tcp) => tcp.send(frames).await,
                Self::Ws(ws) => ws.send(frames).await,
            }
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Ends our side of the connection (TCP half-close, WebSocket close frame): the relay
    /// unregisters us, and what it still sends stays readable until it closes too.
    pub(crate) async fn shutdown(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            match self {
                Self::Tcp(tcp) => tcp.shutdown().await,
                Self::Ws(ws) => ws.shutdown().await,
            }
        })
        .await;
    }
}

/// Length-prefixed frames over TCP.
pub(crate) struct TcpConnection {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, RawFrames>,
}

impl TcpConnection {
    async fn connect(authority: &str, max_len: usize) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Self {
            reader: FramedRead::new(read, FrameCodec::new(max_len)),
            writer: FramedWrite::new(write, RawFrames),
        })
    }

    async fn recv(&mut self) -> Result<Received, ClientError> {
        match self.reader.next().await {
            None => Ok(Received::Closed(None)),
            Some(Ok(body)) => Ok(Received::Message(decode_body(body).map_err(Into::into))),
            Some(Err(err)) => Err(err.into()),
        }
    }

    async fn send(&mut self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), ClientError> {
        for frame in frames {
            self.writer.feed(frame).await?;
        }
        Ok(self.writer.flush().await?)
    }

    async fn shutdown(&mut self) {
        let _ = self.writer.flush().await;
        let _ = self.writer.get_mut().shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_explain() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9090").unwrap().to_string(),
            "127.0.0.1:9090"
        );
        assert_eq!(
            Endpoint::parse("tcp://relay.example:1")
                .unwrap()
                .to_string(),
            "relay.example:1"
        );
        assert!(Endpoint::parse("[::1]:9090").is_ok());
        let ws = |connect_to: &str, url: &str| Endpoint::Ws {
            connect_to: connect_to.to_owned(),
            url: url.to_owned(),
        };
        for (address, connect_to) in [
            ("ws://127.0.0.1:9090/ws", "127.0.0.1:9090"),
            ("ws://relay.example/ws", "relay.example:80"),
            ("ws://[::1]:9090/ws", "[::1]:9090"),
            ("ws://[::1]/sova/ws?room=1", "[::1]:80"),
        ] {
            assert_eq!(Endpoint::parse(address).unwrap(), ws(connect_to, address));
        }
        assert_eq!(
            Endpoint::parse("ws://relay:1/ws").unwrap().to_string(),
            "ws://relay:1/ws"
        );
        for bad in [
            "relay",
            "relay:",
            "relay:99999",
            ":80",
            "http://x:1",
            "wss://x:1/ws",
            "tls://x:1",
            "ws://x:1",
            "ws://x:1?a",
            "ws://x:99999/ws",
            "ws://:1/ws",
            "ws://user@x:1/ws",
            "ws://x:1/ws#top",
            "ws://::1/ws",
            "ws://x:1/a b",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(bad),
                    Err(ClientError::InvalidAddress { .. })
                ),
                "{bad}"
            );
        }
    }
}
