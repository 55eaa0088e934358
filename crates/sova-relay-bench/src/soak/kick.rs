//! Kicks: now and then the operator (`DELETE /api/instances/{id}` with the admin token)
//! removes a random churner. The churner is first asked to stop sending and sync, so
//! that what it sent is known to have been relayed and the relay's `kicked` count is
//! exact; then it must be told `Kicked by operator` and closed, and its peers must hear
//! `InstanceDisconnected` once (checked by their receivers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::client::KickRequest;
use super::ctx::{millis, reached, Ctx, Phase};
use super::http;
use super::ledger::add;
use super::verdict::Inv;

/// Churners that may be kicked, each with the channel that asks it to get ready.
#[derive(Default)]
pub struct Kickable {
    churners: Mutex<Vec<(Uuid, mpsc::UnboundedSender<KickRequest>)>>,
}

impl Kickable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Uuid, mpsc::UnboundedSender<KickRequest>)>> {
        self.churners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A churner offers itself.
    pub fn add(&self, id: Uuid, requests: mpsc::UnboundedSender<KickRequest>) {
        self.lock().push((id, requests));
    }

    /// A churner withdraws before leaving; `false` if the kicker took it first (its
    /// request is then already in its channel).
    pub fn remove(&self, id: Uuid) -> bool {
        let mut churners = self.lock();
        let before = churners.len();
        churners.retain(|(other, _)| *other != id);
        churners.len() != before
    }

    /// Takes a random churner and asks it to get ready, in one step.
    fn take_random(&self, rng: &mut fastrand::Rng) -> Option<(Uuid, oneshot::Receiver<()>)> {
        let mut churners = self.lock();
        if churners.is_empty() {
            return None;
        }
        let pick = rng.usize(..churners.len());
        let (id, requests) = churners.swap_remove(pick);
        let (ready, when_ready) = oneshot::channel();
        requests.send(ready).ok()?;
        Some((id, when_ready))
    }
}

/// Kicks a random churner every few seconds until the run quiesces.
pub async fn kicker(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut phase = ctx.phase.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(millis(&mut rng, 1_500, 4_000)) => {}
            _ = reached(&mut phase, Phase::Wind) => return,
        }
        let Some((id, when_ready)) = ctx.kickable.take_random(&mut rng) else {
            continue;
        };
        if !matches!(
            tokio::time::timeout(Duration::from_secs(20), when_ready).await,
            Ok(Ok(()))
        ) {
            ctx.books.verdicts.fail(Inv::Kick, || {
                format!("churner {id} never got ready to be kicked")
            });
            continue;
        }
        kick(&ctx, id).await;
    }
}

async fn kick(ctx: &Ctx, id: Uuid) {
    let bearer = format!("Bearer {}", ctx.settings.admin_token);
    let path = format!("/api/instances/{id}");
    let response = http::request(ctx, "DELETE", &path, &[("Authorization", &bearer)]).await;
    match response {
        Ok(response) if response.status == 200 => {
            add(&ctx.books.tally.kicks, 1);
            let named =
                response.body.contains("\"kicked\"") && response.body.contains(&id.to_string());
            ctx.books.verdicts.check(Inv::Kick, named, || {
                format!("kick of {id}: body {:?}", response.body)
            });
        }
        other => ctx
            .books
            .verdicts
            .fail(Inv::Kick, || format!("kick of {id}: {other:?}")),
    }
}
