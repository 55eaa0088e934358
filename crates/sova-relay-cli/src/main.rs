//! `sova-relay-cli`: watch a relay session, send updates to it, measure round trips.
//!
//! Data goes to stdout, progress and status to stderr, so the output can be piped.

mod decode;
mod output;
mod ping;
mod send;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sova_relay_client::{ClientConfig, DEFAULT_SOVA_VERSION};
use tracing_subscriber::EnvFilter;

/// Operator and debugging CLI for the Sova relay.
#[derive(Debug, Parser)]
#[command(name = "sova-relay-cli", version, about)]
struct Cli {
    /// Sova version to register with; the relay requires an exact match.
    #[arg(long, global = true, default_value = DEFAULT_SOVA_VERSION)]
    sova_version: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register and print one line per event (updates, joins, leaves); reconnects forever,
    /// resuming where it stopped.
    Watch(watch::WatchArgs),
    /// Register, send updates, wait until they are written, and exit.
    Send(send::SendArgs),
    /// Register under a throwaway name and measure round-trip times to the relay.
    Ping(ping::PingArgs),
}

/// Where the relay is, and how to trust it.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Relay address: HOST:PORT (TCP), tls://HOST:PORT (TCP inside TLS),
    /// ws://HOST:PORT/ws (WebSocket) or wss://HOST:PORT/ws (WebSocket inside TLS).
    #[arg(long, env = "SOVA_RELAY_ADDR", hide_env_values = true)]
    pub addr: String,
    /// Use TLS: HOST:PORT becomes tls://HOST:PORT, and ws:// becomes wss://.
    #[arg(long, env = "SOVA_RELAY_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls: bool,
    /// PEM file of CA certificates to trust for TLS, besides the built-in (Mozilla) roots;
    /// e.g. the CA of a relay with a private certificate.
    #[arg(long, value_name = "PATH", env = "SOVA_RELAY_CA")]
    pub ca: Option<PathBuf>,
}

impl Target {
    /// The address to connect to, with `--tls` applied.
    pub fn address(&self) -> String {
        if !self.tls {
            return self.addr.clone();
        }
        match self.addr.split_once("://") {
            None => format!("tls://{}", self.addr),
            Some(("tcp", rest)) => format!("tls://{rest}"),
            Some(("ws", rest)) => format!("wss://{rest}"),
            // Already TLS, or a scheme the client library will explain.
            Some(_) => self.addr.clone(),
        }
    }
}

/// Who to register as.
#[derive(Debug, Clone, Args)]
pub struct Identity {
    /// Instance name, unique within the session.
    #[arg(long, env = "SOVA_INSTANCE_NAME", hide_env_values = true)]
    pub name: String,
    /// Session token (selects the session; default session if absent).
    #[arg(long, env = "SOVA_RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A client configuration for `name` in the session of `token`, trusting `target`'s CA.
pub fn client_config(
    target: &Target,
    name: &str,
    token: Option<&str>,
    sova_version: &str,
) -> ClientConfig {
    let mut config = ClientConfig::new(name).sova_version(sova_version);
    config.session_token = token.map(str::to_owned);
    config.ca_file = target.ca.clone();
    config
}

/// Resolves on Ctrl+C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Watch(args) => watch::run(args, &cli.sova_version).await,
        Command::Send(args) => send::run(args, &cli.sova_version).await,
        Command::Ping(args) => ping::run(args, &cli.sova_version).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_flag_turns_addresses_into_their_tls_form() {
        let target = |addr: &str, tls: bool| Target {
            addr: addr.to_owned(),
            tls,
            ca: None,
        };
        for (addr, expected) in [
            ("relay:9090", "tls://relay:9090"),
            ("tcp://relay:9090", "tls://relay:9090"),
            ("ws://relay:9090/ws", "wss://relay:9090/ws"),
            ("tls://relay:9090", "tls://relay:9090"),
            ("wss://relay/ws", "wss://relay/ws"),
        ] {
            assert_eq!(target(addr, true).address(), expected);
        }
        assert_eq!(target("relay:9090", false).address(), "relay:9090");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
