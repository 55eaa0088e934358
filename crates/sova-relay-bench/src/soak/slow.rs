//! Slow consumers: one at a time per slot, an instance with a tiny receive buffer registers
//! in the slow session (where a feeder sends ~1 MB/s of large updates) and never reads
//! again. The relay must drop it (its queue passes `--max-pending-bytes`, or a write stalls
//! past `--write-timeout`) while the feeder, never held back, and everyone else carry on
//! untouched; the soak sees the drop in `/api/instances`, then reads what the relay had sent.
//! Each consumer uses a transport drawn like the well-behaved clients' (framed or WebSocket,
//! in the clear or inside TLS): each has its own writer in the relay.

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::Message;
use tokio::time::Instant;
use uuid::Uuid;

use super::ctx::{millis, reached, Ctx, Phase};
use super::http;
use super::ledger::{add, SourceKind};
use super::verdict::Inv;
use super::wire::{self, Join, Transport};

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
        let transport = ctx.pick_transport(&mut rng);
        match one(&ctx, &name, transport).await {
            Ok(()) => ctx.books.verdicts.pass(Inv::SlowConsumer),
            Err(why) => ctx.books.verdicts.fail(Inv::SlowConsumer, || {
                format!("{name} ({}): {why}", transport.label())
            }),
        }
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 500, 2_000)) => {}
            _ = reached(&mut phase, Phase::Wind) => {}
        }
    }
}

async fn one(ctx: &Ctx, name: &str, transport: Transport) -> Result<(), String> {
    let stream = wire::connect(ctx.addr, Some(RCVBUF))
        .await
        .map_err(|e| e.to_string())?;
    let join = Join {
        name,
        session: SLOW_SESSION,
        capabilities: &[],
        resume: None,
    };
    let (mut conn, reg) = wire::join_on(transport, stream, ctx.tls.as_ref(), &join)
        .await
        .map_err(|e| e.to_string())??;
    ctx.books.tally.connected(transport);
    add(&ctx.books.tally.registrations, 1);
    ctx.books
        .ledger
        .registered(reg.id, name, SourceKind::Silent);
    let started = Instant::now();
    while registered(ctx, reg.id).await? {
        if started.elapsed() > DROP_WITHIN {
            conn.reset();
            return Err(format!(
                "still registered after {DROP_WITHIN:?} without reading"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    add(&ctx.books.tally.slow_dropped, 1);
    // What the relay managed to send before dropping it: whole messages, ending with
    // `Slow consumer: …` if the socket still took it. The relay may have been cut off in
    // the middle of a frame (or a TLS record): that ends the stream, nothing may follow.
    let drained = async {
        let mut broken = None;
        while let Some(message) = conn.next().await {
            match (message, &broken) {
                (Err(err), None) => broken = Some(err.to_string()),
                (Err(_), Some(_)) => {}
                (Ok(message), Some(err)) => {
                    return Err(format!("{} after a broken message ({err})", message.kind()))
                }
                (Ok(Message::StateBroadcast { .. }), None) => {}
                (Ok(Message::Error { message }), None) if message.starts_with("Slow consumer") => {}
                (Ok(other), None) => return Err(format!("unexpected {other:?}")),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), drained)
        .await
        .map_err(|_| "the relay did not close the connection".to_owned())?
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
