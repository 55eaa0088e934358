//! The seam between the client and the bytes on the wire: framed messages or WebSocket, each
//! over plain TCP or TLS. Every [`Transport`] yields and takes the same frames, so nothing
//! above this file knows which one it talks through.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, FrameCodec, Message, ProtocolError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::tls::TlsTarget;
use crate::websocket::WsConnection;
use crate::ClientError;

/// Headroom over the configured message size for frames the relay builds around an update
/// (a `StateBroadcast` carries a name where the `StateUpdate` carried an id).
const RECEIVE_HEADROOM: usize = 4096;

/// Port of a `ws://` address that names none.
const WS_DEFAULT_PORT: u16 = 80;

/// Port of a `wss://` address that names none.
const WSS_DEFAULT_PORT: u16 = 443;

/// Where the relay is and how to talk to it, parsed from the address the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `HOST:PORT` to open the TCP connection to, resolved at each attempt (a relay may move).
    pub(crate) connect_to: String,
    /// With TLS (`tls://`, `wss://`): the host, for SNI and the certificate check.
    pub(crate) tls_host: Option<String>,
    /// What travels over the connection.
    pub(crate) framing: Framing,
}

/// What travels over a connection to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Length-prefixed MessagePack frames, what Sova instances speak.
    Frames,
    /// One MessagePack body per binary WebSocket message.
    WebSocket {
        /// The URL as given: its host and path go into the upgrade request.
        url: String,
    },
}

impl Endpoint {
    /// Parses `HOST:PORT`, `tcp://HOST:PORT`, `tls://HOST:PORT`, `ws://HOST[:PORT]/PATH` or
    /// `wss://HOST[:PORT]/PATH`.
    pub(crate) fn parse(address: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let (authority, tls) = match address.split_once("://") {
            None => (address, false),
            Some(("tcp", rest)) => (rest, false),
            Some(("tls", rest)) => (rest, true),
            Some(("ws", rest)) => return Self::parse_ws(address, rest, false).map_err(invalid),
            Some(("wss", rest)) => return Self::parse_ws(address, rest, true).map_err(invalid),
            Some(_) => {
                return Err(invalid(
                    "unknown scheme (expected HOST:PORT, tls://HOST:PORT, ws://HOST:PORT/PATH \
                     or wss://HOST:PORT/PATH)",
                ))
            }
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| invalid("missing :PORT"))?;
        if host.is_empty() || host.contains(['/', '@']) {
            return Err(invalid("expected HOST:PORT"));
        }
        port.parse::<u16>().map_err(|_| invalid("bad port"))?;
        Ok(Self {
            connect_to: authority.to_owned(),
            tls_host: tls.then(|| host.to_owned()),
            framing: Framing::Frames,
        })
    }

    /// `rest` is what follows `ws://` or `wss://` in `url`.
    fn parse_ws(url: &str, rest: &str, tls: bool) -> Result<Self, &'static str> {
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
        let default_port = if tls {
            WSS_DEFAULT_PORT
        } else {
            WS_DEFAULT_PORT
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| "bad port")?)
            }
            _ => (authority, default_port),
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
        Ok(Self {
            connect_to: format!("{host}:{port}"),
            tls_host: tls.then(|| host.to_owned()),
            framing: Framing::WebSocket {
                url: url.to_owned(),
            },
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.framing, &self.tls_host) {
            (Framing::WebSocket { url }, _) => f.write_str(url),
            (Framing::Frames, None) => f.write_str(&self.connect_to),
            (Framing::Frames, Some(_)) => write!(f, "tls://{}", self.connect_to),
        }
    }
}

/// An [`Endpoint`] with what connecting to it needs (the TLS trust store), built once per
/// client so that every reconnection trusts what the first connection trusted.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Where the relay is.
    pub(crate) endpoint: Endpoint,
    /// For `tls://` and `wss://`.
    tls: Option<TlsTarget>,
}

impl Target {
    /// Parses `address`; for TLS, loads the trust store (and `ca_file`).
    pub(crate) fn new(address: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let endpoint = Endpoint::parse(address)?;
        let websocket = matches!(endpoint.framing, Framing::WebSocket { .. });
        let tls = match &endpoint.tls_host {
            Some(host) => Some(TlsTarget::new(host, ca_file, websocket)?),
            None => None,
        };
        Ok(Self { endpoint, tls })
    }

    /// Opens the TCP connection, and the TLS session on it if the address asks for one.
    async fn open(&self) -> Result<Stream, ClientError> {
        let tcp = TcpStream::connect(&self.endpoint.connect_to).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(tls.connect(tcp).await?),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.endpoint.fmt(f)
    }
}

/// A byte stream to the relay: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream under a [`Transport`].
pub(crate) type Stream = Box<dyn Io>;

/// What one read from the relay gave.
pub(crate) enum Received {
    /// A message, or a body that did not decode (reported; the connection goes on).
    Message(Result<Message, ClientError>),
    /// The relay ended the connection cleanly; with WebSocket, its close reason and code.
    Closed(Option<String>),
}

/// Splits incoming bytes into frame bodies, and passes outgoing frames through as they are
/// (frames are encoded once, by the protocol crate, length prefix included).
struct Frames(FrameCodec);

impl Decoder for Frames {
    type Item = Bytes;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        self.0.decode(src)
    }
}

impl Encoder<Bytes> for Frames {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// One open connection to the relay: decoded messages in, encoded frames out.
pub(crate) enum Transport {
    /// Framed messages (`HOST:PORT`, `tls://`).
    Frames(FramedConnection),
    /// WebSocket (`ws://`, `wss://`; boxed: its buffers make it much larger).
    Ws(Box<WsConnection>),
}

impl Transport {
    /// Opens a connection (TCP, then TLS, then the WebSocket upgrade, as the address says);
    /// the caller bounds the time it may take.
    pub(crate) async fn connect(
        target: &Target,
        max_message_size: usize,
    ) -> Result<Self, ClientError> {
        let max_len = max_message_size.saturating_add(RECEIVE_HEADROOM);
        let stream = target.open().await?;
        Ok(match &target.endpoint.framing {
            Framing::Frames => Self::Frames(FramedConnection::new(stream, max_len)),
            Framing::WebSocket { url } => {
                Self::Ws(Box::new(WsConnection::connect(stream, url, max_len).await?))
            }
        })
    }

    /// The next message, or the end of the connection. Cancel-safe.
    ///
    /// A transport error ends the connection (the stream can no longer be trusted); a body
    /// that does not decode is returned as `Received::Message(Err(..))` so the caller can
    /// report it and go on.
    pub(crate) async fn recv(&mut self) -> Result<Received, ClientError> {
        match self {
            Self::Frames(framed) => framed.recv().await,
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
                Self::Frames(framed) => framed.send(frames).await,
                Self::Ws(ws) => ws.send(frames).await,
            }
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Ends our side of the connection (TCP half-close, TLS close_notify, WebSocket close
    /// frame): the relay unregisters us, and what it still sends stays readable until it
    /// closes too.
    pub(crate) async fn shutdown(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            match self {
                Self::Frames(framed) => framed.shutdown().await,
                Self::Ws(ws) => ws.shutdown().await,
            }
        })
        .await;
    }
}

/// Length-prefixed frames over a byte stream.
pub(crate) struct FramedConnection {
    framed: Framed<Stream, Frames>,
}

impl FramedConnection {
    fn new(stream: Stream, max_len: usize) -> Self {
        Self {
            framed: Framed::new(stream, Frames(FrameCodec::new(max_len))),
        }
    }

    async fn recv(&mut self) -> Result<Received, ClientError> {
        match self.framed.next().await {
            None => Ok(Received::Closed(None)),
            Some(Ok(body)) => Ok(Received::Message(decode_body(body).map_err(Into::into))),
            Some(Err(err)) => Err(stream_error(err)),
        }
    }

    async fn send(&mut self, frames: impl IntoIterator<Item = Bytes>) -> Result<(), ClientError> {
        for frame in frames {
            self.framed.feed(frame).await.map_err(stream_error)?;
        }
        self.framed.flush().await.map_err(stream_error)
    }

    async fn shutdown(&mut self) {
        let _ = SinkExt::<Bytes>::flush(&mut self.framed).await;
        let _ = self.framed.get_mut().shutdown().await;
    }
}

/// A failure of the byte stream is an I/O error, whatever layer noticed it.
fn stream_error(err: ProtocolError) -> ClientError {
    match err {
        ProtocolError::Io(err) => ClientError::Io(err),
        other => ClientError::Protocol(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_explain() {
        let parsed = |address: &str| Endpoint::parse(address).unwrap();
        assert_eq!(parsed("127.0.0.1:9090").to_string(), "127.0.0.1:9090");
        assert_eq!(
            parsed("tcp://relay.example:1").to_string(),
            "relay.example:1"
        );
        assert_eq!(
            parsed("tls://relay.example:1").to_string(),
            "tls://relay.example:1"
        );
        assert!(Endpoint::parse("[::1]:9090").is_ok());
        let endpoint = |connect_to: &str, tls_host: Option<&str>, framing: Framing| Endpoint {
            connect_to: connect_to.to_owned(),
            tls_host: tls_host.map(str::to_owned),
            framing,
        };
        assert_eq!(
            parsed("tls://[::1]:9443"),
            endpoint("[::1]:9443", Some("[::1]"), Framing::Frames)
        );
        for (address, connect_to, tls_host) in [
            ("ws://127.0.0.1:9090/ws", "127.0.0.1:9090", None),
            ("ws://relay.example/ws", "relay.example:80", None),
            ("ws://[::1]:9090/ws", "[::1]:9090", None),
            ("ws://[::1]/sova/ws?room=1", "[::1]:80", None),
            (
                "wss://relay.example/ws",
                "relay.example:443",
                Some("relay.example"),
            ),
            (
                "wss://127.0.0.1:9443/ws",
                "127.0.0.1:9443",
                Some("127.0.0.1"),
            ),
        ] {
            let url = address.to_owned();
            let expected = endpoint(connect_to, tls_host, Framing::WebSocket { url });
            assert_eq!(parsed(address), expected);
        }
        assert_eq!(parsed("ws://relay:1/ws").to_string(), "ws://relay:1/ws");
        for bad in [
            "relay",
            "relay:",
            "relay:99999",
            ":80",
            "http://x:1",
            "tls://x",
            "tls://user@x:1",
            "wss://x:1",
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
