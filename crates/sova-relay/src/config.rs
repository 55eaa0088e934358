//! Command-line and environment configuration, with the defaults in one place.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use ipnet::IpNet;

/// Everything the relay can be told at start-up. Every option also reads a `SOVA_*`
/// environment variable; a command-line flag wins over the variable.
#[derive(Clone, Parser)]
#[command(
    name = "sova-relay",
    version,
    about = "Relay server for remote collaboration between Sova instances",
    long_about = "Relay server for remote collaboration between Sova instances.\n\n\
        Sova instances connect over TCP, register with a name and their Sova version, and \
        every state update one of them sends is relayed to the other instances of its \
        session.\n\nDurations take a number of seconds, or a number with a unit: 500ms, 10s, 5m."
)]
pub struct Config {
    /// IP address to bind to.
    #[arg(long, env = "SOVA_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// TCP port to listen on (0 picks a free port).
    #[arg(long, env = "SOVA_PORT", default_value_t = 9090)]
    pub port: u16,

    /// Maximum registered instances, across all sessions.
    #[arg(long, env = "SOVA_MAX_INSTANCES", default_value_t = 20)]
    pub max_instances: usize,

    /// Messages per minute per instance (a burst of this many, then one every 60/N s).
    #[arg(long, env = "SOVA_RATE_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,

    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG wins when set.
    #[arg(long, env = "SOVA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Largest message body accepted, in bytes; larger frames get an Error and a close.
    #[arg(long, env = "SOVA_MAX_MESSAGE_SIZE", default_value_t = sova_relay_protocol::DEFAULT_MAX_MESSAGE_SIZE,
          value_parser = parse_message_size)]
    pub max_message_size: usize,

    /// Bytes queued for one instance before it is disconnected as a slow consumer.
    #[arg(long, env = "SOVA_MAX_PENDING_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_pending_bytes: usize,

    /// Longest a write to one instance may take before it is disconnected as a slow consumer.
    #[arg(long, env = "SOVA_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Time a new connection has to send RegisterInstance.
    #[arg(long, env = "SOVA_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time given to instances to be told and flushed on shutdown, before the relay exits.
    #[arg(long, env = "SOVA_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The Sova version instances must send, exactly.
    #[arg(long, env = "SOVA_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub sova_version: String,

    /// How often instances with the `pong` capability are pinged.
    #[arg(long, env = "SOVA_PING_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Serve the status page, health checks, metrics, JSON API and WebSocket on the same
    /// port (`--http false` turns them off).
    #[arg(long, env = "SOVA_HTTP", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub http: bool,

    /// Bearer token for the admin API (kicking instances); without it admin routes are off.
    #[arg(long, env = "SOVA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Show session tokens on the status page and API instead of short hashes.
    #[arg(long, env = "SOVA_SHOW_SESSION_NAMES", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub show_session_names: bool,

    /// TLS certificate chain (PEM). With --tls-key, TLS is served on the same port
    /// (first byte 0x16); reloaded on SIGHUP.
    #[arg(long, env = "SOVA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SOVA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Refuse instances that connect without TLS (plaintext status page and health checks
    /// stay available).
    #[arg(long, env = "SOVA_TLS_REQUIRED", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(),
          requires = "tls_cert")]
    pub tls_required: bool,

    /// Allowed session tokens, one per line, optionally followed by a role (`performer`,
    /// the default, or `listener`); `#` starts a comment. When set, a registration without a
    /// listed token is refused. Reloaded on SIGHUP.
    #[arg(long, env = "SOVA_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Only accept connections from these networks (repeatable, or comma-separated in the
    /// environment), e.g. 192.0.2.0/24, 2001:db8::/32.
    #[arg(
        long = "allow",
        env = "SOVA_ALLOW",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow: Vec<IpNet>,

    /// Refuse connections from these networks (repeatable; wins over --allow).
    #[arg(
        long = "deny",
        env = "SOVA_DENY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub deny: Vec<IpNet>,

    /// Open connections at most, all clients together (checked at accept).
    #[arg(long, env = "SOVA_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Open connections at most from one IP address (0: no limit).
    #[arg(long, env = "SOVA_MAX_CONNECTIONS_PER_IP", default_value_t = 16)]
    pub max_connections_per_ip: usize,

    /// New connections per minute from one IP address (a burst of this many; 0: no limit).
    #[arg(long, env = "SOVA_CONNECTION_RATE_PER_IP", default_value_t = 120)]
    pub connection_rate_per_ip: u32,

    /// Failed registrations (bad token or version) from one IP before it is locked out
    /// (0: never).
    #[arg(long, env = "SOVA_MAX_FAILED_REGISTRATIONS", default_value_t = 10)]
    pub max_failed_registrations: u32,

    /// How long an IP stays locked out; failures older than this are forgotten.
    #[arg(long, env = "SOVA_LOCKOUT", default_value = "5m", value_parser = parse_duration)]
    pub lockout: Duration,

    /// Append an audit trail (JSON lines) to this file, or `-` for stderr; reopened on
    /// SIGHUP so log rotation works.
    #[arg(long, env = "SOVA_AUDIT_LOG", value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// Broadcasts kept per session for clients that resume (capability `resume`) or join
    /// from a snapshot; sessions of clients without either keep none.
    #[arg(long, env = "SOVA_HISTORY_MAX_UPDATES", default_value_t = 1000)]
    pub history_max_updates: usize,

    /// Bytes of broadcasts kept per session, at most.
    #[arg(long, env = "SOVA_HISTORY_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Age after which a kept broadcast is forgotten.
    #[arg(long, env = "SOVA_HISTORY_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub history_max_age: Duration,

    /// Largest session snapshot accepted (capability `snapshot`), in bytes.
    #[arg(long, env = "SOVA_MAX_SNAPSHOT_BYTES", default_value_t = sova_relay_protocol::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_snapshot_bytes: usize,

    /// Unanswered pings after which a `pong`-capable instance is dropped.
    #[arg(long, env = "SOVA_MAX_MISSED_PONGS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_missed_pongs: u32,

    /// Idle time before the kernel starts TCP keepalive probes on a connection.
    #[arg(long, env = "SOVA_TCP_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub tcp_keepalive: Duration,

    /// Interval between TCP keepalive probes.
    #[arg(long, env = "SOVA_TCP_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tcp_keepalive_interval: Duration,

    /// Unanswered keepalive probes after which the kernel drops the connection.
    #[arg(long, env = "SOVA_TCP_KEEPALIVE_RETRIES", default_value_t = 3)]
    pub tcp_keepalive_retries: u32,

    /// How long sent data may stay unacknowledged before the kernel drops the connection
    /// (TCP_USER_TIMEOUT; Linux only).
    #[arg(long, env = "SOVA_TCP_USER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub tcp_user_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("max_instances", &self.max_instances)
            .field("sova_version", &self.sova_version)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Self {
        let args = ["sova-relay"];
        let matches = <Self as clap::CommandFactory>::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .get_matches_from(args);
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
            .unwrap_or_else(|err| unreachable!("the defaults parse: {err}"))
    }
}

/// Parses `10`, `1.5`, `500ms`, `10s` or `5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 10, 500ms, 10s, 5m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{text}' (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("'{text}': {err}"))
}

fn parse_message_size(text: &str) -> Result<usize, String> {
    let size: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes"))?;
    // The frame header is a u32, and the first byte of a frame must stay 0x00 so that
    // frames can be told apart from HTTP and TLS on the same port.
    const MAX: usize = (1 << 24) - 1;
    if size == 0 || size > MAX {
        return Err(format!("must be between 1 and {MAX} bytes"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::default();
        assert_eq!(config.port, 9090);
        assert_eq!(config.max_instances, 20);
        assert_eq!(config.rate_limit, 1000);
        assert_eq!(config.max_message_size, 1 << 20);
        assert_eq!(config.max_pending_bytes, 8 << 20);
        assert_eq!(config.sova_version, "0.1.0");
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert!(config.http);
        assert!(config.admin_token.is_none());
        assert_eq!(config.max_connections, 4096);
        assert_eq!(config.max_connections_per_ip, 16);
    }

    #[test]
    fn boolean_flags_take_env_style_values() {
        let config =
            Config::try_parse_from(["sova-relay", "--http", "0", "--show-session-names"]).unwrap();
        assert!(!config.http);
        assert!(config.show_session_names);
    }

    #[test]
    fn cidr_lists_parse_from_flags() {
        let config = Config::try_parse_from([
            "sova-relay",
            "--allow",
            "127.0.0.0/8,::1/128",
            "--deny",
            "127.0.0.2/32",
        ])
        .unwrap();
        assert_eq!(config.allow.len(), 2);
        assert_eq!(config.deny.len(), 1);
        assert!(Config::try_parse_from(["sova-relay", "--allow", "localhost"]).is_err());
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Config::try_parse_from(["sova-relay", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["sova-relay", "--tls-required"]).is_err());
    }

    #[test]
    fn message_size_keeps_the_first_byte_zero() {
        assert!(parse_message_size("16777216").is_err());
        assert!(parse_message_size("0").is_err());
        assert_eq!(parse_message_size("1024"), Ok(1024));
    }
}
