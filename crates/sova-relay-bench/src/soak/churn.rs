//! Churn: in some sessions, instances join under a new name, send for a while, and leave
//! by closing or by a reset (or are kicked), one after another per slot, until the run
//! quiesces. Each syncs before leaving, so its peers must have seen its last update.

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::{Client, KickRequest, Sending, Stop};
use super::ctx::{millis, reached, Ctx, Phase};
use super::ledger::add;
use super::receiver::Other;
use super::verdict::Inv;

/// One churn slot of `session`: joiner after joiner, named `churn-{tag}-{n}`.
pub async fn slot(ctx: Arc<Ctx>, session: String, tag: String, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    let mut n = 0;
    while ctx.running() {
        n += 1;
        let name = format!("churn-{tag}-{n}");
        let sending = Sending {
            per_sec: (2.0, 5.0),
            filler: (0, 200),
            array: rng.bool(),
        };
        let joined = Client::join(
            ctx.clone(),
            name.clone(),
            session.clone(),
            &["presence"],
            Some(sending),
            rng.fork(),
        )
        .await;
        let mut client = match joined {
            Ok(client) => client,
            Err(why) => {
                ctx.books.verdicts.fail(Inv::Undisturbed, || {
                    format!("{name}: registration failed: {why}")
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        add(&ctx.books.tally.churn_joins, 1);
        let id = client.reg.id;
        let (requests, mut kicks) = mpsc::unbounded_channel();
        ctx.kickable.add(id, requests);
        let due = Instant::now() + millis(&mut rng, 300, 4_000);
        let stop = client
            .drive(&mut phase, Phase::Wind, Some(due), Some(&mut kicks))
            .await;
        match stop {
            Stop::Kick(ready) => kicked(client, ready).await,
            Stop::Lost(why) => {
                ctx.kickable.remove(id);
                ctx.books.verdicts.fail(Inv::Undisturbed, || {
                    format!("{name}: connection lost: {why}")
                });
            }
            Stop::Due | Stop::Phase => {
                if ctx.kickable.remove(id) {
                    leave(client, rng.bool()).await;
                } else if let Some(ready) = kicks.recv().await {
                    kicked(client, ready).await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 0, 500)) => {}
            _ = reached(&mut phase, Phase::Wind) => {}
        }
    }
}

/// Syncs, then leaves by a FIN or a reset.
async fn leave(mut client: Client, graceful: bool) {
    let ctx = client.ctx.clone();
    if let Err(why) = client.settle().await {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{}: sync before leaving failed: {why}", client.name)
        });
    }
    let tally = &ctx.books.tally;
    add(
        if graceful {
            &tally.churn_closed
        } else {
            &tally.churn_reset
        },
        1,
    );
    client.leave(graceful).await;
}

/// Syncs, says it is ready, then expects `Kicked by operator` and the end of the stream.
async fn kicked(mut client: Client, ready: KickRequest) {
    let ctx = client.ctx.clone();
    if let Err(why) = client.settle().await {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{}: sync before a kick failed: {why}", client.name)
        });
    }
    let _ = ready.send(());
    let mut told = false;
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = client.conn.next().await {
            let message = message.map_err(|e| e.to_string())?;
            match client.rx.on_message(message, &ctx.books) {
                Other::Handled => {}
                Other::Message(Message::Error { message }) if message == "Kicked by operator" => {
                    told = true;
                }
                Other::Message(other) => return Err(format!("{other:?} before the kick")),
            }
        }
        Ok(())
    })
    .await;
    let verdict = match outcome {
        Ok(Ok(())) if told => Ok(()),
        Ok(Ok(())) => Err("closed without `Kicked by operator`".to_owned()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("not kicked within 15 s".to_owned()),
    };
    ctx.books.verdicts.check(Inv::Kick, verdict.is_ok(), || {
        let why = verdict.as_ref().err().cloned().unwrap_or_default();
        format!("{} kicked: {why}", client.name)
    });
}
