//! The NATS objects every node shares: created (or found) at start and after each
//! reconnection, checked for a lost history, and the subjects a session's broadcasts and
//! snapshots go to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{kv, stream};
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
    pub(super) updates: stream::Stream,
    pub(super) snapshots: stream::Stream,
    pub(super) nodes: kv::Store,
    pub(super) names: kv::Store,
    pub(super) counts: kv::Store,
}

/// Where a session's broadcasts go (`cluster_key`: see `session_key`).
pub(crate) fn updates_subject(cluster_key: &str) -> String {
    format!("{UPDATES_PREFIX}.{cluster_key}")
}

/// Where a session's snapshots go.
pub(super) fn snapshots_subject(cluster_key: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}.{cluster_key}")
}

impl Cluster {
    /// Creates (or finds) the streams and buckets every node shares.
    pub(super) async fn set_up(&self) -> anyhow::Result<()> {
        // Every session's broadcasts, bounded in bytes; the latest snapshot of each.
        let updates = self
            .js
            .get_or_create_stream(stream::Config {
                max_bytes: i64::try_from(self.history_max_bytes).unwrap_or(i64::MAX),
                ..self.history_stream(UPDATES_STREAM, UPDATES_PREFIX)
            })
            .await
            .context("stream SOVA_UPDATES")?;
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
        let created = updates.cached_info().created.unix_timestamp_nanos();
        // Never 0 (0 means "not known yet").
        let epoch = u64::try_from(created.rem_euclid(i128::from(u64::MAX)))
            .unwrap_or(1)
            .max(1);
        *lock(&self.prepared) = Some((
            Arc::new(Objects {
                updates,
                snapshots,
                nodes,
                names,
                counts,
            }),
            epoch,
        ));
        Ok(())
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
