//! `send`: register, send updates, make sure they are written, exit.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use sova_relay_client::{Event, Events, ReconnectConfig, RelayClient, RelaySender};
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::info;

use crate::{client_config, Identity, Target};

/// Arguments of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    identity: Identity,
    #[command(flatten)]
    payload: Payload,
}

/// Where the updates come from: exactly one source.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Payload {
    /// Send this string as one update.
    #[arg(long)]
    data: Option<String>,
    /// Send the contents of this file as one update.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Send each line of standard input as one update (without its line ending).
    #[arg(long)]
    stdin_lines: bool,
}

/// Runs `send`; fails with the relay's message if it rejects the registration or an update.
pub async fn run(args: SendArgs, sova_version: &str) -> anyhow::Result<()> {
    let config = client_config(
        &args.target,
        &args.identity.name,
        args.identity.token.as_deref(),
        sova_version,
    )
    // Never reconnects, so it has nothing to resume (and the relay keeps no history for it).
    .reconnect(ReconnectConfig::disabled())
    .resume(false);
    let addr = args.target.address();
    let client = RelayClient::connect(&addr, config)
        .await
        .with_context(|| format!("registering with {addr}"))?;
    let (sender, events) = client.split();
    let problems = tokio::spawn(collect_problems(events));
    let sent = send_all(&sender, &args.payload).await;
    if sent.is_ok() {
        // Make sure every update is on the wire, then let the relay close the connection,
        // so an error it reports about our updates is not lost.
        let _ = sender.flush().await;
        sender.close().await;
    }
    drop(sender);
    let problems = problems.await.unwrap_or_default();
    if let Some(problem) = problems.first() {
        bail!("{problem}");
    }
    let count = sent?;
    info!(count, "updates sent");
    Ok(())
}

async fn send_all(sender: &RelaySender, payload: &Payload) -> anyhow::Result<usize> {
    if let Some(data) = &payload.data {
        sender.send_update_wait(data).await?;
        return Ok(1);
    }
    if let Some(path) = &payload.file {
        let data = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        sender.send_update_wait(data).await?;
        return Ok(1);
    }
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut count = 0;
    while stdin
        .read_until(b'\n', &mut line)
        .await
        .context("reading stdin")?
        > 0
    {
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        sender.send_update_wait(&line).await?;
        line.clear();
        count += 1;
    }
    Ok(count)
}

/// Errors the relay reports and an unexpected end of the connection, until the client stops.
async fn collect_problems(mut events: Events) -> Vec<String> {
    let mut problems = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Error(message) => problems.push(message),
            Event::Disconnected(reason) => problems.push(format!("connection lost: {reason}")),
            _ => {}
        }
    }
    problems
}
