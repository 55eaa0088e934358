//! Dropping and resuming: a resuming client syncs, resets its connection (whatever the
//! relay was sending it is lost in flight), stays away a moment, and registers again with
//! `resume: {epoch, seq, secret}`. Within the history's bounds the answer must be `ok`, and
//! the receiver's checks then continue across the reconnect (no gap, no duplicate).

use std::time::Duration;

use sova_relay_protocol::ResumeRequest;
use tokio::time::Instant;

use super::client::{kind_of, rejoin, Client};
use super::ctx::Ctx;
use super::ledger::add;
use super::receiver::Receiver;
use super::verdict::Inv;
use super::wire::{Join, Registered};

impl Client {
    /// Drops the connection abruptly (a reset), waits `down`, and resumes. Returns the
    /// client on the new connection (registered afresh if the resume failed).
    pub async fn drop_and_resume(mut self, down: Duration) -> Client {
        if let Err(why) = self.settle().await {
            self.ctx.books.verdicts.fail(Inv::Undisturbed, || {
                format!("{}: sync before a drop failed: {why}", self.name)
            });
        }
        let resume = ResumeRequest {
            epoch: self.reg.epoch,
            seq: self.rx.last_seq,
            secret: self.reg.secret.clone().unwrap_or_default(),
        };
        let Client {
            ctx,
            name,
            session,
            caps,
            conn,
            mut rx,
            sending,
            mut own,
            mut rng,
            node,
            ..
        } = self;
        add(&ctx.books.tally.drops, 1);
        let dropped_at = std::time::Instant::now();
        conn.reset();
        tokio::time::sleep(down).await;
        let join = Join {
            name: &name,
            session: &session,
            capabilities: caps,
            resume: Some(resume.clone()),
        };
        let node_now = ctx.other_node(node);
        // Over either transport, whichever the dropped connection used.
        let transport = ctx.pick_transport(&mut rng);
        match ctx.join_over(transport, node_now, &join).await {
            Ok(Ok((conn, reg))) => {
                if node_now != node {
                    add(&ctx.books.tally.resumes_moved, 1);
                }
                ctx.books.tally.connected(transport);
                add(&ctx.books.tally.registrations, 1);
                ctx.books.ledger.registered(reg.id, &name, kind_of(sending));
                let down = dropped_at.elapsed();
                if !check_resume(&ctx, &name, &mut rx, &reg, &resume, down) {
                    // The life goes on afresh: what it sent so far is no longer accountable.
                    own = 0;
                }
                Client {
                    ctx,
                    name,
                    session,
                    caps,
                    conn,
                    reg,
                    rx,
                    sending,
                    counter: 0,
                    own,
                    next_send: Instant::now(),
                    pings: 0,
                    rng,
                    node: node_now,
                }
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(refusal)) => refusal,
                    Err(err) => err.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                ctx.books.verdicts.fail(Inv::Resume, || {
                    format!("{name}: resume refused or failed: {why}")
                });
                rejoin(ctx, name, session, caps, sending, rng).await
            }
        }
    }
}

/// Checks a resume's answer; returns whether the life continues (`ok`).
fn check_resume(
    ctx: &Ctx,
    name: &str,
    rx: &mut Receiver,
    reg: &Registered,
    from: &ResumeRequest,
    down: Duration,
) -> bool {
    let books = &ctx.books;
    if rx.resumed(reg, books) {
        add(&books.tally.resumes_ok, 1);
        books.verdicts.pass(Inv::Resume);
        return true;
    }
    add(&books.tally.resumes_resync, 1);
    let settings = &ctx.settings;
    let gap = reg.seq.saturating_sub(from.seq);
    // Only a gap the history could not hold excuses a resync.
    let beyond = reg.epoch != from.epoch
        || gap >= settings.history_max_updates
        || down >= settings.history_max_age;
    books.verdicts.check(Inv::Resume, beyond, || {
        format!(
            "{name}: resync_required for a gap of {gap} broadcasts after {} ms down (epoch {})",
            down.as_millis(),
            if reg.epoch == from.epoch {
                "unchanged"
            } else {
                "changed"
            }
        )
    });
    false
}
