//! The real relay, in process, and a TCP proxy that can hold back or sever connections.

use std::net::SocketAddr;
use std::time::Duration;

use sova_relay::{Config, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A relay on 127.0.0.1 that stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Defaults, with quick shutdown and frequent relay pings.
pub fn relay_config() -> Config {
    Config {
        shutdown_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_millis(50),
        ..Config::default()
    }
}

impl TestServer {
    /// A relay on a free port.
    pub async fn start(config: Config) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// A relay on `addr` (e.g. the port of a relay that was just stopped).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let server = Server::bind(addr, config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Shuts the relay down and waits until it has closed every connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Forwards connections to a relay. Its gate can refuse new connections (accepted, then
/// closed at once), and `sever` cuts the client side of existing links while keeping the
/// relay side open, which leaves the relay with a stale registration until `release`.
pub struct Proxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    sever: watch::Sender<bool>,
    release: watch::Sender<bool>,
    accepted: watch::Receiver<usize>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, open_rx) = watch::channel(true);
        let (sever, sever_rx) = watch::channel(false);
        let (release, release_rx) = watch::channel(false);
        let (accepted_tx, accepted) = watch::channel(0);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted_tx.send_modify(|n| *n += 1);
                if !*open_rx.borrow() {
                    continue;
                }
                let links = (sever_rx.clone(), release_rx.clone());
                tokio::spawn(link(client, upstream, links));
            }
        });
        Self {
            addr,
            open,
            sever,
            release,
            accepted,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    pub fn sever(&self) {
        self.sever.send_replace(true);
    }

    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits until at least `count` connections have been accepted.
    pub async fn wait_accepted(&self, count: usize) {
        let mut accepted = self.accepted.clone();
        tokio::time::timeout(
            crate::scripted::PATIENCE,
            accepted.wait_for(|n| *n >= count),
        )
        .await
        .expect("not enough connections")
        .unwrap();
    }
}

async fn link(
    mut client: TcpStream,
    upstream: SocketAddr,
    (mut sever, mut release): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let Ok(mut relay) = TcpStream::connect(upstream).await else {
        return;
    };
    let made_after_the_cut = *sever.borrow_and_update();
    if made_after_the_cut {
        // Links made after the cut are not cut.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut relay).await;
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut relay) => {}
        _ = async { sever.wait_for(|cut| *cut).await.is_ok() } => {
            drop(client);
            let _ = release.wait_for(|released| *released).await;
        }
    }
}
