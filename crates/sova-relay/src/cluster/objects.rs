//! The NATS objects every node shares: created (or found) at start and after each
//! reconnection, checked for a lost history, and the streams and subjects a session's
//! broadcasts and snapshots go to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{kv, stream};
use futures_util::TryStreamExt;
use tracing::warn;

use super::{lock, Cluster};
use crate::reason::DisconnectReason;
use crate::registry::Registry;

const UPDATES_STREAM: &str = "SOVA_UPDATES";
const SNAPSHOTS_STREAM: &str = "SOVA_SNAPSHOTS";
const UPDATES_PREFIX: &str = "sova.u";
const SNAPSHOTS_PREFIX: &str = "sova.snap";
const NODES_BUCKET: &str = "sova_nodes";
const NAMES_BUCKET: &str = "sova_names";
const COUNTS_BUCKET: &str = "sova_counts";
/// A key of `sova_names` that is no instance (it has no `.`).
const NAMES_MARKER: &str = "bucket";

/// The NATS objects, once created or found.
pub(super) struct Objects {
    /// One per `UpdateStreams` shard, in shard order.
    updates: Vec<stream::Stream>,
    layout: UpdateStreams,
    pub(super) snapshots: stream::Stream,
    pub(super) nodes: kv::Store,
    pub(super) names: kv::Store,
    pub(super) counts: kv::Store,
}

impl Objects {
    /// The stream that orders a session's broadcasts.
    pub(super) fn updates(&self, cluster_key: &str) -> &stream::Stream {
        &self.updates[self.layout.shard(cluster_key)]
    }
}

/// How sessions are spread over update streams (`--cluster-streams`): one stream
/// `SOVA_UPDATES` with subjects `sova.u.<key>`, or N streams `SOVA_UPDATES_<i>_OF_<N>` with
/// subjects `sova.u.<i>.<key>`, a session's shard `i` taken from its key. A session's order
/// needs only its own subject, so spreading keeps every guarantee; but every node must
/// spread the same way, which `check_layout` makes sure of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpdateStreams {
    count: u8,
}

impl UpdateStreams {
    pub(crate) fn new(count: u8) -> Self {
        UpdateStreams {
            count: count.max(1),
        }
    }

    /// How many streams.
    pub(crate) fn count(&self) -> u8 {
        self.count
    }

    /// Which stream orders the session with this key (see `session_key`: 16 hex digits,
    /// or `default`, which goes to the first).
    fn shard(&self, cluster_key: &str) -> usize {
        let hash = cluster_key
            .get(..8)
            .and_then(|prefix| u32::from_str_radix(prefix, 16).ok())
            .unwrap_or(0);
        hash as usize % usize::from(self.count)
    }

    /// Where a session's broadcasts go.
    pub(crate) fn subject(&self, cluster_key: &str) -> String {
        if self.count == 1 {
            format!("{UPDATES_PREFIX}.{cluster_key}")
        } else {
            format!("{UPDATES_PREFIX}.{}.{cluster_key}", self.shard(cluster_key))
        }
    }

    /// The stream of shard `i`, and the prefix of its subjects.
    fn stream(&self, i: u8) -> (String, String) {
        if self.count == 1 {
            (UPDATES_STREAM.to_owned(), UPDATES_PREFIX.to_owned())
        } else {
            (
                format!("{UPDATES_STREAM}_{i}_OF_{}", self.count),
                format!("{UPDATES_PREFIX}.{i}"),
            )
        }
    }
}

/// The cluster's update streams were made by nodes with another `--cluster-streams`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cluster's update streams ({found}) were made by nodes with another \
     --cluster-streams than this node's {count}: give every node the same number (to change \
     it, stop every node and delete those streams, which drops the sessions' history)"
)]
pub(super) struct LayoutMismatch {
    found: String,
    count: u8,
}

/// Where a session's snapshots go.
pub(super) fn snapshots_subject(cluster_key: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}.{cluster_key}")
}

impl Cluster {
    /// Creates (or finds) the streams and buckets every node shares.
    pub(super) async fn set_up(&self) -> anyhow::Result<()> {
        self.check_layout().await?;
        // Every session's broadcasts, bounded in bytes; the latest snapshot of each.
        let per_stream = self.history_max_bytes / u64::from(self.layout.count);
        let mut updates = Vec::with_capacity(usize::from(self.layout.count));
        for i in 0..self.layout.count {
            let (name, prefix) = self.layout.stream(i);
            let stream = self
                .js
                .get_or_create_stream(stream::Config {
                    max_bytes: i64::try_from(per_stream).unwrap_or(i64::MAX),
                    ..self.history_stream(&name, &prefix)
                })
                .await
                .with_context(|| format!("stream {name}"))?;
            updates.push(stream);
        }
        let snapshots = self
            .js
            .get_or_create_stream(stream::Config {
                max_messages_per_subject: 1,
                ..self.history_stream(SNAPSHOTS_STREAM, SNAPSHOTS_PREFIX)
            })
            .await
            .context("stream SOVA_SNAPSHOTS")?;
        let nodes = self
            .bucket(NODES_BUCKET, self.expiry)
            .await
            .context("bucket sova_nodes")?;
        let names = self
            .bucket(NAMES_BUCKET, Duration::ZERO)
            .await
            .context("bucket sova_names")?;
        let counts = self
            .bucket(COUNTS_BUCKET, Duration::ZERO)
            .await
            .context("bucket sova_counts")?;
        // The watch knows it has every current entry when one arrives with nothing pending
        // after it: with this marker, that moment comes even when no instance is registered.
        match names.create(NAMES_MARKER, "{}".into()).await {
            Ok(_) => {}
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(err).context("bucket sova_names"),
        }
        // A lost stream is recreated later than all the others: the epoch changes.
        let created = updates
            .iter()
            .map(|stream| stream.cached_info().created.unix_timestamp_nanos())
            .max()
            .unwrap_or(1);
        // Never 0 (0 means "not known yet").
        let epoch = u64::try_from(created.rem_euclid(i128::from(u64::MAX)))
            .unwrap_or(1)
            .max(1);
        *lock(&self.prepared) = Some((
            Arc::new(Objects {
                updates,
                layout: self.layout,
                snapshots,
                nodes,
                names,
                counts,
            }),
            epoch,
        ));
        Ok(())
    }

    /// Fails with `LayoutMismatch` if NATS holds update streams that this node's
    /// `--cluster-streams` would not make: its sessions would be ordered apart from the
    /// other nodes' (a race of two first nodes is caught by NATS: their subjects overlap).
    async fn check_layout(&self) -> anyhow::Result<()> {
        let names: Vec<String> = self
            .js
            .stream_names()
            .try_collect()
            .await
            .context("listing the streams")?;
        let ours: Vec<String> = (0..self.layout.count)
            .map(|i| self.layout.stream(i).0)
            .collect();
        let mut foreign: Vec<&String> = names
            .iter()
            .filter(|name| name.starts_with(UPDATES_STREAM) && !ours.contains(name))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        Err(LayoutMismatch {
            found: foreign
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            count: self.layout.count,
        }
        .into())
    }

    /// Whether no other live node uses this node's name. A heartbeat under the name that
    /// is recent may be this node's own previous run (a crash, a quick restart): only one
    /// that is renewed while we watch is a live twin.
    pub(super) async fn name_is_free(&self) -> bool {
        let Some((objects, _)) = lock(&self.prepared).clone() else {
            return true;
        };
        let Ok(Some(first)) = objects.nodes.entry(self.node.clone()).await else {
            return true;
        };
        if first.operation != kv::Operation::Put {
            return true;
        }
        let beat_every = self.expiry / 4;
        tokio::time::sleep(beat_every + Duration::from_millis(500)).await;
        match objects.nodes.entry(self.node.clone()).await {
            Ok(Some(again)) => {
                again.operation != kv::Operation::Put || again.revision == first.revision
            }
            _ => true,
        }
    }

    /// After NATS came back: if it lost the update stream (memory storage, a wiped store),
    /// the stream is recreated with a new epoch and every `seq` this node handed out means
    /// nothing any more, so its instances are closed and reconnect from scratch.
    pub(super) async fn check_history_survived(&self, registry: &Registry) -> anyhow::Result<()> {
        let before = self.epoch();
        self.set_up().await?;
        self.publish_objects();
        if self.epoch() != before {
            self.rewatch.notify_one();
            let closed = registry.close_all(&DisconnectReason::Rejected(
                "The cluster lost its history: reconnect".to_owned(),
            ));
            warn!(
                closed,
                "Cluster: NATS lost the update stream; this node's instances must reconnect"
            );
        }
        Ok(())
    }

    /// Makes the objects prepared by `set_up` the ones in use: cluster service starts.
    pub(super) fn publish_objects(&self) {
        if let Some((objects, epoch)) = lock(&self.prepared).take() {
            *self.objects.write().unwrap_or_else(|p| p.into_inner()) = Some(objects);
            self.epoch.store(epoch, Ordering::Relaxed);
        }
    }

    /// A stream of session history under `prefix`, aged out with `--history-max-age`.
    fn history_stream(&self, name: &str, prefix: &str) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            max_age: self.history_max_age,
            storage: self.storage,
            num_replicas: self.replicas,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// A KV bucket, created as `create_key_value` would: its account-info request does
    /// not parse against nats-server 2.9 (Debian's), so the bucket's stream is made here.
    async fn bucket(&self, name: &str, max_age: Duration) -> anyhow::Result<kv::Store> {
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{name}"),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: self.storage,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        Ok(self.js.get_key_value(name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::UpdateStreams;
    use crate::cluster::session_key;

    #[test]
    fn one_stream_keeps_the_original_names_and_subjects() {
        let one = UpdateStreams::new(1);
        let key = session_key(Some("jam"));
        assert_eq!(one.subject(&key), format!("sova.u.{key}"));
        assert_eq!(
            one.stream(0),
            ("SOVA_UPDATES".to_owned(), "sova.u".to_owned())
        );
    }

    #[test]
    fn sessions_spread_over_every_stream_each_within_its_own_subjects() {
        let four = UpdateStreams::new(4);
        let mut used = [0usize; 4];
        for n in 0..64 {
            let key = session_key(Some(&format!("session-{n}")));
            let shard = four.shard(&key);
            used[shard] += 1;
            let (_, prefix) = four.stream(shard as u8);
            assert_eq!(four.subject(&key), format!("{prefix}.{key}"));
        }
        assert!(used.iter().all(|&n| n > 0), "{used:?}");
        assert_eq!(four.shard(&session_key(None)), 0, "the default session");
        assert_eq!(
            four.stream(3),
            ("SOVA_UPDATES_3_OF_4".to_owned(), "sova.u.3".to_owned())
        );
    }
}
