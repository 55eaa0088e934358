//! Rate-limit abusers: each life registers in an abuse session (where a long-lived silent
//! witness receives), floods far over `--rate-limit` (a burst of twice the limit, then a
//! steady excess), lets the bucket refill, pings, and closes. The abuser counts the
//! `Rate limit exceeded` errors and pongs it gets; the witness counts what was relayed. At
//! the end (`expect.rs`) these must fit the limiter and `/metrics` exactly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sova_relay_protocol::{encode_frame, Message};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::ctx::{millis, reached, Ctx, Phase};
use super::ledger::{add, AbuserLife, SourceKind};
use super::update;
use super::verdict::Inv;
use super::wire::{self, FrameReader, Join};

/// Filler bytes of every abuser update (a fixed size keeps the byte count exact).
const FILLER: usize = 32;

/// One abuse slot: abuser after abuser in session `soak-abuse-{k}`.
pub async fn slot(ctx: Arc<Ctx>, k: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    let session = format!("soak-abuse-{k}");
    let mut n = 0;
    while ctx.running() {
        n += 1;
        let name = format!("abuser-{k}-{n}");
        match life(&ctx, &session, &name, &mut rng).await {
            Ok(life) => ctx.books.ledger.abuser_done(life),
            Err(why) => ctx
                .books
                .verdicts
                .fail(Inv::RateLimit, || format!("{name}: {why}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 500, 2_000)) => {}
            _ = reached(&mut phase, Phase::Wind) => {}
        }
    }
}

async fn life(
    ctx: &Arc<Ctx>,
    session: &str,
    name: &str,
    rng: &mut fastrand::Rng,
) -> Result<AbuserLife, String> {
    let started = Instant::now();
    let join = Join {
        name,
        session,
        capabilities: &[],
        resume: None,
    };
    let (conn, reg) = wire::join(ctx.addr, &join)
        .await
        .map_err(|e| e.to_string())??;
    add(&ctx.books.tally.framed_connections, 1);
    add(&ctx.books.tally.registrations, 1);
    ctx.books
        .ledger
        .registered(reg.id, name, SourceKind::Abuser);
    let (frames, mut writer) = conn
        .into_parts()
        .ok_or("an abuser connects over framed TCP")?;
    let (pongs_tx, mut pongs_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read(frames, ctx.clone(), name.to_owned(), pongs_tx));
    let frame =
        |counter| wire::state_update(reg.id, 0, &update::encode(reg.id, counter, FILLER), false);
    let update_bytes = frame(1).len() as u64 - 4;
    let burst = u64::from(ctx.settings.rate_limit) * 2 + rng.u64(0..500);
    let flood: Vec<u8> = (1..=burst).flat_map(|c| frame(c).to_vec()).collect();
    writer.write_all(&flood).await.map_err(|e| e.to_string())?;
    let mut counter = burst;
    let per_sec = rng.f64() * 100.0 + 50.0;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    let until = Instant::now() + millis(rng, 1_000, 4_000);
    while Instant::now() < until {
        ticks.tick().await;
        counter += 1;
        writer
            .write_all(&frame(counter))
            .await
            .map_err(|e| e.to_string())?;
    }
    // Let the bucket refill a little, then ping until one is let through and answered.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut pings = 0;
    loop {
        pings += 1;
        let ping = encode_frame(&Message::Ping { timestamp: pings });
        writer.write_all(&ping).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), pongs_rx.recv()).await {
            Ok(Some(_)) => break,
            _ if pings < 5 => continue,
            _ => return Err("no Pong to 5 pings".to_owned()),
        }
    }
    writer.shutdown().await.map_err(|e| e.to_string())?;
    let heard = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .map_err(|_| "the relay did not close".to_owned())?
        .map_err(|e| e.to_string())??;
    Ok(AbuserLife {
        id: reg.id,
        name: name.to_owned(),
        updates: counter,
        pings,
        pongs: heard.pongs,
        pong_bytes: heard.pong_bytes,
        update_bytes,
        errors: heard.errors,
        active_secs: started.elapsed().as_secs_f64(),
    })
}

/// What an abuser heard.
struct Heard {
    errors: u64,
    pongs: u64,
    pong_bytes: u64,
}

/// Reads until the relay closes: rate-limit errors and pongs, nothing else.
async fn read(
    mut frames: FrameReader,
    ctx: Arc<Ctx>,
    name: String,
    pongs: mpsc::UnboundedSender<u64>,
) -> Result<Heard, String> {
    let limited = format!("Rate limit exceeded for instance {name}");
    let mut heard = Heard {
        errors: 0,
        pongs: 0,
        pong_bytes: 0,
    };
    while let Some(body) = frames.next().await {
        let body = body.map_err(|e| e.to_string())?;
        let len = body.len() as u64;
        match wire::decode(body).map_err(|e| e.to_string())? {
            Message::Error { message } if message == limited => heard.errors += 1,
            Message::Pong { timestamp } => {
                heard.pongs += 1;
                // A Pong's body is exactly as long as its Ping's.
                heard.pong_bytes += len;
                let _ = pongs.send(timestamp);
            }
            other => ctx
                .books
                .verdicts
                .fail(Inv::RateLimit, || format!("{name}: unexpected {other:?}")),
        }
    }
    Ok(heard)
}
