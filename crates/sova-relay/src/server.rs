//! The accept loop, the shared state of a relay, and the shutdown order.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::access::Gatekeeper;
use crate::audit::{Audit, AuditEvent};
use crate::cluster::Cluster;
use crate::metrics::{self, Stats};
use crate::reason::DisconnectReason;
use crate::registry::Registry;
use crate::session::HistoryLimits;
use crate::tls::Tls;
use crate::tokens::{TokenList, Tokens};
use crate::{http, transport, Config};

/// First pause after a failed `accept()`; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How often the Prometheus recorder drains histogram samples and the per-IP maps forget
/// what has expired.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// State every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// Who may connect: IP rules, connection caps, lockouts.
    pub(crate) gate: Arc<Gatekeeper>,
    /// Present when a certificate is configured.
    pub(crate) tls: Option<Tls>,
    /// Present when `--tokens-file` is set.
    pub(crate) tokens: Option<Tokens>,
    pub(crate) audit: Audit,
    pub(crate) stats: Arc<Stats>,
    pub(crate) started_at: SystemTime,
    pub(crate) started: Instant,
    /// Cancelled when shutdown starts: connections say goodbye and close.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: writers stop at once.
    pub(crate) hard_stop: CancellationToken,
    /// Every connection and writer task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// The clock of every instance's rate limiter. Made once: making one probes the CPU
    /// (CPUID), which traps to the hypervisor in a VM, and cost each registration ≈ 15 µs.
    pub(crate) rate_clock: governor::clock::QuantaClock,
    next_connection_id: AtomicU64,
}

impl Shared {
    /// Loads what the configuration names (certificate, tokens, audit log).
    pub(crate) fn new(config: Config, cluster: Option<Arc<Cluster>>) -> anyhow::Result<Arc<Self>> {
        Self::with_stats(config, cluster, Arc::new(Stats::new()))
    }

    fn with_stats(
        config: Config,
        cluster: Option<Arc<Cluster>>,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Arc<Self>> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        let tokens = config
            .tokens_file
            .as_deref()
            .map(Tokens::load)
            .transpose()?;
        Ok(Arc::new(Shared {
            registry: Arc::new(Registry::new(
                config.max_instances,
                HistoryLimits {
                    max_updates: config.history_max_updates,
                    max_bytes: config.history_max_bytes,
                    max_age: config.history_max_age,
                },
                cluster,
            )),
            gate: Arc::new(Gatekeeper::new(&config)),
            tls,
            tokens,
            audit: Audit::open(config.audit_log.as_deref())?,
            config,
            stats,
            started_at: SystemTime::now(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            rate_clock: governor::clock::QuantaClock::default(),
            next_connection_id: AtomicU64::new(1),
        }))
    }

    /// Re-reads the certificate and the tokens file and reopens the audit log. Whatever
    /// fails keeps its previous state; the errors are returned together.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        if let Some(tokens) = &self.tokens {
            match tokens.reload() {
                Ok(list) => {
                    let revoked = self.revoke_invalid_tokens(&list);
                    info!(tokens = list.len(), revoked, "Session tokens reloaded");
                    self.audit
                        .record(AuditEvent::new("tokens_reloaded").reason(format!(
                            "{} tokens, {revoked} instances disconnected",
                            list.len()
                        )));
                }
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        self.audit.reopen();
        match failures.is_empty() {
            true => Ok(()),
            false => anyhow::bail!("{}", failures.join("; ")),
        }
    }

    /// Disconnects every instance whose session token is no longer allowed.
    fn revoke_invalid_tokens(&self, tokens: &TokenList) -> usize {
        let mut revoked = 0;
        for session in self.registry.sessions() {
            if tokens.role_of(session.token.as_deref()).is_some() {
                continue;
            }
            for member in session.members.iter() {
                member.outbox.request_close(DisconnectReason::TokenRevoked);
                revoked += 1;
            }
        }
        revoked
    }
}

/// A handle for operating a running relay (reload on SIGHUP).
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// Re-reads the TLS certificate and the tokens file (instances whose token was removed
    /// are disconnected) and reopens the audit log. On error, what failed keeps its
    /// previous state.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.shared.reload()
    }
}

/// A bound relay, ready to run.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listening socket; nothing is accepted until [`Server::run`].
    pub async fn bind(addr: SocketAddr, config: Config) -> io::Result<Server> {
        let stats = Arc::new(Stats::new());
        let cluster = match config.cluster_nats.is_empty() {
            true => None,
            false => Some(
                Cluster::connect(&config, stats.clone())
                    .await
                    .map_err(|err| io::Error::other(format!("{err:#}")))?,
            ),
        };
        let shared = Shared::with_stats(config, cluster, stats)
            .map_err(|err| io::Error::other(format!("{err:#}")))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
        Ok(Server { listener, shared })
    }

    /// A handle to reload the relay's files while it runs.
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until `shutdown` resolves, then tells every
    /// instance, flushes, and returns within the configured shutdown timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server { listener, shared } = self;
        let router = shared.config.http.then(|| http::router(shared.clone()));
        spawn_upkeep(&shared);
        if let Some(cluster) = &shared.registry.cluster {
            cluster.spawn(&shared.registry, &shared.tracker, &shared.shutdown);
        }
        tokio::pin!(shutdown);
        let cluster = shared.registry.cluster.clone();
        let cluster_failed = async {
            match &cluster {
                Some(cluster) => cluster.failed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cluster_failed);
        let mut failure = None;
        let mut backoff = MIN_ACCEPT_BACKOFF;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                reason = &mut cluster_failed => {
                    failure = Some(reason);
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = MIN_ACCEPT_BACKOFF;
                        spawn_connection(&shared, &router, stream, peer);
                    }
                    Err(err) => {
                        metrics::accept_failed();
                        warn!(error = %err, retry_in = ?backoff, "Accepting a connection failed");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    }
                },
            }
        }
        drop(listener);
        drain(&shared).await;
        match failure {
            Some(reason) => anyhow::bail!("{reason}"),
            None => Ok(()),
        }
    }
}

fn spawn_connection(
    shared: &Arc<Shared>,
    router: &Option<axum::Router>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", id, %peer);
    let task = transport::serve(shared.clone(), router.clone(), stream, peer);
    shared.tracker.spawn(task.instrument(span));
}

fn spawn_upkeep(shared: &Arc<Shared>) {
    let handle = metrics::prometheus();
    let tracker = shared.tracker.clone();
    let shared = shared.clone();
    tracker.spawn(async move {
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = upkeep.tick() => {
                    handle.run_upkeep();
                    shared.gate.forget_stale();
                }
            }
        }
    });
}

/// Stops every connection: a goodbye to each instance, then a bounded wait.
async fn drain(shared: &Shared) {
    info!(
        connections = Stats::get(&shared.stats.open_connections),
        instances = shared.registry.instance_count(),
        "Shutting down: telling instances, waiting up to {:?}",
        shared.config.shutdown_timeout
    );
    shared.shutdown.cancel();
    shared.tracker.close();
    if tokio::time::timeout(shared.config.shutdown_timeout, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = shared.tracker.len(),
            "Shutdown timeout reached; closing the remaining connections"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tracker.wait()).await;
    }
    shared.audit.close();
    info!("Relay stopped");
}
