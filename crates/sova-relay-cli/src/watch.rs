//! `watch`: print every event of a session, reconnecting forever.

use anyhow::{bail, Context};
use clap::Args;
use sova_relay_client::{Backoff, ClientConfig, Event, RelayClient};
use tracing::{info, warn};

use crate::output::{format_event, print_line};
use crate::{client_config, shutdown_signal, Identity, Target};

/// Arguments of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    identity: Identity,
    /// One JSON object per line instead of `key=value` text.
    #[arg(long)]
    json: bool,
    /// Ask for the session's snapshot (printed as a `snapshot` line) when joining and after
    /// a `resync_required`.
    #[arg(long)]
    snapshots: bool,
}

/// Runs `watch` until Ctrl+C/SIGTERM (exit 0) or a rejection retrying cannot fix. After a
/// lost connection the client resumes by itself: the missed updates are printed after a
/// `resynced` line, or a `resync_required` line says some were lost.
pub async fn run(args: WatchArgs, sova_version: &str) -> anyhow::Result<()> {
    let config = client_config(
        &args.target,
        &args.identity.name,
        args.identity.token.as_deref(),
        sova_version,
    )
    .snapshots(args.snapshots);
    let addr = args.target.address();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut client = tokio::select! {
        client = connect_retrying(&addr, config) => client?,
        () = &mut shutdown => return Ok(()),
    };
    let peers: Vec<String> = client.peers().into_iter().map(|peer| peer.name).collect();
    info!(%addr, name = %args.identity.name, ?peers, "watching");
    let mut last_error = None;
    loop {
        let event = tokio::select! {
            event = client.next_event() => event,
            () = &mut shutdown => break,
        };
        let Some(event) = event else {
            bail!(last_error.unwrap_or_else(|| "connection ended".to_owned()));
        };
        if let Event::Error(message) = &event {
            last_error = Some(message.clone());
        }
        if !print_line(&format_event(&event, args.json)).context("writing to stdout")? {
            break;
        }
    }
    client.close().await;
    Ok(())
}

/// The first connection, retried with backoff while the relay is unreachable, full, or
/// still holds our name; not retried when only a configuration change can help.
async fn connect_retrying(addr: &str, config: ClientConfig) -> anyhow::Result<RelayClient> {
    let mut backoff = Backoff::new(config.reconnect.clone());
    loop {
        match RelayClient::connect(addr, config.clone()).await {
            Ok(client) => return Ok(client),
            Err(err) if err.is_retryable() => {
                let delay = backoff.next_delay().context("giving up connecting")?;
                warn!(%err, retry_in = ?delay, "cannot register yet");
                tokio::time::sleep(delay).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}
