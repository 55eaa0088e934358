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

use crate::metrics::{self, Stats};
use crate::registry::Registry;
use crate::{http, transport, Config};

/// First pause after a failed `accept()`; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How often the Prometheus recorder drains histogram samples.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// State every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    pub(crate) stats: Stats,
    pub(crate) started_at: SystemTime,
    pub(crate) started: Instant,
    /// Cancelled when shutdown starts: connections say goodbye and close.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: writers stop at once.
    pub(crate) hard_stop: CancellationToken,
    /// Every connection and writer task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    next_connection_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Shared {
            registry: Arc::new(Registry::new(config.max_instances)),
            config,
            stats: Stats::default(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_connection_id: AtomicU64::new(1),
        })
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
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            shared: Shared::new(config),
        })
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
        spawn_metrics_upkeep(&shared);
        tokio::pin!(shutdown);
        let mut backoff = MIN_ACCEPT_BACKOFF;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
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
        Ok(())
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

fn spawn_metrics_upkeep(shared: &Arc<Shared>) {
    let handle = metrics::prometheus();
    let stop = shared.shutdown.clone();
    shared.tracker.spawn(async move {
        let mut upkeep = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = upkeep.tick() => handle.run_upkeep(),
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
    info!("Relay stopped");
}
