//! `sova-relay-cli`: watch a relay session, send updates to it, measure round trips.
//!
//! Data goes to stdout, progress and status to stderr, so the output can be piped.

mod decode;
mod output;
mod ping;
mod send;
mod watch;

use std::io::IsTerminal;
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
    /// Register and print one line per event (updates, joins, leaves); reconnects forever.
    Watch(watch::WatchArgs),
    /// Register, send updates, wait until they are written, and exit.
    Send(send::SendArgs),
    /// Register under a throwaway name and measure round-trip times to the relay.
    Ping(ping::PingArgs),
}

/// Where the relay is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Relay address: HOST:PORT (TCP) or ws://HOST:PORT/ws (WebSocket).
    #[arg(long, env = "SOVA_RELAY_ADDR", hide_env_values = true)]
    pub addr: String,
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

/// A client configuration for `name` in the session of `token`.
pub fn client_config(name: &str, token: Option<&str>, sova_version: &str) -> ClientConfig {
    let mut config = ClientConfig::new(name).sova_version(sova_version);
    config.session_token = token.map(str::to_owned);
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
