//! Cluster mode (`--cluster-nats`): relay nodes that share sessions through NATS JetStream.
//!
//! JetStream orders every session (stream `SOVA_UPDATES`, or one of `--cluster-streams`
//! streams: each node publishes its instances' updates once, and every node with members
//! in the session delivers them from the stream, so all members see one order); KV buckets hold who is registered (`sova_names`, claimed
//! with `create`/compare-and-set), how many (`sova_counts`) and which nodes are alive
//! (`sova_nodes`, expiring). docs/SCALING.md describes the design and its failure modes.

mod feed;
mod kick;
mod names;
mod notices;
mod objects;
mod view;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics::Stats;
use crate::registry::{Member, Registry};
use crate::session::Session;
use crate::Config;

pub(crate) use kick::RemoteKick;
pub(crate) use names::Claim;
use objects::{LayoutMismatch, Objects, UpdateStreams};
pub(crate) use view::RemoteInstance;

/// How long a registration waits for the cluster (a session's feed to catch up, a KV
/// round trip) before it is refused as unavailable.
const REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// Publish acknowledgements being awaited, at most; a publisher waits beyond this.
const MAX_PENDING_ACKS: usize = 16 * 1024;

/// This node's link to the cluster.
pub(crate) struct Cluster {
    pub(crate) node: String,
    /// Random per process: entries of an earlier run under the same node name are stale.
    incarnation: String,
    client: Client,
    js: jetstream::Context,
    expiry: Duration,
    max_instances: usize,
    history_max_bytes: u64,
    history_max_age: Duration,
    storage: stream::StorageType,
    /// Replicas of the streams and buckets this node creates (existing ones stay as they are).
    replicas: usize,
    /// How sessions are spread over update streams.
    layout: UpdateStreams,
    objects: RwLock<Option<Arc<Objects>>>,
    /// Set up, not yet in use (the node name is being checked).
    prepared: Mutex<Option<(Arc<Objects>, u64)>>,
    /// From the update stream's creation time; 0 until the objects are set up.
    epoch: AtomicU64,
    /// When the connection to NATS (re)started, for the grace before judging others dead.
    connected_since: Mutex<Option<Instant>>,
    connected: AtomicBool,
    /// Whether the view follows `sova_names` (registrations wait for it, so that
    /// `current_instances` and presence are complete).
    watching: AtomicBool,
    view: Mutex<view::View>,
    /// Registrations between claiming a slot and joining the registry.
    in_flight: AtomicUsize,
    acks: mpsc::Sender<PendingAck>,
    acks_rx: Mutex<Option<mpsc::Receiver<PendingAck>>>,
    /// Bumped each time the client (re)connects to a NATS server: session feeds restart.
    pub(crate) reconnections: Arc<tokio::sync::watch::Sender<u64>>,
    pub(crate) stats: Arc<Stats>,
    /// `sova_cluster_published_total`, bumped once per update.
    published: metrics::Counter,
    /// Set when this node cannot be part of the cluster (its name is a live node's): the
    /// relay stops with this error.
    fatal: Mutex<Option<String>>,
    failed: CancellationToken,
    /// Told when the buckets were recreated: the watches start again.
    rewatch: tokio::sync::Notify,
    /// Told after each change of `sova_names` applied to the view.
    view_changed: tokio::sync::Notify,
    /// The relay's tasks, so releases started as connections close are waited for.
    tracker: std::sync::OnceLock<tokio_util::task::TaskTracker>,
    /// Name entries whose release failed (NATS away): retried at each heartbeat.
    unreleased: Mutex<Vec<(String, Uuid)>>,
    /// Instances of this node whose registration ended and whose name is being released:
    /// a new registration of the name may take their entry over at once.
    leaving: Mutex<std::collections::HashSet<Uuid>>,
}

/// An acknowledgement to await, with the session the update went to and the instance that
/// sent it (to be told if NATS refuses it); neither for a snapshot.
struct PendingAck {
    session: Weak<Session>,
    sender: Weak<Member>,
    ack: jetstream::context::PublishAckFuture,
}

impl Cluster {
    /// Connects to NATS (in the background when it is not reachable yet: the relay starts
    /// anyway, and serves cluster registrations once NATS answers).
    pub(crate) async fn connect(config: &Config, stats: Arc<Stats>) -> anyhow::Result<Arc<Self>> {
        let node = match &config.node_name {
            Some(name) => name.clone(),
            None => host_name(),
        };
        let reconnections = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let on_event = reconnections.clone();
        let mut options = ConnectOptions::new()
            .event_callback(move |event| {
                let on_event = on_event.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        on_event.send_modify(|n| *n += 1);
                    }
                }
            })
            .name(format!("sova-relay {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(2)))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(5) as u32)).min(2000))
            });
        if let Some(creds) = &config.cluster_nats_creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("cannot read NATS credentials {}", creds.display()))?;
        }
        if let Some(ca) = &config.cluster_nats_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.cluster_nats_cert, &config.cluster_nats_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .cluster_nats
            .iter()
            .map(|url| {
                url.parse()
                    .with_context(|| format!("--cluster-nats: '{url}' is not a NATS URL"))
            })
            .collect::<anyhow::Result<_>>()?;
        let client = options
            .connect(urls)
            .await
            .context("cannot connect to NATS")?;
        let (acks, acks_rx) = mpsc::channel(MAX_PENDING_ACKS);
        info!(node = %node, servers = %config.cluster_nats.join(","), "Cluster mode: joining through NATS");
        Ok(Arc::new(Cluster {
            js: jetstream::new(client.clone()),
            client,
            incarnation: Uuid::new_v4().simple().to_string(),
            node,
            expiry: config.cluster_expiry,
            max_instances: config.max_instances,
            history_max_bytes: config.cluster_history_max_bytes,
            history_max_age: config.history_max_age,
            storage: match config.cluster_storage.as_str() {
                "memory" => stream::StorageType::Memory,
                _ => stream::StorageType::File,
            },
            replicas: usize::from(config.cluster_replicas),
            layout: UpdateStreams::new(config.cluster_streams),
            objects: RwLock::new(None),
            prepared: Mutex::new(None),
            epoch: AtomicU64::new(0),
            connected_since: Mutex::new(None),
            connected: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            view: Mutex::new(view::View::default()),
            in_flight: AtomicUsize::new(0),
            acks,
            acks_rx: Mutex::new(Some(acks_rx)),
            reconnections,
            stats,
            published: crate::metrics::cluster_published(),
            unreleased: Mutex::new(Vec::new()),
            leaving: Mutex::new(std::collections::HashSet::new()),
            fatal: Mutex::new(None),
            rewatch: tokio::sync::Notify::new(),
            view_changed: tokio::sync::Notify::new(),
            tracker: std::sync::OnceLock::new(),
            failed: CancellationToken::new(),
        }))
    }

    /// Runs the node's cluster duties until `shutdown`: keeps the NATS objects, the
    /// heartbeat, the view of the other nodes' instances, and the clean-up of dead nodes.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let _ = self.tracker.set(tracker.clone());
        let acks_rx = lock(&self.acks_rx).take();
        if let Some(acks_rx) = acks_rx {
            tracker.spawn(feed::check_acks(self.clone(), acks_rx, shutdown.clone()));
        }
        tracker.spawn(supervise(self.clone(), registry.clone(), shutdown.clone()));
        tracker.spawn(kick::serve_kicks(
            self.clone(),
            registry.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(view::watch(
            self.clone(),
            registry.clone(),
            shutdown.clone(),
        ));
    }

    /// Why cluster-wide service is not possible now (`None`: it is), for `/readyz`.
    pub(crate) fn unavailable_reason(&self) -> Option<&'static str> {
        if !self.connected.load(Ordering::Relaxed) {
            Some("cluster: NATS unreachable")
        } else if self.epoch.load(Ordering::Relaxed) == 0 {
            Some("cluster: streams and buckets not set up yet (the log says why)")
        } else if !self.watching.load(Ordering::Relaxed) {
            Some("cluster: catching up with the registry")
        } else {
            None
        }
    }

    /// Resolves with the reason if this node cannot take part in the cluster.
    pub(crate) async fn failed(&self) -> String {
        self.failed.cancelled().await;
        lock(&self.fatal).clone().unwrap_or_default()
    }

    /// Whether cluster-wide service is possible now: NATS connected, objects set up.
    pub(crate) fn is_available(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.epoch.load(Ordering::Relaxed) != 0
            && self.watching.load(Ordering::Relaxed)
    }

    /// Where the broadcasts of the session with this key (see `session_key`) go.
    pub(crate) fn updates_subject(&self, cluster_key: &str) -> async_nats::Subject {
        self.layout.subject(cluster_key).into()
    }

    /// Stops the relay with `reason`: this node cannot take part in the cluster.
    fn fail(&self, reason: String) {
        *lock(&self.fatal) = Some(reason);
        self.failed.cancel();
    }

    /// The epoch every node gives the sessions it orders (0: not known yet).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn objects(&self) -> Option<Arc<Objects>> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The cluster as the status page shows it: live nodes and registered instances.
    pub(crate) fn overview(&self) -> Overview {
        let view = lock(&self.view);
        Overview {
            node: self.node.clone(),
            connected: self.is_available(),
            nodes: view.live_nodes.clone(),
            remote_instances: view.remote_count(),
            update_streams: self.layout.count(),
        }
    }
}

/// What `/api/status` and `/metrics` say about the cluster.
pub(crate) struct Overview {
    pub(crate) node: String,
    pub(crate) connected: bool,
    pub(crate) nodes: Vec<String>,
    pub(crate) remote_instances: usize,
    pub(crate) update_streams: u8,
}

/// The part of a session's subject that names it: a hash of the token, never the token.
pub(crate) fn session_key(token: Option<&str>) -> String {
    match token {
        None => "default".to_owned(),
        Some(token) => {
            let digest = Sha256::digest(format!("sova-session:{token}").as_bytes());
            hex(&digest[..8])
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps the connection's state, the NATS objects and the heartbeat, and sweeps dead nodes.
async fn supervise(cluster: Arc<Cluster>, registry: Arc<Registry>, shutdown: CancellationToken) {
    let sweep_every = (cluster.expiry / 10).max(Duration::from_millis(250));
    let beat_every = cluster.expiry / 4;
    let mut tick = tokio::time::interval(sweep_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    let mut failing = Failing::default();
    let mut history_unchecked = false;
    let mut reconnected = cluster.reconnections.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            // A (re)connection is acted on at once, not at the next tick.
            _ = reconnected.changed() => {}
        }
        let connected = cluster.nats_connected();
        let was = cluster.connected.swap(connected, Ordering::Relaxed);
        if connected != was {
            if connected {
                info!("Cluster: connected to NATS");
                *lock(&cluster.connected_since) = Some(Instant::now());
                last_beat = None;
                history_unchecked = cluster.objects().is_some();
            } else {
                warn!("Cluster: NATS unreachable; serving this node's instances only");
                *lock(&cluster.connected_since) = None;
            }
        }
        crate::metrics::cluster_connected(cluster.is_available());
        let overview = cluster.overview();
        crate::metrics::set_cluster_population(overview.nodes.len(), overview.remote_instances);
        if !connected {
            continue;
        }
        // Right after a reconnection JetStream may not answer yet: checked until it does.
        if history_unchecked {
            match cluster.check_history_survived(&registry).await {
                Ok(()) => history_unchecked = false,
                Err(err) if err.is::<LayoutMismatch>() => return cluster.fail(err.to_string()),
                Err(err) => failing.report("checking the streams after reconnecting", &err),
            }
        }
        if cluster.objects().is_none() {
            match cluster.set_up().await {
                Ok(()) if !cluster.name_is_free().await => {
                    return cluster.fail(format!(
                        "node name '{}' is held by a live node of the cluster: give each node its own --node-name",
                        cluster.node
                    ));
                }
                Ok(()) => {
                    cluster.publish_objects();
                    info!(
                        epoch = cluster.epoch(),
                        "Cluster: streams and buckets ready"
                    );
                }
                Err(err) if err.is::<LayoutMismatch>() => return cluster.fail(err.to_string()),
                Err(err) => {
                    failing.report("setting up the streams and buckets", &err);
                    continue;
                }
            }
        }
        if last_beat.is_none_or(|at| at.elapsed() >= beat_every) {
            match cluster.heartbeat(&registry).await {
                Ok(()) => last_beat = Some(Instant::now()),
                Err(err) => failing.report("heartbeat", &err),
            }
        }
        match cluster.sweep_dead_nodes(&registry).await {
            Ok(()) => failing.clear(),
            Err(err) => failing.report("checking for dead nodes", &err),
        }
    }
    cluster.leave().await;
}

impl Cluster {
    /// Says this node is alive, and corrects its own instance count.
    async fn heartbeat(&self, registry: &Registry) -> anyhow::Result<()> {
        let objects = self.objects().context("not set up")?;
        let beat = serde_json::json!({
            "incarnation": self.incarnation,
            "at_ms": crate::registry::now_ms(),
        });
        objects
            .nodes
            .put(&self.node, serde_json::to_vec(&beat)?.into())
            .await?;
        let local = registry.instance_count() + self.in_flight.load(Ordering::Relaxed);
        names::set_count(&objects.counts, &self.node, Some(local)).await?;
        let retry: Vec<(String, Uuid)> = std::mem::take(&mut *lock(&self.unreleased));
        for (key, id) in retry {
            self.release(key, id).await;
        }
        Ok(())
    }

    /// On shutdown: says this node is gone, so the others need not wait for the expiry.
    async fn leave(&self) {
        let Some(objects) = self.objects() else {
            return;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = objects.nodes.delete(&self.node).await;
            let _ = self.client.flush().await;
        })
        .await;
    }
}

/// Says that a cluster duty fails once, not at every tick, and when it works again.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
}

impl Failing {
    fn report(&mut self, what: &str, err: &anyhow::Error) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(error = %format!("{err:#}"), "Cluster: {what} failed; retrying");
        }
    }

    fn clear(&mut self) {
        if let Some(since) = self.since.take() {
            info!(after = ?since.elapsed(), "Cluster: NATS requests work again");
        }
    }
}

/// The host's name, for a node started without `--node-name`.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '-',
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "sova-relay".to_owned()
    } else {
        name
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
