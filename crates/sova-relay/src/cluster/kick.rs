//! Kicking an instance of another node: an operator reaches whichever node the load
//! balancer picks, so a node forwards `DELETE /api/instances/{id}` to the instance's node
//! (core NATS request/reply on `sova.kick.<hash of the node name>`).

use std::sync::Arc;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::{hex, lock, Cluster, RemoteInstance};
use crate::reason::DisconnectReason;
use crate::registry::Registry;

const KICKED: &[u8] = b"kicked";
const NOT_HERE: &[u8] = b"not here";

/// What came of a kick forwarded to another node.
pub(crate) enum RemoteKick {
    /// Closed by its node.
    Kicked(RemoteInstance),
    /// No other node holds it (it may have left meanwhile).
    NotFound,
    /// Its node did not answer.
    NoAnswer(RemoteInstance, String),
}

/// Node names may hold anything; subjects may not.
fn kick_subject(node: &str) -> String {
    let digest = hex(&Sha256::digest(node.as_bytes()));
    format!("sova.kick.{}", &digest[..16])
}

impl Cluster {
    /// Asks the node of instance `id` (registered elsewhere) to close it as kicked.
    pub(crate) async fn kick_remote(&self, id: Uuid) -> RemoteKick {
        let Some(instance) = self.find_remote(id) else {
            return RemoteKick::NotFound;
        };
        // Bounded by the client's request timeout (2 s).
        let request = self
            .client
            .request(kick_subject(&instance.node), id.to_string().into());
        match request.await {
            Ok(reply) if reply.payload.as_ref() == KICKED => RemoteKick::Kicked(instance),
            Ok(_) => RemoteKick::NotFound,
            Err(err) => RemoteKick::NoAnswer(instance, err.to_string()),
        }
    }

    fn find_remote(&self, id: Uuid) -> Option<RemoteInstance> {
        lock(&self.view).find(id)
    }
}

/// Answers the other nodes' kicks of this node's instances until `shutdown`. The
/// subscription outlives reconnections (the client subscribes again).
pub(super) async fn serve_kicks(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let mut requests = match cluster.client.subscribe(kick_subject(&cluster.node)).await {
        Ok(requests) => requests,
        Err(err) => {
            warn!(error = %err, "Cluster: cannot take kicks from other nodes");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = requests.next() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let Some(reply) = request.reply else {
            continue;
        };
        let member = std::str::from_utf8(&request.payload)
            .ok()
            .and_then(|id| Uuid::parse_str(id).ok())
            .and_then(|id| registry.find(id));
        let answer = match member {
            Some(member) => {
                info!(instance = %member.name, id = %member.id,
                      "Instance '{}' kicked by operator (through another node)", member.name);
                member.outbox.request_close(DisconnectReason::Kicked);
                KICKED
            }
            None => NOT_HERE,
        };
        if let Err(err) = cluster.client.publish(reply, answer.into()).await {
            warn!(error = %err, "Cluster: could not answer another node's kick");
        }
    }
}
