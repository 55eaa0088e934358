//! What a new connection speaks, told by its first byte before anything is consumed: `0x00`
//! starts a frame of the raw TCP protocol (every valid length prefix is under 16 MiB), an
//! ASCII letter starts an HTTP request (status page, API, WebSocket upgrade), `0x16` starts
//! a TLS handshake, inside which the same question is asked again.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{SockRef, TcpKeepalive};
use sova_relay_protocol::FrameCodec;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn, Instrument};

use crate::access::Refusal;
use crate::audit::AuditEvent;
use crate::connection::{self, handshake_limit, Peer};
use crate::outbox::{Outbox, StreamSink};
use crate::server::Shared;
use crate::{http, Config};

/// Initial read buffer of a connection: enough for typical updates, small enough that
/// thousands of idle instances cost little (the codec grows it for larger frames).
const READ_BUFFER: usize = 1024;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Admits, identifies and serves one accepted connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    router: Option<axum::Router>,
    stream: TcpStream,
    addr: SocketAddr,
) {
    let _permit = match shared.gate.admit(addr.ip()) {
        Ok(permit) => permit,
        Err(refusal) => return refuse(&shared, addr, refusal),
    };
    configure_socket(&stream, &shared.config);
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let Some(first) = first_byte(&shared, &stream, deadline).await else {
        return;
    };
    match (first, &shared.tls, router) {
        (TLS_HANDSHAKE, Some(tls), router) => {
            let acceptor = tls.acceptor();
            let accepted = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => accepted,
            };
            match accepted {
                // Boxed, like HTTP below: a rare, large state that would otherwise size
                // every idle instance's task.
                Ok(Ok(stream)) => Box::pin(serve_tls(shared, router, stream, addr, deadline)).await,
                Ok(Err(err)) => tls_failed(&shared, addr, &err.to_string()),
                Err(_) => tls_failed(&shared, addr, "handshake timeout"),
            }
        }
        (byte, _, Some(router)) if byte.is_ascii_uppercase() => {
            Box::pin(http::serve(
                shared,
                router,
                stream,
                Peer::plain(addr, "websocket"),
            ))
            .await;
        }
        _ => {
            info!("New connection from {addr}");
            let (reader, writer) = stream.into_split();
            let peer = Peer::plain(addr, "tcp");
            serve_framed_halves(shared, peer, reader, writer, deadline).await;
        }
    }
}

/// Inside TLS: HTTP (`https`, `wss`) or frames (`tls`).
async fn serve_tls(
    shared: Arc<Shared>,
    router: Option<axum::Router>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
    deadline: Instant,
) {
    let mut stream = BufReader::new(stream);
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        first = tokio::time::timeout_at(deadline, stream.fill_buf()) => first,
    };
    let byte = match first {
        Ok(Ok([byte, ..])) => *byte,
        Ok(Ok([])) => return debug!("TLS connection closed before sending anything"),
        Ok(Err(err)) => return debug!(error = %err, "TLS connection failed before any byte"),
        Err(_) => return debug!("TLS connection sent nothing within the handshake timeout"),
    };
    match router {
        Some(router) if byte.is_ascii_uppercase() => {
            http::serve(shared, router, stream, Peer::secure(addr, "wss")).await;
        }
        _ => {
            info!("New TLS connection from {addr}");
            let (reader, writer) = tokio::io::split(stream);
            let peer = Peer::secure(addr, "tls");
            serve_framed_halves(shared, peer, reader, writer, deadline).await;
        }
    }
}

/// The raw protocol over any pair of byte-stream halves.
pub(crate) async fn serve_framed_halves(
    shared: Arc<Shared>,
    peer: Peer,
    reader: impl AsyncRead + Send + Unpin + 'static,
    writer: impl AsyncWrite + Send + Unpin + 'static,
    deadline: Instant,
) {
    let _open = shared.stats.connection_opened(peer.transport);
    shared.audit.record(
        AuditEvent::new("connect")
            .peer(peer.addr.ip())
            .transport(peer.transport),
    );
    let (outbox, receiver) = Outbox::new(shared.config.max_pending_bytes, &shared.hard_stop);
    shared.tracker.spawn(
        receiver
            .run_writer(StreamSink(writer), shared.config.write_timeout)
            .in_current_span(),
    );
    let codec = FrameCodec::new(handshake_limit(shared.config.max_message_size));
    let inbound = FramedRead::with_capacity(reader, codec, READ_BUFFER);
    connection::serve(shared.clone(), outbox, peer, deadline, inbound).await;
}

/// Waits for the first byte without consuming it; `None` when there is nothing to serve.
async fn first_byte(shared: &Shared, stream: &TcpStream, deadline: Instant) -> Option<u8> {
    let mut byte = [0u8; 1];
    let peeked = tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut byte)) => peeked,
    };
    match peeked {
        Ok(Ok(1)) => Some(byte[0]),
        Ok(Ok(_)) => {
            debug!("Closed by the peer before sending anything");
            None
        }
        Ok(Err(err)) => {
            debug!(error = %err, "Closed: read failed before any byte arrived");
            None
        }
        Err(_) => {
            debug!("Closed: nothing received within the handshake timeout");
            None
        }
    }
}

fn refuse(shared: &Shared, addr: SocketAddr, refusal: Refusal) {
    debug!(peer = %addr, reason = refusal.label(), "Connection refused");
    shared.stats.connection_refused(refusal.label());
    let event = match refusal {
        Refusal::Denied => AuditEvent::new("acl_denied"),
        _ => AuditEvent::new("connection_refused").reason(refusal.label()),
    };
    shared.audit.record(event.peer(addr.ip()));
}

fn tls_failed(shared: &Shared, addr: SocketAddr, reason: &str) {
    warn!(peer = %addr, reason, "TLS handshake failed");
    shared.stats.tls_failed();
    let event = AuditEvent::new("tls_failed").peer(addr.ip()).reason(reason);
    shared.audit.record(event);
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
