//! Command-line, environment and configuration-file settings, with the defaults in one
//! place. Precedence: command line > environment (`SOVA_*`) > file (`--config`) > default.

mod file;
mod print;
mod resolve;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use ipnet::IpNet;

use file::file_error;
use resolve::{command, Origin, Resolved, CONFIG_ID};

/// Everything the relay can be told at start-up. Every option also reads a `SOVA_*`
/// environment variable and a key of the `--config` file; a command-line flag wins over
/// the variable, which wins over the file.
#[derive(Clone, Parser)]
#[command(
    name = "sova-relay",
    version,
    about = "Relay server for remote collaboration between Sova instances",
    long_about = "Relay server for remote collaboration between Sova instances.\n\n\
        Sova instances connect over TCP, register with a name and their Sova version, and \
        every state update one of them sends is relayed to the other instances of its \
        session.\n\nEvery option can also be set by its environment variable, or in the TOML \
        file given by --config (keys are the flags' names with `_`: max_instances = 50). \
        The command line wins over the environment, which wins over the file.\n\n\
        Durations take a number of seconds, or a number with a unit: 500ms, 10s, 5m."
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

    /// Join a cluster of relay nodes through these NATS servers (JetStream enabled), e.g.
    /// nats://10.0.0.5:4222,nats://10.0.0.6:4222: instances of one session on different
    /// nodes play together, names and --max-instances hold cluster-wide, and a client of a
    /// node that died resumes on another. Unset: this relay stands alone (see
    /// docs/SCALING.md).
    #[arg(
        long,
        env = "SOVA_CLUSTER_NATS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub cluster_nats: Vec<String>,

    /// This node's name in the cluster (letters, digits, `-`, `_`); default: the host name.
    /// Give each node its own.
    #[arg(long, env = "SOVA_NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// How long a cluster node may be silent before it is declared dead: its instances'
    /// names are freed and the others are told they left.
    #[arg(long, env = "SOVA_CLUSTER_EXPIRY", default_value = "10s", value_parser = parse_duration)]
    pub cluster_expiry: Duration,

    /// NATS credentials file (.creds) for --cluster-nats.
    #[arg(long, env = "SOVA_CLUSTER_NATS_CREDS", value_name = "PATH")]
    pub cluster_nats_creds: Option<PathBuf>,

    /// Extra root certificate (PEM) to trust for tls:// NATS servers.
    #[arg(long, env = "SOVA_CLUSTER_NATS_CA", value_name = "PATH")]
    pub cluster_nats_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that require mutual TLS.
    #[arg(
        long,
        env = "SOVA_CLUSTER_NATS_CERT",
        value_name = "PATH",
        requires = "cluster_nats_key"
    )]
    pub cluster_nats_cert: Option<PathBuf>,

    /// Private key (PEM) of --cluster-nats-cert.
    #[arg(
        long,
        env = "SOVA_CLUSTER_NATS_KEY",
        value_name = "PATH",
        requires = "cluster_nats_cert"
    )]
    pub cluster_nats_key: Option<PathBuf>,

    /// Bytes of broadcasts the cluster's shared history stream keeps, all sessions
    /// together (broadcasts older than --history-max-age go too).
    #[arg(long, env = "SOVA_CLUSTER_HISTORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cluster_history_max_bytes: u64,

    /// Where NATS keeps the cluster's streams: `file` (survives a NATS restart) or `memory`.
    #[arg(long, env = "SOVA_CLUSTER_STORAGE", default_value = "file",
          value_parser = ["file", "memory"])]
    pub cluster_storage: String,

    /// Replicas of the streams and buckets the relay creates in NATS (3 on a 3-server
    /// JetStream cluster survives the loss of one server). Existing ones keep theirs.
    #[arg(long, env = "SOVA_CLUSTER_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,

    /// Update streams the sessions are spread over, by a hash of the session. One stream
    /// is ordered by one NATS server: more streams share that work among the servers of a
    /// JetStream cluster. Every node must use the same number (a node with another one
    /// stops with an error); --cluster-history-max-bytes is divided among the streams.
    #[arg(long, env = "SOVA_CLUSTER_STREAMS", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub cluster_streams: u8,
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

/// What `config print` shows instead of a secret's value.
const REDACTED: &str = "<redacted>";

impl Config {
    /// The relay's configuration from this process's command line, environment and
    /// `--config` file (command line > environment > file > default).
    ///
    /// The error is a usage error: `err.exit()` prints it and exits with code 2 (0 for
    /// `--help` and `--version`).
    pub fn load() -> Result<Config, clap::Error> {
        Self::load_from(std::env::args_os())
    }

    /// [`Config::load`] from the given arguments (the first is the program's name) and
    /// this process's environment.
    pub fn load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Ok(Resolved::from_args(&command(), args)?.config)
    }

    /// What `sova-relay config print` shows: the configuration these arguments and this
    /// environment give, as TOML that can serve as a `--config` file, each value with where
    /// it came from; secrets are shown as `"<redacted>"`.
    pub fn describe_from<I, T>(args: I) -> Result<String, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let resolved = Resolved::from_args(&command(), args)?;
        let mut text = format!(
            "# sova-relay {}: effective configuration (command line > environment > file > default)\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(path) = &resolved.file {
            let _ = writeln!(text, "# file: {}", path.display());
        }
        text.push_str(&resolved.config.render(Some(&resolved.origins)));
        Ok(text)
    }

    /// What `sova-relay config check` does: reads `path` on its own (no command line, no
    /// environment), checks every key and value and the options that go together, and
    /// loads the TLS certificate and key and the tokens file it names.
    pub fn check_file(path: &Path) -> Result<Config, clap::Error> {
        let cmd = command().mut_args(|arg| arg.env(None::<&str>));
        let args = [OsString::from("sova-relay"), "--config".into(), path.into()];
        let config = Resolved::from_args(&cmd, args)?.config;
        config
            .load_files()
            .map_err(|err| file_error(format!("{}: {err:#}", path.display())))?;
        Ok(config)
    }

    /// This configuration as a `--config` file, secrets shown as `"<redacted>"`.
    pub fn to_toml(&self) -> String {
        self.render(None)
    }

    /// In a cluster, each update stream must hold at least one update of the largest size
    /// (NATS would refuse it); a zero would even mean "unbounded" to NATS.
    fn check_cluster_history(&self) -> Result<(), String> {
        if self.cluster_nats.is_empty() {
            return Ok(());
        }
        let per_stream = self.cluster_history_max_bytes / u64::from(self.cluster_streams);
        if per_stream < self.max_message_size as u64 {
            return Err(format!(
                "--cluster-history-max-bytes {} over --cluster-streams {} leaves {per_stream} bytes \
                 per update stream, less than one update of --max-message-size {}",
                self.cluster_history_max_bytes, self.cluster_streams, self.max_message_size
            ));
        }
        Ok(())
    }

    /// Loads the files the relay reads at start-up, as it would.
    fn load_files(&self) -> anyhow::Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            crate::tls::Tls::load(cert, key)?;
        }
        if let Some(tokens) = &self.tokens_file {
            crate::tokens::Tokens::load(tokens)?;
        }
        let cluster_files = [
            ("cluster_nats_creds", &self.cluster_nats_creds),
            ("cluster_nats_ca", &self.cluster_nats_ca),
            ("cluster_nats_cert", &self.cluster_nats_cert),
            ("cluster_nats_key", &self.cluster_nats_key),
        ];
        for (key, path) in cluster_files {
            if let Some(path) = path {
                std::fs::metadata(path)
                    .with_context(|| format!("{key}: cannot read {}", path.display()))?;
            }
        }
        for url in &self.cluster_nats {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("cluster_nats: '{url}' is not a NATS URL"))?;
        }
        Ok(())
    }
}

/// A clap error on one line, without the usage and `--help` tips.
pub(crate) fn one_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect();
    let joined = lines.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// A cluster node's name: it appears in NATS keys, logs and the status page.
fn parse_node_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match valid {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "'{text}' is not a node name: 1 to 64 letters, digits, '-' or '_'"
        )),
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
mod tests;
