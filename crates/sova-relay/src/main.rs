//! `sova-relay`: the relay server binary.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sova_relay::{Config, Control, Server};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
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
        .init();
    Ok(())
}
