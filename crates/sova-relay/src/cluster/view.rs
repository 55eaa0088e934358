//! What this node knows of the rest of the cluster: the other nodes' instances (from a watch
//! of `sova_names`), which nodes are alive (from `sova_nodes`), telling this node's members
//! who joined and left elsewhere, and freeing the names of nodes that died.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sova_relay_protocol::InstanceInfo;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::names::{add_count, claimed_elsewhere, name_key, read_counts, set_count, NameValue};
use super::{hex, lock, Cluster};
use crate::reason::DisconnectReason;
use crate::registry::Registry;
use crate::session::{RemoteNotice, Session};

/// An instance registered on another node.
#[derive(Debug, Clone)]
pub(crate) struct RemoteInstance {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) node: String,
    pub(crate) session_label: String,
    pub(crate) connected_at: SystemTime,
}

impl RemoteInstance {
    pub(crate) fn info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.id,
            name: self.name.clone(),
            version: self.version.clone(),
            connected_at: self.connected_at,
            last_activity: self.connected_at,
        }
    }
}

struct Remote {
    revision: u64,
    value: NameValue,
}

/// What this node knows of the rest of the cluster.
#[derive(Default)]
pub(crate) struct View {
    /// Other nodes' instances, by session key then name key.
    sessions: HashMap<String, HashMap<String, Remote>>,
    /// Nodes by name: incarnation and when NATS last stored its heartbeat.
    heartbeats: HashMap<String, (String, SystemTime)>,
    /// When this node last saw its own heartbeat come back from NATS, and since when it
    /// has seen them without a gap (the others' beats resume a little after ours).
    own_beat_seen: Option<Instant>,
    own_beats_since: Option<Instant>,
    /// Names of the nodes alive at the last sweep (this one included).
    pub(crate) live_nodes: Vec<String>,
}

impl View {
    pub(crate) fn remote_count(&self) -> usize {
        self.sessions.values().map(HashMap::len).sum()
    }

    /// Whether instance `id` of another node is in session `session_key`.
    fn has(&self, session_key: &str, id: Uuid) -> bool {
        self.sessions
            .get(session_key)
            .is_some_and(|entries| entries.values().any(|remote| remote.value.id == id))
    }

    /// Another node's instance, by id.
    pub(crate) fn find(&self, id: Uuid) -> Option<RemoteInstance> {
        self.sessions
            .values()
            .flat_map(HashMap::values)
            .find(|remote| remote.value.id == id)
            .map(|remote| remote_instance(&remote.value))
    }
}

impl Cluster {
    /// Every instance registered on other nodes, with its session's cluster key.
    pub(crate) fn all_remote_instances(&self) -> Vec<(String, RemoteInstance)> {
        let view = lock(&self.view);
        view.sessions
            .iter()
            .flat_map(|(key, entries)| {
                entries
                    .values()
                    .map(|r| (key.clone(), remote_instance(&r.value)))
            })
            .collect()
    }

    /// The instances of a session registered on other nodes.
    pub(crate) fn remote_instances(&self, session: &str) -> Vec<RemoteInstance> {
        let view = lock(&self.view);
        view.sessions
            .get(session)
            .map(|entries| {
                entries
                    .values()
                    .map(|r| remote_instance(&r.value))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies one change of `sova_names` to the view, and tells this node's members.
    fn apply(self: &Arc<Self>, registry: &Registry, entry: kv::Entry) {
        debug!(key = %entry.key, revision = entry.revision, operation = ?entry.operation, "Cluster: registry change");
        let Some((session_key, _)) = entry.key.split_once('.') else {
            return;
        };
        let session_key = session_key.to_owned();
        let session = registry.session_by_key(&session_key);
        match entry.operation {
            kv::Operation::Put => {
                let Ok(value) = serde_json::from_slice::<NameValue>(&entry.value) else {
                    warn!(key = %entry.key, "Cluster: unreadable entry in sova_names ignored");
                    return;
                };
                let own = value.node == self.node && value.incarnation == self.incarnation;
                let Some(session) = session else {
                    self.put_in_view(&session_key, &entry, &value, own);
                    return;
                };
                // The view changes and the members are told under the session's lock: a
                // registration sees either the old view and then the notice, or the new view
                // (its `current_instances`) and no notice; the feed delivers the instance's
                // first update (under the same lock) after the notice.
                let state = session.lock();
                let previous = self.put_in_view(&session_key, &entry, &value, own);
                let recipients = state.members.clone();
                let is_new = previous.as_ref().is_none_or(|p| p.value.id != value.id);
                if let Some(previous) = previous.filter(|p| p.value.id != value.id) {
                    self.notify(
                        &session,
                        RemoteNotice::left(&previous.value, &recipients, Some(value.id)),
                    );
                }
                if !own && is_new {
                    self.notify(&session, RemoteNotice::joined(&value, &recipients));
                }
                drop(state);
                if own {
                    return;
                }
                // This node's holder of the name goes: replaced by its own resumed
                // connection elsewhere (same secret), or the name was claimed elsewhere
                // while this node was cut off.
                for member in recipients.iter() {
                    if member.name == value.name && member.id != value.id {
                        let resumed = match (&member.resume_secret, &value.secret_sha256) {
                            (Some(secret), Some(issued)) => {
                                let ours = hex(&Sha256::digest(secret.as_bytes()));
                                bool::from(ours.as_bytes().ct_eq(issued.as_bytes()))
                            }
                            _ => false,
                        };
                        member.outbox.request_close(if resumed {
                            DisconnectReason::Superseded
                        } else {
                            DisconnectReason::Rejected(claimed_elsewhere(&member.name))
                        });
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                let Some(session) = session else {
                    self.remove_from_view(&session_key, &entry.key);
                    return;
                };
                let state = session.lock();
                match self.remove_from_view(&session_key, &entry.key) {
                    Some(previous) => {
                        self.notify(
                            &session,
                            RemoteNotice::left(&previous.value, &state.members, None),
                        );
                    }
                    None => {
                        drop(state);
                        self.reclaim_if_live(&session, &entry.key);
                    }
                }
            }
        }
    }

    /// Records another node's entry (or forgets this node's own); the entry it replaced.
    fn put_in_view(
        &self,
        session_key: &str,
        entry: &kv::Entry,
        value: &NameValue,
        own: bool,
    ) -> Option<Remote> {
        let mut view = lock(&self.view);
        let entries = view.sessions.entry(session_key.to_owned()).or_default();
        let previous = entries.remove(&entry.key);
        if !own {
            entries.insert(
                entry.key.clone(),
                Remote {
                    revision: entry.revision,
                    value: value.clone(),
                },
            );
        }
        if entries.is_empty() {
            view.sessions.remove(session_key);
        }
        previous
    }

    fn remove_from_view(&self, session_key: &str, key: &str) -> Option<Remote> {
        let mut view = lock(&self.view);
        let entries = view.sessions.get_mut(session_key)?;
        let previous = entries.remove(key);
        if entries.is_empty() {
            view.sessions.remove(session_key);
        }
        previous
    }

    /// One of this node's live instances lost its entry (another node judged this one dead
    /// while it was cut off from NATS): claims the name again, or closes the instance if
    /// someone else took it meanwhile.
    fn reclaim_if_live(self: &Arc<Self>, session: &Session, key: &str) {
        let Some(member) = session
            .members()
            .iter()
            .find(|m| name_key(&session.cluster_key, &m.name) == key)
            .cloned()
        else {
            return;
        };
        let Some(objects) = self.objects() else {
            return;
        };
        let value = self.name_value(
            member.id,
            (&member.name, &member.version, &session.label),
            member
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            member.resume_secret.as_deref(),
        );
        let key = key.to_owned();
        let cluster = self.clone();
        tokio::spawn(async move {
            let Ok(bytes) = serde_json::to_vec(&value) else {
                return;
            };
            match objects.names.create(&key, bytes.into()).await {
                Ok(_) => {
                    info!(instance = %member.name, "Cluster: name claimed again after this node was cut off");
                    let _ = add_count(&objects.counts, &cluster.node, 1).await;
                }
                Err(err) => {
                    warn!(instance = %member.name, error = %err, "Cluster: the name was claimed elsewhere while this node was cut off; closing");
                    member
                        .outbox
                        .request_close(DisconnectReason::Rejected(claimed_elsewhere(&member.name)));
                }
            }
        });
    }

    /// After (re)starting the watch: the entries of the view that are no longer in the
    /// bucket left meanwhile.
    fn forget_unseen(self: &Arc<Self>, registry: &Registry, seen: &HashSet<String>) {
        let gone: Vec<(String, NameValue)> = {
            let mut view = lock(&self.view);
            let mut gone = Vec::new();
            for (session_key, entries) in view.sessions.iter_mut() {
                entries.retain(|key, remote| {
                    let keep = seen.contains(key);
                    if !keep {
                        gone.push((session_key.clone(), remote.value.clone()));
                    }
                    keep
                });
            }
            view.sessions.retain(|_, entries| !entries.is_empty());
            gone
        };
        for (session_key, value) in gone {
            if let Some(session) = registry.session_by_key(&session_key) {
                self.notify(
                    &session,
                    RemoteNotice::left(&value, &session.members(), None),
                );
            }
        }
    }

    fn apply_heartbeat(&self, entry: kv::Entry) {
        let mut view = lock(&self.view);
        match entry.operation {
            kv::Operation::Put => {
                let incarnation = serde_json::from_slice::<serde_json::Value>(&entry.value)
                    .ok()
                    .and_then(|v| v.get("incarnation")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let at = UNIX_EPOCH
                    + Duration::from_nanos(
                        u64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(0),
                    );
                if entry.key == self.node && incarnation == self.incarnation {
                    let now = Instant::now();
                    let gap = view
                        .own_beat_seen
                        .is_none_or(|seen| seen.elapsed() > self.expiry / 2);
                    if gap {
                        view.own_beats_since = Some(now);
                    }
                    view.own_beat_seen = Some(now);
                }
                view.heartbeats.insert(entry.key, (incarnation, at));
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                view.heartbeats.remove(&entry.key);
            }
        }
    }

    /// Frees the names of nodes whose heartbeat expired (or who said goodbye), once this
    /// node has itself been connected long enough to have seen every live node's beat.
    pub(super) async fn sweep_dead_nodes(&self, _registry: &Registry) -> anyhow::Result<()> {
        let Some(objects) = self.objects() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let (dead_entries, live) = {
            let mut view = lock(&self.view);
            // Judged against this node's own latest beat as NATS stored it, not the clock:
            // while NATS takes no beats (a server lost, a leader being elected) ours stop
            // too, and nobody is declared dead for NATS's silence.
            let own_beat = view
                .heartbeats
                .get(&self.node)
                .filter(|(incarnation, _)| *incarnation == self.incarnation)
                .map(|(_, at)| *at);
            // Fresh: seen come back recently (by this node's monotonic clock, so a skew
            // between its clock and NATS's does not matter).
            let own_beat_fresh = view
                .own_beat_seen
                .is_some_and(|seen| seen.elapsed() <= self.expiry / 2);
            // …and steadily for an expiry: every live node has beaten since.
            let own_beats_steady = view
                .own_beats_since
                .is_some_and(|since| since.elapsed() >= self.expiry);
            let reference = own_beat.filter(|_| own_beat_fresh).unwrap_or(now);
            let alive =
                |at: &SystemTime| reference.duration_since(*at).unwrap_or_default() <= self.expiry;
            let live: HashMap<String, String> = view
                .heartbeats
                .iter()
                .filter(|(_, (_, at))| alive(at))
                .map(|(node, (incarnation, _))| (node.clone(), incarnation.clone()))
                .collect();
            let mut names: Vec<String> = live.keys().cloned().collect();
            if !names.contains(&self.node) {
                names.push(self.node.clone());
            }
            names.sort();
            view.live_nodes = names;
            let settled = lock(&self.connected_since)
                .is_some_and(|since: Instant| since.elapsed() >= self.expiry);
            if !settled || !own_beat_fresh || !own_beats_steady {
                return Ok(());
            }
            let is_live = |value: &NameValue| {
                (value.node == self.node && value.incarnation == self.incarnation)
                    || live.get(&value.node) == Some(&value.incarnation)
            };
            let dead_entries: Vec<(String, u64, String)> = view
                .sessions
                .values()
                .flat_map(|entries| entries.iter())
                .filter(|(_, remote)| !is_live(&remote.value))
                .map(|(key, remote)| (key.clone(), remote.revision, remote.value.node.clone()))
                .collect();
            (dead_entries, live)
        };
        for (key, revision, node) in dead_entries {
            // Whichever node gets here first deletes it; the others' revision is stale.
            if objects
                .names
                .delete_expect_revision(&key, Some(revision))
                .await
                .is_ok()
            {
                info!(%key, %node, "Cluster: freed a name held by a dead node");
            }
        }
        // The slots of --max-instances that dead nodes held.
        let (counts, _) = read_counts(&objects.counts).await?;
        for node in counts.keys() {
            if *node == self.node || live.contains_key(node) {
                continue;
            }
            if set_count(&objects.counts, node, None).await? {
                warn!(%node, "Cluster: node declared dead; its instances were released");
                crate::metrics::cluster_dead_node();
            }
        }
        Ok(())
    }
}

fn remote_instance(value: &NameValue) -> RemoteInstance {
    RemoteInstance {
        id: value.id,
        name: value.name.clone(),
        version: value.version.clone(),
        node: value.node.clone(),
        session_label: value.session_label.clone(),
        connected_at: UNIX_EPOCH + Duration::from_millis(value.connected_at_ms),
    }
}

impl Cluster {
    /// Whether this node's members were told of `source` (a member here, an instance of
    /// another node in the view, or one whose departure is still to be told).
    fn knows(&self, session: &Session, source: Uuid) -> bool {
        session.members().iter().any(|m| m.id == source)
            || lock(&self.view).has(&session.cluster_key, source)
            || session
                .held_notices()
                .is_some_and(|held| held.contains_key(&source))
    }

    /// Before a live update from `source` is delivered: waits (bounded) until the watch of
    /// `sova_names` has reported its arrival, which comes through another consumer than
    /// the update and may be behind it, so members hear who joined before its first update.
    /// False if it did not come within `within`.
    pub(super) async fn wait_known(
        &self,
        session: &Session,
        source: Uuid,
        within: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.view_changed.notified();
            if self.knows(session, source) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

/// Follows `sova_names` and `sova_nodes` for as long as the relay runs.
pub(super) async fn watch(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(objects) = cluster.objects() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        // Every key's current value first, then each change.
        let watches = async {
            let names = objects.names.watch_with_history(">").await?;
            let nodes = objects.nodes.watch_with_history(">").await?;
            anyhow::Ok((names, nodes))
        };
        let mut current: Option<HashSet<String>> = Some(HashSet::new());
        let (mut names, mut nodes) = match watches.await {
            Ok(watches) => watches,
            Err(err) => {
                warn!(error = %err, "Cluster: cannot watch the registry yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                // The buckets were recreated (NATS lost them): their revisions start again,
                // which a running watch would skip. Watch afresh; what is gone is forgotten.
                _ = cluster.rewatch.notified() => break,
                entry = names.next() => match entry {
                    Some(Ok(entry)) => {
                        let caught_up = entry.delta == 0;
                        if let Some(seen) = &mut current {
                            seen.insert(entry.key.clone());
                        }
                        cluster.apply(&registry, entry);
                        cluster.view_changed.notify_waiters();
                        if caught_up {
                            if let Some(seen) = current.take() {
                                // Whatever left while this node was not watching.
                                cluster.forget_unseen(&registry, &seen);
                                cluster.watching.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Some(Err(err)) => { warn!(error = %err, "Cluster: registry watch failed; restarting it"); break }
                    None => break,
                },
                entry = nodes.next() => match entry {
                    Some(Ok(entry)) => cluster.apply_heartbeat(entry),
                    Some(Err(err)) => { warn!(error = %err, "Cluster: node watch failed; restarting it"); break }
                    None => break,
                },
            }
        }
    }
}
