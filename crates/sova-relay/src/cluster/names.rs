//! Registering across the cluster: names claimed atomically in `sova_names` (or taken over
//! by a resuming client), slots of `--max-instances` in `sova_counts`, and their release.
//! What the other nodes hold is `view.rs`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{debug, warn};
use uuid::Uuid;

use super::{hex, lock, Cluster, REGISTRATION_WAIT};
use crate::registry::{NewMember, RegisterError, Registration, Registry};
use crate::session::Session;

const COUNTS_KEY: &str = "instances";

/// How often a registration that found `--max-instances` reached looks again, and the pause
/// before each new look (times the attempt): racers of a taken name free their slots
/// within a round trip to NATS.
const FULL_RETRIES: u32 = 3;
const FULL_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// One registered instance, as `sova_names` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct NameValue {
    pub(super) id: Uuid,
    pub(super) name: String,
    pub(super) version: String,
    pub(super) node: String,
    pub(super) incarnation: String,
    pub(super) connected_at_ms: u64,
    /// Its session's label (what the status pages show: never the token).
    #[serde(default)]
    pub(super) session_label: String,
    /// SHA-256 of its resume secret (hex): another node checks a resuming client with it.
    pub(super) secret_sha256: Option<String>,
}

impl Cluster {
    /// Registers an instance cluster-wide (name and slot in NATS), then on this node.
    pub(crate) async fn register(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        new: NewMember,
    ) -> Result<Registration, RegisterError> {
        let objects = self
            .objects()
            .filter(|_| self.is_available())
            .ok_or(RegisterError::Unavailable)?;
        let pin = registry.pin_session(&new.session_token);
        if !pin.wait_ready(REGISTRATION_WAIT).await {
            warn!(session = %pin.label(), "Cluster: the session's feed did not catch up in time");
            return Err(RegisterError::Unavailable);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let claimed =
            tokio::time::timeout(REGISTRATION_WAIT, self.claim(&objects, &new, pin.session()))
                .await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (key, _revision) = match claimed {
            Ok(claimed) => claimed?,
            Err(_) => return Err(RegisterError::Unavailable),
        };
        let id = new.id;
        match registry.register(new) {
            Ok(mut registration) => {
                registration.claim = Some(Claim {
                    cluster: self.clone(),
                    key,
                    id,
                });
                Ok(registration)
            }
            Err(err) => {
                self.release(key, id).await;
                Err(err)
            }
        }
    }

    /// Claims the name (or takes over its entry with the resume secret) and, for a new
    /// instance, a slot of `--max-instances`. Returns the key and the entry's revision.
    async fn claim(
        &self,
        objects: &super::Objects,
        new: &NewMember,
        session: &Session,
    ) -> Result<(String, u64), RegisterError> {
        let key = name_key(&session.cluster_key, &new.name);
        let value = self.name_value(
            new.id,
            (&new.name, &new.version, &session.label),
            crate::registry::now_ms(),
            new.secret.as_deref(),
        );
        let bytes: bytes::Bytes = serde_json::to_vec(&value)
            .map_err(|_| RegisterError::Unavailable)?
            .into();
        let current = objects
            .names
            .entry(key.clone())
            .await
            .map_err(unavailable)?;
        let holder = current
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                Some((
                    e.revision,
                    serde_json::from_slice::<NameValue>(&e.value).ok()?,
                ))
            });
        if let Some((revision, holder)) = holder {
            // This node's own entry whose instance has left (its release is on its way).
            // Only that: an entry a concurrent registration here has just created is not
            // in the session yet either, and must not be taken over.
            let left_here = holder.node == self.node
                && holder.incarnation == self.incarnation
                && lock(&self.leaving).contains(&holder.id);
            if !left_here && !presents_secret_of(new, &holder) {
                return Err(RegisterError::NameTaken(new.name.clone()));
            }
            let revision = match objects.names.update(&key, bytes, revision).await {
                Ok(revision) => revision,
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Err(RegisterError::NameTaken(new.name.clone()))
                }
                Err(err) => return Err(unavailable(err)),
            };
            if holder.node != self.node {
                let _ = add_count(&objects.counts, &self.node, 1).await;
            }
            return Ok((key, revision));
        }
        // Racing registrations of one name each hold a slot until their `create` fails, so
        // near the limit a racer may find it full for a moment: it looks again, and is told
        // the name is taken if that is what it would be told next.
        let mut attempt = 0;
        while let Err(full) = reserve(&objects.counts, &self.node, self.max_instances).await {
            let taken = objects.names.entry(key.clone()).await.ok().flatten();
            if taken.is_some_and(|e| e.operation == kv::Operation::Put) {
                return Err(RegisterError::NameTaken(new.name.clone()));
            }
            attempt += 1;
            if attempt == FULL_RETRIES {
                return Err(full);
            }
            tokio::time::sleep(FULL_RETRY_PAUSE * attempt).await;
        }
        match objects.names.create(&key, bytes).await {
            Ok(revision) => Ok((key, revision)),
            Err(err) => {
                let _ = add_count(&objects.counts, &self.node, -1).await;
                match err.kind() {
                    kv::CreateErrorKind::AlreadyExists => {
                        Err(RegisterError::NameTaken(new.name.clone()))
                    }
                    _ => Err(unavailable(err)),
                }
            }
        }
    }

    /// Frees a name this node claimed for instance `id`, unless another node has taken it
    /// over since; retried at the next heartbeat when NATS does not answer.
    pub(super) async fn release(&self, key: String, id: Uuid) {
        lock(&self.leaving).insert(id);
        let Some(objects) = self.objects() else {
            lock(&self.unreleased).push((key, id));
            return;
        };
        // Some(true): freed; Some(false): nothing of ours to free; None: NATS failed.
        let released = async {
            let entry = objects.names.entry(key.clone()).await.ok()?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                return Some(false);
            };
            let ours = serde_json::from_slice::<NameValue>(&entry.value).is_ok_and(|v| v.id == id);
            if !ours {
                return Some(false);
            }
            match objects
                .names
                .delete_expect_revision(&key, Some(entry.revision))
                .await
            {
                Ok(()) => Some(true),
                Err(_) => None,
            }
        };
        match tokio::time::timeout(REGISTRATION_WAIT, released).await {
            Ok(Some(true)) => {
                lock(&self.leaving).remove(&id);
                let _ = add_count(&objects.counts, &self.node, -1).await;
            }
            Ok(Some(false)) => {
                lock(&self.leaving).remove(&id);
            }
            Ok(None) | Err(_) => {
                debug!(%key, "Cluster: releasing a name failed; retrying at the next heartbeat");
                lock(&self.unreleased).push((key, id));
            }
        }
    }

    /// This node's entry for an instance: `(name, version, session label)`.
    pub(super) fn name_value(
        &self,
        id: Uuid,
        (name, version, session_label): (&str, &str, &str),
        connected_at_ms: u64,
        secret: Option<&str>,
    ) -> NameValue {
        NameValue {
            id,
            name: name.to_owned(),
            version: version.to_owned(),
            session_label: session_label.to_owned(),
            node: self.node.clone(),
            incarnation: self.incarnation.clone(),
            connected_at_ms,
            secret_sha256: secret.map(|s| hex(&Sha256::digest(s.as_bytes()))),
        }
    }
}

/// The key of a name in `sova_names`: the session's key, then the name in hex (any
/// character may be in a name, not in a key).
pub(super) fn name_key(session_key: &str, name: &str) -> String {
    format!("{session_key}.{}", hex(name.as_bytes()))
}

pub(super) fn claimed_elsewhere(name: &str) -> String {
    format!("Instance name '{name}' was claimed on another node")
}

/// Whether `new` presents the resume secret of the instance holding the name.
fn presents_secret_of(new: &NewMember, holder: &NameValue) -> bool {
    let (Some(resume), Some(issued)) = (&new.resume, &holder.secret_sha256) else {
        return false;
    };
    let given = hex(&Sha256::digest(resume.secret.as_bytes()));
    given.as_bytes().ct_eq(issued.as_bytes()).into()
}

fn unavailable(err: impl std::fmt::Display) -> RegisterError {
    warn!(error = %err, "Cluster: NATS request failed during a registration");
    RegisterError::Unavailable
}

/// Takes a slot of `--max-instances` for this node, atomically across the cluster.
async fn reserve(counts: &kv::Store, node: &str, max: usize) -> Result<(), RegisterError> {
    loop {
        let (mut map, revision) = read_counts(counts).await.map_err(unavailable)?;
        if map.values().sum::<usize>() >= max {
            return Err(RegisterError::Full(max));
        }
        *map.entry(node.to_owned()).or_default() += 1;
        match write_counts(counts, &map, revision).await {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(err) => return Err(unavailable(err)),
        }
    }
}

/// Adds `delta` to this node's count (no limit: a resume or a release).
pub(super) async fn add_count(counts: &kv::Store, node: &str, delta: i64) -> anyhow::Result<()> {
    loop {
        let (mut map, revision) = read_counts(counts).await?;
        let count = map.entry(node.to_owned()).or_default();
        *count = usize::try_from(i64::try_from(*count).unwrap_or(0) + delta).unwrap_or(0);
        if write_counts(counts, &map, revision).await? {
            return Ok(());
        }
    }
}

/// Sets a node's count (`None`: removes the node); false if it already was so.
pub(super) async fn set_count(
    counts: &kv::Store,
    node: &str,
    count: Option<usize>,
) -> anyhow::Result<bool> {
    loop {
        let (mut map, revision) = read_counts(counts).await?;
        let unchanged = map.get(node).copied() == count;
        if unchanged {
            return Ok(false);
        }
        match count {
            Some(count) => map.insert(node.to_owned(), count),
            None => map.remove(node),
        };
        if write_counts(counts, &map, revision).await? {
            return Ok(true);
        }
    }
}

pub(super) async fn read_counts(
    counts: &kv::Store,
) -> anyhow::Result<(HashMap<String, usize>, Option<u64>)> {
    let entry = counts.entry(COUNTS_KEY).await?;
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(entry) => Ok((serde_json::from_slice(&entry.value)?, Some(entry.revision))),
        None => Ok((HashMap::new(), None)),
    }
}

/// Compare-and-set; false when another node wrote first.
async fn write_counts(
    counts: &kv::Store,
    map: &HashMap<String, usize>,
    revision: Option<u64>,
) -> anyhow::Result<bool> {
    let bytes: bytes::Bytes = serde_json::to_vec(map)?.into();
    match revision {
        Some(revision) => match counts.update(COUNTS_KEY, bytes, revision).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(err) => Err(err.into()),
        },
        None => match counts.create(COUNTS_KEY, bytes).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err.into()),
        },
    }
}

/// A registration's claim on its name: released when the registration ends.
pub(crate) struct Claim {
    cluster: Arc<Cluster>,
    key: String,
    id: Uuid,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let cluster = self.cluster.clone();
        let key = std::mem::take(&mut self.key);
        let id = self.id;
        // At once, not when the release task runs: from now on the name may be re-registered.
        lock(&cluster.leaving).insert(id);
        let release = async move { cluster.release(key, id).await };
        // Tracked, so a relay shutting down frees its names before it exits.
        match self.cluster.tracker.get() {
            Some(tracker) => {
                tracker.spawn(release);
            }
            None => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(release);
                }
            }
        }
    }
}
