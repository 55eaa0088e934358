//! Long-lived members: connected from the start to the relay's shutdown, some dropping and
//! resuming now and then. They carry the end-of-run checks: after every sender has stopped,
//! each one syncs, checks that it saw every remaining sender's last update, and reports
//! its view of the session; at shutdown each expects `Relay shutting down`.

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::Message;
use tokio::time::Instant;

use super::client::{rejoin, Client, Sending, Stop};
use super::ctx::{millis, reached, Ack, Ctx, Phase, Summary};
use super::verdict::Inv;

/// How often a resuming member drops its connection, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Drops {
    /// Milliseconds between drops, drawn between these.
    pub every_ms: (u64, u64),
    /// Milliseconds disconnected, drawn between these.
    pub down_ms: (u64, u64),
}

/// One long-lived member.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Instance name.
    pub name: String,
    /// Session token.
    pub session: String,
    /// Capabilities.
    pub caps: &'static [&'static str],
    /// How it sends, if it does.
    pub sending: Option<Sending>,
    /// How it drops and resumes, if it does (it must ask for `resume`).
    pub drops: Option<Drops>,
}

/// Runs one member through every phase.
pub async fn run(ctx: Arc<Ctx>, plan: Plan, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    let joined = Client::join(
        ctx.clone(),
        plan.name.clone(),
        plan.session.clone(),
        plan.caps,
        plan.sending,
        rng.fork(),
    )
    .await;
    let mut client = match joined {
        Ok(client) => client,
        Err(why) => {
            ctx.books.verdicts.fail(Inv::Undisturbed, || {
                format!("{}: registration failed: {why}", plan.name)
            });
            let (name, session) = (plan.name.clone(), plan.session.clone());
            rejoin(
                ctx.clone(),
                name,
                session,
                plan.caps,
                plan.sending,
                rng.fork(),
            )
            .await
        }
    };
    let mut accountable = plan.sending.is_some();
    loop {
        let due = plan
            .drops
            .map(|d| Instant::now() + millis(&mut rng, d.every_ms.0, d.every_ms.1));
        match client.drive(&mut phase, Phase::Quiesce, due, None).await {
            Stop::Phase => break,
            Stop::Due | Stop::Kick(_) => {
                let down = plan.drops.map_or((0, 0), |d| d.down_ms);
                client = client
                    .drop_and_resume(millis(&mut rng, down.0, down.1))
                    .await;
                accountable = false;
            }
            Stop::Lost(why) => {
                client = lost(client, &why).await;
                accountable = false;
            }
        }
    }
    client = quiesce(client, &mut phase).await;
    client = barrier(client, &mut phase, accountable).await;
    shutdown(client).await;
}

/// A connection lost without a reason the soak caused: a violation; registers again.
async fn lost(client: Client, why: &str) -> Client {
    let ctx = client.ctx.clone();
    ctx.books.verdicts.fail(Inv::Undisturbed, || {
        format!(
            "{} ({}): connection lost: {why}",
            client.name, client.session
        )
    });
    let Client {
        name,
        session,
        caps,
        sending,
        rng,
        ..
    } = client;
    rejoin(ctx, name, session, caps, sending, rng).await
}

/// Stops sending, syncs, records the last counter; keeps receiving until the barrier.
async fn quiesce(mut client: Client, phase: &mut tokio::sync::watch::Receiver<Phase>) -> Client {
    let ctx = client.ctx.clone();
    if let Err(why) = client.settle().await {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{}: sync at quiesce failed: {why}", client.name)
        });
    }
    ctx.ack(Ack::Quiesced);
    loop {
        match client.drive(phase, Phase::Barrier, None, None).await {
            Stop::Lost(why) => client = lost(client, &why).await,
            _ => return client,
        }
    }
}

/// Receives everything still queued, checks the tails, reports; then waits for shutdown.
async fn barrier(
    mut client: Client,
    phase: &mut tokio::sync::watch::Receiver<Phase>,
    accountable: bool,
) -> Client {
    let ctx = client.ctx.clone();
    if let Err(why) = client.sync().await {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{}: sync at the barrier failed: {why}", client.name)
        });
    }
    let view = client.rx.final_check(&ctx.books);
    ctx.ack(Ack::Final(Box::new(Summary {
        session: client.session.clone(),
        name: client.name.clone(),
        id: client.reg.id,
        silent: client.sending.is_none(),
        accountable,
        view,
        last_seq: client.rx.last_seq,
        base_seq: client.rx.base_seq,
        received: client.rx.received,
        own: client.own,
    })));
    if let Stop::Lost(why) = client.drive(phase, Phase::Shutdown, None, None).await {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{}: connection lost after the barrier: {why}", client.name)
        });
        reached(phase, Phase::Shutdown).await;
    }
    client
}

/// Expects `Error {"Relay shutting down"}`, then the end of the stream.
async fn shutdown(mut client: Client) {
    let ctx = client.ctx.clone();
    let within = ctx.settings.shutdown_timeout + Duration::from_secs(5);
    let mut told = false;
    let outcome = tokio::time::timeout(within, async {
        while let Some(message) = client.conn.next().await {
            match message {
                Ok(Message::Error { message }) if message == "Relay shutting down" => told = true,
                // Members whose connections the relay closed first leave the session.
                Ok(Message::InstanceDisconnected { .. }) => {}
                Ok(other) => return Err(format!("{other:?} during shutdown")),
                Err(err) => return Err(err.to_string()),
            }
        }
        Ok(())
    })
    .await;
    let verdict = match outcome {
        Ok(Ok(())) if told => Ok(()),
        Ok(Ok(())) => Err("closed without `Relay shutting down`".to_owned()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("not closed within {within:?}")),
    };
    ctx.books.verdicts.check(Inv::Process, verdict.is_ok(), || {
        let why = verdict.as_ref().err().cloned().unwrap_or_default();
        format!("{} at shutdown: {why}", client.name)
    });
    ctx.ack(Ack::Closed);
}
