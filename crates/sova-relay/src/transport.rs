//! What a new connection speaks, told by its first byte before anything is read: `0x00`
//! starts a frame of the raw TCP protocol (every valid length prefix is under 16 MiB); an
//! ASCII letter starts an HTTP request (status page, API, WebSocket upgrade).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{SockRef, TcpKeepalive};
use sova_relay_protocol::FrameCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, Instrument};

use crate::connection::{self, handshake_limit};
use crate::outbox::{Outbox, StreamSink};
use crate::server::Shared;
use crate::{http, Config};

/// Identifies the protocol and serves the connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    router: Option<axum::Router>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    configure_socket(&stream, &shared.config);
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        first = tokio::time::timeout_at(deadline, first_byte(&stream)) => first,
    };
    match first {
        Err(_) => debug!("Closed: nothing received within the handshake timeout"),
        Ok(Err(err)) => debug!(error = %err, "Closed: read failed before any byte arrived"),
        Ok(Ok(None)) => debug!("Closed by the peer before sending anything"),
        Ok(Ok(Some(byte))) => match router {
            Some(router) if byte.is_ascii_uppercase() => {
                http::serve(shared, router, stream).await;
            }
            _ => serve_framed(shared, stream, peer, deadline).await,
        },
    }
}

/// The raw protocol: length-prefixed MessagePack frames.
async fn serve_framed(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, deadline: Instant) {
    info!("New connection from {peer}");
    let (reader, writer) = stream.into_split();
    serve_framed_halves(shared, reader, writer, deadline).await;
}

/// The raw protocol over any pair of byte-stream halves.
pub(crate) async fn serve_framed_halves(
    shared: Arc<Shared>,
    reader: impl AsyncRead + Send + Unpin + 'static,
    writer: impl AsyncWrite + Send + Unpin + 'static,
    deadline: Instant,
) {
    let _open = shared.stats.connection_opened("tcp");
    let (outbox, receiver) = Outbox::new(shared.config.max_pending_bytes, &shared.hard_stop);
    shared.tracker.spawn(
        receiver
            .run_writer(StreamSink(writer), shared.config.write_timeout)
            .in_current_span(),
    );
    let codec = FrameCodec::new(handshake_limit(shared.config.max_message_size));
    let inbound = FramedRead::new(reader, codec);
    connection::serve(shared.clone(), outbox, "tcp", deadline, inbound).await;
}

/// Waits for the first byte without consuming it; `None` when the peer closed first.
async fn first_byte(stream: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let n = stream.peek(&mut byte).await?;
    Ok((n == 1).then_some(byte[0]))
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
