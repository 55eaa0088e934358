//! `sova-relay`: the relay server binary, and its `healthcheck` and `config` commands.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use sova_relay::{parse_duration, Config, Control, Server};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Flags alone run the relay, as they always did; a first word picks another command.
    match args.get(1).and_then(|arg| arg.to_str()) {
        Some("healthcheck") => healthcheck(&args[1..]),
        Some("config") => config_command(&args[1..]),
        _ => serve(args),
    }
}

fn serve(args: Vec<OsString>) -> ExitCode {
    let config = Config::load_from(args).unwrap_or_else(|err| err.exit());
    if let Err(err) = init_logging(&config.log_level) {
        eprintln!("sova-relay: {err:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sova-relay: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("sova-relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    info!("Starting Sova Relay Server v{}", env!("CARGO_PKG_VERSION"));
    // Handlers go in before anything is announced, so a signal sent as soon as the relay
    // says it listens is never met by the default action (death without goodbyes).
    let signals = Signals::install().context("cannot listen for SIGINT/SIGTERM")?;
    let addr = SocketAddr::new(config.host, config.port);
    let server = Server::bind(addr, config).await?;
    reload_on_hangup(server.control())?;
    info!("Listening on {}", server.local_addr()?);
    server.run(signals.shutdown()).await
}

/// SIGHUP re-reads the TLS certificate and the tokens file and reopens the audit log.
#[cfg(unix)]
fn reload_on_hangup(control: Control) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match control.reload() {
                Ok(()) => info!("Reloaded on SIGHUP"),
                Err(err) => error!("Reload on SIGHUP failed, keeping the previous state: {err:#}"),
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_hangup(_control: Control) -> anyhow::Result<()> {
    Ok(())
}

/// SIGINT and SIGTERM (Ctrl+C, and what Docker and systemd send).
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    /// Resolves on the first signal; a second one exits at once.
    async fn shutdown(mut self) {
        let name = self.next().await;
        info!("Received {name}; shutting down (send it again to exit at once)");
        tokio::spawn(async move {
            let name = self.next().await;
            warn!("Received {name} again; exiting now");
            std::process::exit(130);
        });
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn shutdown(self) {
        let _ = tokio::signal::ctrl_c().await;
        info!("Received Ctrl+C; shutting down");
    }
}

/// Logs to stderr; `RUST_LOG`, when set, wins over `--log-level`. No colours unless
/// stderr is a terminal, so piped and journald logs stay clean.
fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => {
            EnvFilter::try_new(&filter).with_context(|| format!("invalid RUST_LOG '{filter}'"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid --log-level '{level}'"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Otherwise a failed write is reported with `eprintln!`, which panics when stderr
        // is gone (a closed pipe): the task that logged would die mid-connection.
        .log_internal_errors(false)
        .init();
    Ok(())
}

/// `sova-relay config print|check`.
#[derive(Parser)]
#[command(
    name = "sova-relay config",
    bin_name = "sova-relay config",
    about = "Show or validate the relay's configuration"
)]
enum ConfigCommand {
    /// Print the effective configuration as TOML (command line > environment > file >
    /// default), each value with where it came from; secrets are shown as "<redacted>".
    /// Takes the relay's own flags, e.g. `config print --config relay.toml --port 9000`.
    Print {
        /// Flags as for `sova-relay` itself.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "FLAGS"
        )]
        flags: Vec<OsString>,
    },
    /// Validate a configuration file on its own (the environment is ignored): keys,
    /// values, options that go together, and the TLS and tokens files it names. Exits 0
    /// when the relay would start with it, 1 with the reason otherwise.
    Check {
        /// The TOML file.
        path: PathBuf,
    },
}

fn config_command(args: &[OsString]) -> ExitCode {
    match ConfigCommand::parse_from(args) {
        ConfigCommand::Print { flags } => {
            // The relay's own parser, named for its usage line.
            let args = std::iter::once(OsString::from("sova-relay config print")).chain(flags);
            let text = Config::describe_from(args).unwrap_or_else(|err| err.exit());
            print!("{text}");
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { path } => match Config::check_file(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("sova-relay config check: {}", one_line(&err));
                ExitCode::FAILURE
            }
        },
    }
}

/// A clap error on one line, without the usage and `--help` tips.
fn one_line(err: &clap::Error) -> String {
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

/// `sova-relay healthcheck`: for Docker's HEALTHCHECK and other probes, with nothing but
/// the relay's own binary (no curl in the image).
#[derive(Parser)]
#[command(
    name = "sova-relay healthcheck",
    bin_name = "sova-relay healthcheck",
    about = "Exit 0 when a relay answers its health check, 1 with the reason otherwise",
    long_about = "Exit 0 when a relay answers its health check, 1 with a one-line reason \
        otherwise.\n\nThe check is `GET /healthz` over plain HTTP on the relay's port (200: \
        healthy; 503: shutting down). A relay running with `--http false` has no HTTP: then \
        only a TCP connection is made and closed (--tcp).\n\nWithout --addr, the relay this \
        environment describes is checked: SOVA_PORT, SOVA_HTTP, SOVA_HOST and the SOVA_CONFIG \
        file, as the relay itself would read them (a wildcard host means loopback)."
)]
struct HealthcheckArgs {
    /// Relay to check [default: the relay of this environment, else 127.0.0.1:9090].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,

    /// Give up after this long, all steps together.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,

    /// Only check that the port accepts a TCP connection (for `--http false`).
    #[arg(long)]
    tcp: bool,
}

fn healthcheck(args: &[OsString]) -> ExitCode {
    let args = HealthcheckArgs::parse_from(args);
    let (addr, tcp_only) = match &args.addr {
        Some(addr) => (addr.clone(), args.tcp),
        None => match local_relay() {
            Ok((addr, http)) => (addr.to_string(), args.tcp || !http),
            Err(err) => {
                eprintln!("sova-relay healthcheck: {err:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let deadline = Instant::now() + args.timeout;
    match probe(&addr, tcp_only, deadline) {
        Ok(report) => {
            println!("{addr}: {report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sova-relay healthcheck: {addr}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The address and HTTP switch of the relay that this environment (and its SOVA_CONFIG
/// file) describes.
fn local_relay() -> anyhow::Result<(SocketAddr, bool)> {
    let config = Config::load_from(["sova-relay"])
        .map_err(|err| anyhow!("the relay's configuration: {}", one_line(&err)))?;
    let host = match config.host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok((SocketAddr::new(host, config.port), config.http))
}

/// Connects, then asks `GET /healthz` unless `tcp_only`; everything before `deadline`.
fn probe(addr: &str, tcp_only: bool, deadline: Instant) -> anyhow::Result<String> {
    let mut stream = connect(addr, deadline)?;
    if tcp_only {
        // Closed without a byte sent: the relay counts that as a probe, not a bad client.
        return Ok("accepts TCP connections".to_owned());
    }
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sova-relay-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    stream.set_write_timeout(Some(left(deadline)?))?;
    stream
        .write_all(request.as_bytes())
        .context("cannot send the request")?;
    let head = read_head(&mut stream, deadline)?;
    match head.first() {
        None => bail!("the connection closed without an answer"),
        Some(0x00) => bail!(
            "the port answers in the relay's TCP protocol, not HTTP (--http false?); \
             check with --tcp"
        ),
        Some(_) => {}
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default().trim();
    let mut words = status_line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/") => {
            Ok(format!("healthy ({status_line})"))
        }
        (Some(version), Some(_)) if version.starts_with("HTTP/") => {
            bail!("unhealthy: GET /healthz answered {status_line}")
        }
        _ => bail!("not an HTTP answer: {status_line:?}"),
    }
}

fn connect(addr: &str, deadline: Instant) -> anyhow::Result<TcpStream> {
    let candidates: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr} (expected HOST:PORT)"))?
        .collect();
    let mut last = anyhow!("{addr} resolves to no address");
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, left(deadline)?) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = anyhow!("cannot connect to {candidate}: {err}"),
        }
    }
    Err(last)
}

/// The answer up to the end of its status line (at most 1 KiB).
fn read_head(stream: &mut TcpStream, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < buf.len() && !head.contains(&b'\n') {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) => bail!("no answer in time"),
            Err(err) => return Err(err).context("cannot read the answer"),
        }
    }
    Ok(head)
}

/// Time left before `deadline`, or an error once it has passed.
fn left(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("no answer in time");
    }
    Ok(left)
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
