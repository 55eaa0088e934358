//! The seam between the client and the bytes on the wire. Today: framed TCP. `ws://`,
//! `tls://` and `wss://` will be further [`Endpoint`] variants whose [`Transport`] yields
//! and takes the same frames, so nothing above this file changes.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, FrameCodec, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::ClientError;

/// Headroom over the configured message size for frames the relay builds around an update
/// (a `StateBroadcast` carries a name where the `StateUpdate` carried an id).
const RECEIVE_HEADROOM: usize = 4096;

/// Where the relay is, parsed from the address the user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Length-prefixed MessagePack over plain TCP: `HOST:PORT` or `tcp://HOST:PORT`.
    Tcp {
        /// `HOST:PORT`, resolved at each connection attempt (a relay may move).
        authority: String,
    },
}

impl Endpoint {
    /// Parses `HOST:PORT` or `tcp://HOST:PORT`.
    pub(crate) fn parse(address: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let authority = match address.split_once("://") {
            None => address,
            Some(("tcp", rest)) => rest,
            Some(("ws" | "wss" | "tls", _)) => {
                return Err(invalid("this transport is not supported yet"))
            }
            Some(_) => return Err(invalid("unknown scheme (expected HOST:PORT)")),
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
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { authority } => f.write_str(authority),
        }
    }
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
pub(crate) struct Transport {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, RawFrames>,
}

impl Transport {
    /// Opens a connection; the caller bounds the time it may take.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        max_message_size: usize,
    ) -> Result<Self, ClientError> {
        let Endpoint::Tcp { authority } = endpoint;
        let stream = TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let codec = FrameCodec::new(max_message_size.saturating_add(RECEIVE_HEADROOM));
        Ok(Self {
            reader: FramedRead::new(read, codec),
            writer: FramedWrite::new(write, RawFrames),
        })
    }

    /// The next message; `None` at a clean end of stream. Cancel-safe.
    ///
    /// A framing error ends the connection (the stream can no longer be trusted); a body that
    /// does not decode is returned as `Ok(Err(..))` so the caller can report and go on.
    pub(crate) async fn recv(
        &mut self,
    ) -> Option<Result<Result<Message, ClientError>, ClientError>> {
        let body = match self.reader.next().await? {
            Ok(body) => body,
            Err(err) => return Some(Err(err.into())),
        };
        Some(Ok(decode_body(body).map_err(ClientError::from)))
    }

    /// Writes frames (each with its length prefix) in one flush, within `limit`.
    pub(crate) async fn send(
        &mut self,
        frames: impl IntoIterator<Item = Bytes>,
        limit: Duration,
    ) -> Result<(), ClientError> {
        let write = async {
            for frame in frames {
                self.writer.feed(frame).await?;
            }
            self.writer.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Half-closes the connection: the relay sees end of stream and unregisters us.
    pub(crate) async fn shutdown(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            let _ = self.writer.flush().await;
            let _ = self.writer.get_mut().shutdown().await;
        })
        .await;
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
        for bad in [
            "relay",
            "relay:",
            "relay:99999",
            ":80",
            "http://x:1",
            "ws://x:1/ws",
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
