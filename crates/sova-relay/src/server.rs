//! The accept loop, per-connection set-up, and the shutdown order.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use sova_relay_protocol::FrameCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::connection::{self, handshake_limit};
use crate::metrics;
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::Config;

/// First pause after a failed `accept()`; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// State every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// Cancelled when shutdown starts: connections say goodbye and close.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: writers stop at once.
    hard_stop: CancellationToken,
    /// Every connection and writer task, so shutdown can wait for them.
    tracker: TaskTracker,
    next_connection_id: AtomicU64,
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
        let shared = Arc::new(Shared {
            registry: Arc::new(Registry::new(config.max_instances)),
            config,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_connection_id: AtomicU64::new(1),
        });
        Ok(Server { listener, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until `shutdown` resolves, then tells every
    /// instance, flushes, and returns within the configured shutdown timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server { listener, shared } = self;
        tokio::pin!(shutdown);
        let mut backoff = MIN_ACCEPT_BACKOFF;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = MIN_ACCEPT_BACKOFF;
                        accept(&shared, stream, peer);
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

/// Stops every connection: a goodbye to each instance, then a bounded wait.
async fn drain(shared: &Shared) {
    let connections = shared.tracker.len();
    info!(
        connections,
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

fn accept(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("conn", id, %peer);
    let _entered = span.enter();
    info!("New connection from {peer}");
    metrics::connection_opened("tcp");
    configure_socket(&stream, &shared.config);
    let (reader, writer) = stream.into_split();
    let (outbox, receiver) = Outbox::new(shared.config.max_pending_bytes, &shared.hard_stop);
    let inbound = FramedRead::new(
        reader,
        FrameCodec::new(handshake_limit(shared.config.max_message_size)),
    );
    shared.tracker.spawn(
        receiver
            .run_writer(writer, shared.config.write_timeout)
            .instrument(span.clone()),
    );
    shared
        .tracker
        .spawn(connection::serve(shared.clone(), outbox, inbound).instrument(span.clone()));
}

/// No Nagle delay (a musician's edit must not wait for an ACK), and dead peers found by
/// the kernel: keepalive probes on idle links, a bound on unacknowledged data otherwise.
/// Silence alone never ends a connection.
fn configure_socket(stream: &TcpStream, config: &Config) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(error = %err, "Could not set TCP_NODELAY");
    }
    let socket = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(config.tcp_keepalive)
        .with_interval(config.tcp_keepalive_interval)
        .with_retries(config.tcp_keepalive_retries);
    if let Err(err) = socket.set_tcp_keepalive(&keepalive) {
        debug!(error = %err, "Could not enable TCP keepalive");
    }
    #[cfg(target_os = "linux")]
    if let Err(err) = socket.set_tcp_user_timeout(Some(config.tcp_user_timeout)) {
        debug!(error = %err, "Could not set TCP_USER_TIMEOUT");
    }
}
