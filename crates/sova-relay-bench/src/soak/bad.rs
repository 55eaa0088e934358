//! The bad-input driver: a few times a second until the run winds down, one kind of bad
//! input at random (frames before registration, misbehaviour after it, bad HTTP), each on
//! its own connection and task; every one must get its documented reaction.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::bad_frames as frames;
use super::ctx::{millis, reached, Ctx, Phase};
use super::verdict::Inv;
use super::{bad_http, bad_session};

/// Names a bad registration may try to take (long-lived listeners: always registered),
/// with their sessions; and the jam sessions to misbehave in.
pub struct Targets {
    /// `(name, session)` of members that are always registered.
    pub taken: Vec<(String, String)>,
    /// Jam sessions.
    pub sessions: Vec<String>,
}

/// Runs bad inputs until the run winds down, then waits for the last ones.
pub async fn driver(ctx: Arc<Ctx>, seed: u64, targets: Arc<Targets>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    let mut running = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 100, 400)) => {}
            _ = reached(&mut phase, Phase::Wind) => break,
        }
        n += 1;
        running.spawn(one(ctx.clone(), n, rng.fork(), targets.clone()));
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn one(ctx: Arc<Ctx>, n: u64, mut rng: fastrand::Rng, targets: Arc<Targets>) {
    let ctx = &*ctx;
    let (what, outcome) = match rng.u8(0..14) {
        0 | 1 => ("random bytes", frames::random_bytes(ctx, &mut rng).await),
        2 => ("oversize header", frames::oversize(ctx, &mut rng).await),
        3 => ("zero-length frame", frames::zero_length(ctx).await),
        4 => (
            "not RegisterInstance",
            frames::not_register(ctx, &mut rng).await,
        ),
        5 | 6 => (
            "refused registration",
            frames::refused(ctx, &mut rng, &targets.taken).await,
        ),
        7 => ("incomplete handshake", frames::incomplete(ctx).await),
        8 => ("silent connection", frames::silent(ctx).await),
        9..=11 => {
            let session = &targets.sessions[rng.usize(..targets.sessions.len())];
            let name = format!("bad-{n}");
            (
                "after registration",
                bad_session::run(ctx, &mut rng, &name, session).await,
            )
        }
        _ => ("HTTP", bad_http::run(ctx, &mut rng).await),
    };
    ctx.books
        .verdicts
        .check(Inv::BadInput, outcome.is_ok(), || {
            let why = outcome.as_ref().err().cloned().unwrap_or_default();
            format!("bad input #{n} ({what}): {why}")
        });
}
