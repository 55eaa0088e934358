//! Slow consumers: one at a time per slot, an instance with a tiny receive buffer registers
//! in the slow session (where a feeder sends ~1 MB/s of large updates) and never reads
//! again. The relay must drop it (its queue passes `--max-pending-bytes`, or a write stalls
//! past `--write-timeout`) while the feeder, never held back, and everyone else carry on
//! untouched; the soak sees the drop in `/api/instances`, then reads what the relay had sent.

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use uuid::Uuid;

use super::ctx::{millis, reached, Ctx, Phase};
use super::http;
use super::ledger::{add, SourceKind};
use super::verdict::Inv;
use super::wire::{self, Join};

/// The session where a feeder floods and slow consumers stall.
pub const SLOW_SESSION: &str = "soak-slow";
/// Receive buffer of a slow consumer, bytes (the kernel doubles it).
const RCVBUF: u32 = 4096;
/// Longest the relay may take to drop a consumer that never reads.
const DROP_WITHIN: Duration = Duration::from_secs(60);

/// Slow consumer after slow consumer (`slow-{k}-{n}`) until the run winds down.
pub async fn slot(ctx: Arc<Ctx>, k: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    let mut n = 0;
    while ctx.running() {
        n += 1;
        let name = format!("slow-{k}-{n}");
        add(&ctx.books.tally.slow_started, 1);
        match one(&ctx, &name).await {
            Ok(()) => ctx.books.verdicts.pass(Inv::SlowConsumer),
            Err(why) => ctx
                .books
                .verdicts
                .fail(Inv::SlowConsumer, || format!("{name}: {why}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 500, 2_000)) => {}
            _ = reached(&mut phase, Phase::Wind) => {}
        }
    }
}

async fn one(ctx: &Ctx, name: &str) -> Result<(), String> {
    let mut stream = wire::connect(ctx.addr, Some(RCVBUF))
        .await
        .map_err(|e| e.to_string())?;
    let join = Join {
        name,
        session: SLOW_SESSION,
        capabilities: &[],
        resume: None,
    };
    stream
        .write_all(&wire::register_frame(&join, wire::VERSION))
        .await
        .map_err(|e| e.to_string())?;
    add(&ctx.books.tally.framed_connections, 1);
    let id = read_registration(&mut stream).await?;
    add(&ctx.books.tally.registrations, 1);
    ctx.books.ledger.registered(id, name, SourceKind::Silent);
    let started = Instant::now();
    while registered(ctx, id).await? {
        if started.elapsed() > DROP_WITHIN {
            stream.set_zero_linger().map_err(|e| e.to_string())?;
            return Err(format!(
                "still registered after {DROP_WITHIN:?} without reading"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    add(&ctx.books.tally.slow_dropped, 1);
    // What the relay managed to send before dropping it: whole frames (the last may be cut
    // short by the kill), ending with `Slow consumer: …` if the socket still took it.
    let bytes = wire::read_to_close(&mut stream, Duration::from_secs(20))
        .await
        .map_err(|e| format!("reading after the drop: {e}"))?;
    let messages = wire::messages(&bytes, true)?;
    for message in messages {
        match message {
            Message::StateBroadcast { .. } => {}
            Message::Error { message } if message.starts_with("Slow consumer") => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(())
}

/// Reads exactly the `RegistrationResponse` frame, nothing after it.
async fn read_registration(stream: &mut tokio::net::TcpStream) -> Result<Uuid, String> {
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    match wire::decode(body.into()).map_err(|e| e.to_string())? {
        Message::RegistrationResponse {
            success: true,
            assigned_id: Some(id),
            ..
        } => Ok(id),
        other => Err(format!("registration: {other:?}")),
    }
}

/// Whether the relay still lists instance `id`.
async fn registered(ctx: &Ctx, id: Uuid) -> Result<bool, String> {
    let response = http::request(ctx, "GET", "/api/instances", &[])
        .await
        .map_err(|e| format!("GET /api/instances: {e}"))?;
    let instances: serde_json::Value = serde_json::from_str(&response.body)
        .map_err(|e| format!("GET /api/instances: {} {e}", response.status))?;
    let id = id.to_string();
    Ok(instances
        .as_array()
        .is_some_and(|all| all.iter().any(|i| i["id"].as_str() == Some(id.as_str()))))
}
