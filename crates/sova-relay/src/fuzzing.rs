//! Entry points for fuzzers and property tests: a relay without a listener, fed connections
//! over in-memory streams. Not a stable API.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::server::Shared;
use crate::{transport, Config};

/// A relay's state, without a socket: connections are handed to it directly.
pub struct Harness {
    shared: Arc<Shared>,
}

impl Harness {
    /// A relay with this configuration.
    pub fn new(config: Config) -> Self {
        Harness {
            shared: Shared::new(config),
        }
    }

    /// Serves one framed-protocol connection until it ends, exactly as an accepted TCP
    /// connection whose first byte was `0x00`.
    pub async fn serve_connection(
        &self,
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) {
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        transport::serve_framed_halves(self.shared.clone(), reader, writer, deadline).await;
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
