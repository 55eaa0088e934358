use std::path::PathBuf;
use std::time::Duration;

use sova_relay_protocol::DEFAULT_MAX_MESSAGE_SIZE;

/// The Sova version instances in the field speak; the relay requires an exact match.
pub const DEFAULT_SOVA_VERSION: &str = "0.1.0";

/// Who the client is and how it behaves. Build with [`ClientConfig::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Instance name, unique within the session.
    pub name: String,
    /// Session to join; `None` is the relay's default session.
    pub session_token: Option<String>,
    /// Sova version sent at registration; must equal the relay's exactly.
    pub sova_version: String,
    /// Limit for connecting (TCP, the TLS handshake for `tls://` and `wss://`, the WebSocket
    /// upgrade for `ws://` and `wss://`) plus registration, per attempt.
    pub connect_timeout: Duration,
    /// Limit for a `ping()` answer and for one socket write.
    pub request_timeout: Duration,
    /// How often the client pings the relay to notice a dead connection; `None` disables it.
    pub heartbeat_interval: Option<Duration>,
    /// Updates that may wait to be written (also while reconnecting) before `send_update` fails.
    pub queue_capacity: usize,
    /// Events buffered for the application; when full, the client stops reading the socket.
    pub event_capacity: usize,
    /// Largest message body the client sends (and, plus headroom, accepts).
    pub max_message_size: usize,
    /// How `update_data` is encoded on the wire.
    pub update_form: UpdateForm,
    /// Automatic reconnection after a lost connection.
    pub reconnect: ReconnectConfig,
    /// Resume after a lost connection without missing a broadcast (capability `resume`,
    /// on by default): see the [crate] docs. Off, a reconnection starts afresh, and what
    /// was broadcast meanwhile is lost to this client.
    pub resume: bool,
    /// Receive the session's snapshot when joining (and after [`crate::Event::ResyncRequired`]),
    /// and allow publishing one with [`crate::RelaySender::send_snapshot`] (capability
    /// `snapshot`, off by default).
    pub snapshots: bool,
    /// A PEM file of CA certificates to trust for `tls://` and `wss://`, besides the
    /// built-in roots (Mozilla's, from webpki-roots), e.g. a relay's private CA. Read once,
    /// by [`crate::RelayClient::connect`].
    pub ca_file: Option<PathBuf>,
}

impl ClientConfig {
    /// A configuration with defaults for everything but the name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            session_token: None,
            sova_version: DEFAULT_SOVA_VERSION.to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(15)),
            queue_capacity: 1024,
            event_capacity: 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            update_form: UpdateForm::Array,
            reconnect: ReconnectConfig::default(),
            ca_file: None,
            resume: true,
            snapshots: false,
        }
    }

    /// Sets the session token.
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Sets the Sova version.
    pub fn sova_version(mut self, version: impl Into<String>) -> Self {
        self.sova_version = version.into();
        self
    }

    /// Trusts the CA certificates of a PEM file for `tls://` and `wss://` (see `ca_file`).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Turns snapshots on or off (see `snapshots`).
    pub fn snapshots(mut self, on: bool) -> Self {
        self.snapshots = on;
        self
    }

    /// Turns resuming on or off (see `resume`).
    pub fn resume(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }

    /// Sets the reconnection policy.
    pub fn reconnect(mut self, reconnect: ReconnectConfig) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// Wire form of `update_data`; receivers accept both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateForm {
    /// Array of uints, what Sova instances in the field send (default).
    #[default]
    Array,
    /// MessagePack bin: about half the size for arbitrary bytes.
    Bin,
}

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectConfig {
    /// Whether to reconnect at all after a lost connection.
    pub enabled: bool,
    /// Delay before the first attempt.
    pub initial_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
    /// Factor applied to the delay after each failed attempt.
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0 = none, 1 = anywhere in `0..=delay`).
    pub jitter: f64,
    /// Attempts before giving up; `None` retries until a non-retryable error.
    pub max_attempts: Option<u32>,
}

impl ReconnectConfig {
    /// No reconnection: the event stream ends after `Disconnected`.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}
