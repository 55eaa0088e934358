//! Why a connection ended: one enum that labels logs and metrics alike.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message};

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    /// The peer closed its side.
    ClientClosed,
    /// Reading from the socket failed (reset, keepalive or user timeout expired, …).
    ReadFailed(io::ErrorKind),
    /// Writing to the socket failed.
    WriteFailed(io::ErrorKind),
    /// One write took longer than the write timeout: the peer is not reading.
    WriteTimeout(Duration),
    /// More than this many bytes were waiting for the peer.
    SlowConsumer { max_pending: usize },
    /// A `pong`-capable peer stopped answering pings.
    PongTimeout { missed: u32 },
    /// A message over the size limit; the stream cannot be resynchronised after it.
    TooLarge(String),
    /// A framing error after which the stream cannot be trusted.
    Protocol(String),
    /// Registration refused; the text is the protocol's.
    Rejected(String),
    /// An operator removed the instance.
    Kicked,
    /// Its session token was removed from the tokens file.
    TokenRevoked,
    /// A resumed connection of the same instance took its place.
    Superseded,
    /// The relay is shutting down.
    Shutdown,
}

impl DisconnectReason {
    /// Short, fixed label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ReadFailed(_) => "read_failed",
            Self::WriteFailed(_) => "write_failed",
            Self::WriteTimeout(_) => "write_timeout",
            Self::SlowConsumer { .. } => "slow_consumer",
            Self::PongTimeout { .. } => "pong_timeout",
            Self::TooLarge(_) => "too_large",
            Self::Protocol(_) => "protocol_error",
            Self::Rejected(_) => "rejected",
            Self::Kicked => "kicked",
            Self::TokenRevoked => "token_revoked",
            Self::Superseded => "superseded",
            Self::Shutdown => "shutdown",
        }
    }

    /// Whether the peer was dropped for not keeping up.
    pub(crate) fn is_slow_consumer(&self) -> bool {
        matches!(self, Self::WriteTimeout(_) | Self::SlowConsumer { .. })
    }

    /// The `Error` frame that tells the instance why it is being closed, if it is told.
    pub(crate) fn farewell(&self) -> Option<Bytes> {
        let text = match self {
            Self::WriteTimeout(_) | Self::SlowConsumer { .. } | Self::PongTimeout { .. } => {
                self.to_string()
            }
            Self::TooLarge(text) | Self::Protocol(text) | Self::Rejected(text) => text.clone(),
            Self::Shutdown => "Relay shutting down".to_owned(),
            Self::Kicked => "Kicked by operator".to_owned(),
            Self::TokenRevoked => "Session token revoked".to_owned(),
            Self::Superseded => "Replaced by a resumed connection".to_owned(),
            _ => return None,
        };
        Some(encode_frame(&Message::error(text)))
    }
}

impl DisconnectReason {
    /// The WebSocket close code that fits (RFC 6455, section 7.4.1).
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            Self::Shutdown => 1001,
            Self::TooLarge(_) => 1009,
            Self::Protocol(_) => 1002,
            Self::Rejected(_)
            | Self::Kicked
            | Self::TokenRevoked
            | Self::Superseded
            | Self::SlowConsumer { .. }
            | Self::WriteTimeout(_)
            | Self::PongTimeout { .. } => 1008,
            Self::ClientClosed | Self::ReadFailed(_) | Self::WriteFailed(_) => 1000,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("closed by the instance"),
            Self::ReadFailed(kind) => write!(f, "read failed: {kind}"),
            Self::WriteFailed(kind) => write!(f, "write failed: {kind}"),
            Self::WriteTimeout(limit) => write!(
                f,
                "Slow consumer: a write took longer than {:.1}s",
                limit.as_secs_f64()
            ),
            Self::SlowConsumer { max_pending } => write!(
                f,
                "Slow consumer: more than {max_pending} bytes waiting to be sent"
            ),
            Self::PongTimeout { missed } => write!(f, "Ping timeout: {missed} pings unanswered"),
            Self::TooLarge(text) | Self::Protocol(text) | Self::Rejected(text) => f.write_str(text),
            Self::Kicked => f.write_str("Kicked by operator"),
            Self::TokenRevoked => f.write_str("Session token revoked"),
            Self::Superseded => f.write_str("Replaced by a resumed connection"),
            Self::Shutdown => f.write_str("relay shutting down"),
        }
    }
}
