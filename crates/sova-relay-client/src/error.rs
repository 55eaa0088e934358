use std::time::Duration;

use sova_relay_protocol::ProtocolError;
use thiserror::Error;

/// Everything that can go wrong between a client and the relay.
///
/// Registration rejections keep the relay's own text, so `to_string()` is what the relay said.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The relay runs another Sova version; retrying cannot help.
    #[error("{0}")]
    VersionMismatch(String),
    /// The relay (or its session) is at its instance limit.
    #[error("{0}")]
    Full(String),
    /// Another registration holds this name in the session.
    #[error("{0}")]
    NameTaken(String),
    /// The relay refused the session token; retrying cannot help.
    #[error("{0}")]
    InvalidToken(String),
    /// The relay refused the registration for another reason.
    #[error("registration rejected: {0}")]
    Rejected(String),
    /// The instance name is not acceptable (checked before connecting).
    #[error("{0}")]
    InvalidName(String),
    /// The address is not `HOST:PORT`, `tcp://HOST:PORT`, `tls://HOST:PORT`,
    /// `ws://HOST[:PORT]/PATH` or `wss://HOST[:PORT]/PATH`.
    #[error("invalid relay address '{address}': {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting, registering or waiting for an answer took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The relay sent bytes that are not a valid frame or message.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The WebSocket layer failed: the upgrade was refused (e.g. a wrong path), or the
    /// relay broke the WebSocket protocol.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// TLS failed: the relay's certificate is not trusted (unknown CA, wrong name, expired),
    /// the relay does not speak TLS, or the CA file could not be read. Not retried on the
    /// first connection; see [`ClientError::is_retryable`].
    #[error("{0}")]
    Tls(String),
    /// The relay answered with a message that makes no sense at this point.
    #[error("unexpected message from relay: {0}")]
    Unexpected(String),
    /// The outgoing queue holds `capacity` updates already; the caller should slow down.
    #[error("outgoing queue full ({capacity} updates waiting)")]
    QueueFull {
        /// The configured queue bound.
        capacity: usize,
    },
    /// The update would exceed the relay's message size limit.
    #[error("update too large: {len} bytes encoded (max: {max})")]
    TooLarge {
        /// Encoded size of the `StateUpdate` body.
        len: usize,
        /// The configured maximum message size.
        max: usize,
    },
    /// The relay did not grant a capability this call needs (the client did not ask for
    /// it, or the relay predates it).
    #[error("the relay did not grant the `{0}` capability")]
    NotGranted(&'static str),
    /// The client is currently disconnected (reconnecting); try again later.
    #[error("not connected to the relay")]
    NotConnected,
    /// The client has stopped for good (closed, or gave up reconnecting).
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// Maps the text of a relay `Error` (or failed `RegistrationResponse`) to a variant, by
    /// the prefixes PROTOCOL.md fixes.
    pub fn from_relay_message(message: impl Into<String>) -> Self {
        let message = message.into();
        if message.starts_with("Version mismatch") {
            Self::VersionMismatch(message)
        } else if message.starts_with("Maximum instances") {
            Self::Full(message)
        } else if message.starts_with("Instance name") && message.ends_with("already in use") {
            Self::NameTaken(message)
        } else if message.starts_with("Invalid session token") {
            Self::InvalidToken(message)
        } else if message.starts_with("Invalid instance name") {
            Self::InvalidName(message)
        } else {
            Self::Rejected(message)
        }
    }

    /// Whether trying again later may succeed: false for errors only a configuration
    /// change can fix (version, token, name validity, address, TLS trust).
    ///
    /// A reconnecting client still retries [`ClientError::Tls`]: it did trust the relay
    /// before, so the relay's certificate changed, and a fix on the relay's side (a renewed
    /// certificate) lets it back in without a restart.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::VersionMismatch(_)
                | Self::InvalidToken(_)
                | Self::InvalidName(_)
                | Self::InvalidAddress { .. }
                | Self::Tls(_)
                | Self::Closed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_texts_map_to_variants_and_keep_the_text() {
        let cases = [
            "Version mismatch: expected 0.1.0, got 0.2.0",
            "Maximum instances (100) reached",
            "Instance name 'bob' already in use",
            "Invalid session token",
            "Invalid instance name: must not be empty",
            "Expected RegisterInstance message",
        ];
        let errors: Vec<_> = cases
            .iter()
            .map(|m| ClientError::from_relay_message(*m))
            .collect();
        assert!(matches!(errors[0], ClientError::VersionMismatch(_)));
        assert!(matches!(errors[1], ClientError::Full(_)));
        assert!(matches!(errors[2], ClientError::NameTaken(_)));
        assert!(matches!(errors[3], ClientError::InvalidToken(_)));
        assert!(matches!(errors[4], ClientError::InvalidName(_)));
        assert!(matches!(errors[5], ClientError::Rejected(_)));
        assert_eq!(errors[0].to_string(), cases[0]);
        assert_eq!(errors[2].to_string(), cases[2]);
    }

    #[test]
    fn only_configuration_errors_are_final() {
        assert!(
            !ClientError::from_relay_message("Version mismatch: expected a, got b").is_retryable()
        );
        assert!(!ClientError::from_relay_message("Invalid session token").is_retryable());
        assert!(ClientError::from_relay_message("Instance name 'x' already in use").is_retryable());
        assert!(ClientError::from_relay_message("Maximum instances (1) reached").is_retryable());
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!ClientError::Tls("invalid peer certificate: UnknownIssuer".into()).is_retryable());
    }
}
