//! Command-line, environment and configuration-file settings, with the defaults in one
//! place. Precedence: command line > environment (`SOVA_*`) > file (`--config`) > default.

mod file;
mod print;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use ipnet::IpNet;

use file::{file_error, ConfigFile};

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

/// The id of `--config`, the one option that is not a field of [`Config`].
const CONFIG_ID: &str = "config";

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

/// The relay's command line: [`Config`]'s flags and `--config`.
fn command() -> clap::Command {
    <Config as CommandFactory>::command()
        .arg(
            Arg::new(CONFIG_ID)
                .long("config")
                .env("SOVA_CONFIG")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .display_order(0)
                .help(
                    "TOML file setting any option below (keys are the flags' names with `_`: \
                     max_instances = 50); flags and environment variables win over it",
                ),
        )
        .after_help(
            "Other commands:\n  \
             sova-relay healthcheck [--addr HOST:PORT]  exit 0 when a relay answers /healthz\n  \
             sova-relay config print [FLAGS]            the effective configuration, as TOML\n  \
             sova-relay config check PATH               validate a configuration file",
        )
}

/// Where an option's value came from.
enum Origin {
    CommandLine,
    Environment(String),
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::Environment(name) => write!(f, "environment ({name})"),
            Origin::File => f.write_str("file"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A configuration and where each of its values came from.
struct Resolved {
    config: Config,
    origins: HashMap<String, Origin>,
    file: Option<PathBuf>,
}

impl Resolved {
    /// Command line and environment first, leniently, to find the file and what they set;
    /// then the file's settings for every other option, spelled as flags ahead of the
    /// command line, and everything parsed again, strictly.
    fn from_args<I, T>(cmd: &clap::Command, args: I) -> Result<Resolved, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if args.is_empty() {
            args.push("sova-relay".into());
        }
        let first = cmd
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&args)?;
        let Some(path) = first.get_one::<PathBuf>(CONFIG_ID).cloned() else {
            return Self::finish(
                cmd,
                &cmd.clone().try_get_matches_from(&args)?,
                None,
                &HashSet::new(),
            );
        };
        let file = ConfigFile::read(&path, cmd)?;
        let mut argv = vec![args[0].clone()];
        let mut from_file = HashSet::new();
        for setting in &file.settings {
            let set_above = matches!(
                first.value_source(&setting.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if set_above {
                continue;
            }
            from_file.insert(setting.id.clone());
            // A value equal to the default is left to the default: `tls_required = false`
            // must not count as "given" and then demand a certificate.
            if !is_default(cmd, setting) {
                argv.extend(setting.as_args());
            }
        }
        argv.extend(args.into_iter().skip(1));
        let matches = cmd.clone().try_get_matches_from(argv).map_err(|err| {
            use clap::error::ErrorKind::{ArgumentConflict, MissingRequiredArgument};
            match err.kind() {
                // Options that go together may come from different places: say so.
                MissingRequiredArgument | ArgumentConflict => file_error(format!(
                    "{} (counting the command line, the environment and {})",
                    one_line(&err),
                    file.path.display()
                )),
                _ => err,
            }
        })?;
        Self::finish(cmd, &matches, Some(file.path), &from_file)
    }

    fn finish(
        cmd: &clap::Command,
        matches: &ArgMatches,
        file: Option<PathBuf>,
        from_file: &HashSet<String>,
    ) -> Result<Resolved, clap::Error> {
        let config = Config::from_arg_matches(matches)?;
        let origins = file::keys(cmd)
            .map(|arg| {
                let id = arg.get_id().as_str();
                let origin = match matches.value_source(id) {
                    _ if from_file.contains(id) => Origin::File,
                    Some(ValueSource::CommandLine) => Origin::CommandLine,
                    Some(ValueSource::EnvVariable) => Origin::Environment(
                        arg.get_env()
                            .map(|name| name.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => Origin::Default,
                };
                (id.to_owned(), origin)
            })
            .collect();
        Ok(Resolved {
            config,
            origins,
            file,
        })
    }
}

fn is_default(cmd: &clap::Command, setting: &file::Setting) -> bool {
    cmd.get_arguments()
        .find(|arg| arg.get_id() == setting.id.as_str())
        .is_some_and(|arg| {
            let defaults = arg.get_default_values();
            defaults.len() == setting.values.len()
                && defaults
                    .iter()
                    .zip(&setting.values)
                    .all(|(default, value)| default == value.as_str())
        })
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
mod tests {
    use super::print::duration_value;
    use super::*;
    use toml::Value;

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

    fn file(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("relay.toml"), text, &command()).map_err(|err| one_line(&err))
    }

    #[test]
    fn every_option_is_a_file_key_and_is_printed() {
        let printed: Vec<&str> = Config::default()
            .values()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let cmd = command();
        let keys: Vec<&str> = file::keys(&cmd).map(|arg| arg.get_id().as_str()).collect();
        assert_eq!(
            printed, keys,
            "Config::values() must list every option, in order"
        );
        assert!(!keys.contains(&CONFIG_ID));
    }

    #[test]
    fn a_printed_configuration_reads_back_the_same() {
        let mut config = Config::try_parse_from([
            "sova-relay",
            "--host",
            "::1",
            "--max-instances",
            "7",
            "--handshake-timeout",
            "1500ms",
            "--lockout",
            "2h",
            "--tcp-user-timeout",
            "90",
            "--http",
            "false",
            "--allow",
            "10.0.0.0/8,2001:db8::/32",
            "--audit-log",
            "-",
        ])
        .unwrap();
        config.tokens_file = Some(PathBuf::from("/etc/sova/tokens"));
        let text = config.to_toml();
        let settings = file(&text).unwrap().settings;
        let cmd = command();
        let mut args = vec![OsString::from("sova-relay")];
        let given = settings.iter().filter(|setting| !is_default(&cmd, setting));
        args.extend(given.flat_map(|setting| setting.as_args()));
        let read_back = Config::try_parse_from(args).unwrap();
        assert_eq!(read_back.to_toml(), text);
        assert!(text.contains("handshake_timeout = \"1500ms\""), "{text}");
        assert!(text.contains("lockout = \"2h\""), "{text}");
        assert!(
            text.contains("allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]"),
            "{text}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let config = Config::try_parse_from(["sova-relay", "--admin-token", "hunter2"]).unwrap();
        let text = config.to_toml();
        assert!(text.contains("admin_token = \"<redacted>\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn file_values_are_checked_by_the_flags_parsers() {
        let ok = file("max_instances = 50\nallow = \"10.0.0.0/8, ::1/128\"\nhttp = false\n");
        let settings = ok.unwrap().settings;
        assert_eq!(settings[0].values, ["10.0.0.0/8", "::1/128"]);
        let cases = [
            (
                "max_instance = 5",
                "unknown key `max_instance` (did you mean `max_instances`?)",
            ),
            (
                "max-instances = 5",
                "unknown key `max-instances` (did you mean `max_instances`?)",
            ),
            ("config = \"other.toml\"", "unknown key `config`"),
            ("help = true", "unknown key `help`"),
            (
                "max_instances = \"many\"",
                "`max_instances = \"many\"`: invalid digit",
            ),
            ("rate_limit = 0", "`rate_limit = 0`: 0 is not in 1.."),
            (
                "lockout = \"soon\"",
                "`lockout = \"soon\"`: 'soon' is not a duration",
            ),
            (
                "host = \"localhost\"",
                "`host = \"localhost\"`: invalid IP address syntax",
            ),
            (
                "port = [1, 2]",
                "`port = [1, 2]`: takes one value, not a list",
            ),
            (
                "deny = [[1]]",
                "`deny = [[1]]`: expected a string, a number or a boolean",
            ),
            (
                "http = \"maybe\"",
                "`http = \"maybe\"`: value was not a boolean",
            ),
            (
                "port = 1\nport = 2",
                "relay.toml:2:1: invalid TOML: duplicate key",
            ),
        ];
        for (text, expected) in cases {
            let err = file(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("relay.toml"), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_print_as_they_parse() {
        for (duration, text) in [
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(duration_value(duration), Value::String(text.into()));
            assert_eq!(parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn message_size_keeps_the_first_byte_zero() {
        assert!(parse_message_size("16777216").is_err());
        assert!(parse_message_size("0").is_err());
        assert_eq!(parse_message_size("1024"), Ok(1024));
    }
}
