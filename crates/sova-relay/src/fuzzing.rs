//! Entry points for fuzzers and property tests: a relay without a listener, fed connections
//! over in-memory streams. Not a stable API.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::connection::Peer;
use crate::server::Shared;
use crate::{transport, Config};

/// A relay's state, without a socket: connections are handed to it directly.
pub struct Harness {
    shared: Arc<Shared>,
}

impl Harness {
    /// A relay with this configuration.
    ///
    /// # Panics
    /// If the configuration names a certificate, tokens file or audit log that cannot be
    /// loaded: a harness is set up by test code, where that is a bug in the test.
    pub fn new(config: Config) -> Self {
        let shared = Shared::new(config, None).unwrap_or_else(|err| panic!("harness: {err:#}"));
        Harness { shared }
    }

    /// Serves one framed-protocol connection until it ends, exactly as an accepted TCP
    /// connection whose first byte was `0x00`.
    pub async fn serve_connection(
        &self,
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) {
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        let peer = Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            transport: "tcp",
            secure: false,
        };
        transport::serve_framed_halves(self.shared.clone(), peer, reader, writer, deadline).await;
    }

    /// Registered instances right now.
    pub fn instance_count(&self) -> usize {
        self.shared.registry.instance_count()
    }

    /// Stops every connection: what a shutdown does, without waiting.
    pub fn shut_down(&self) {
        self.shared.shutdown.cancel();
        self.shared.hard_stop.cancel();
    }
}
