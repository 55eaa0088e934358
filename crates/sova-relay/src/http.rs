//! HTTP on the relay's port: status page, health checks, Prometheus metrics, the JSON API,
//! the admin API, and the WebSocket transport.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::audit::AuditEvent;
use crate::cluster::{Cluster, RemoteKick};
use crate::connection::Peer;
use crate::reason::DisconnectReason;
use crate::server::Shared;
use crate::{status, websocket};

/// Largest request head (request line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;

/// Every route of the relay's HTTP surface.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/status.js", get(status::script))
        .route("/status.css", get(status::stylesheet))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status::api_status))
        .route("/api/sessions", get(status::api_sessions))
        .route("/api/instances", get(status::api_instances))
        .route("/api/instances/{id}", delete(kick))
        .route("/ws", get(websocket::upgrade))
        .with_state(shared)
}

/// Serves HTTP/1.1 on one connection, with bounded headers and a header-read timeout
/// (slow clients cannot hold the connection open by trickling a request). `peer` is what
/// a WebSocket upgrade on this connection will be.
pub(crate) async fn serve<I>(shared: Arc<Shared>, router: Router, stream: I, peer: Peer)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    debug!("New HTTP connection");
    let _open = shared
        .stats
        .connection_opened(if peer.secure { "https" } else { "http" });
    let router = router.layer(Extension(peer));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = outcome {
        debug!(error = %err, "HTTP connection ended with an error");
    }
}

/// 200 while the relay serves; 503 once it is shutting down.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// 200 while the relay can take a new instance; 503 while shutting down or full.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if let Some(cluster) = &shared.registry.cluster {
        if let Some(reason) = cluster.unavailable_reason() {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
        }
    } else if shared.registry.instance_count() >= shared.config.max_instances {
        return (StatusCode::SERVICE_UNAVAILABLE, "full\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Prometheus text exposition.
async fn metrics() -> Response {
    let body = crate::metrics::prometheus().render();
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `DELETE /api/instances/{id}`: the instance is told `Kicked by operator` and closed; its
/// session hears `InstanceDisconnected`. Needs `Authorization: Bearer <admin token>`.
async fn kick(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(admin_token) = shared.config.admin_token.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !bearer_matches(&headers, admin_token) {
        warn!("Admin request refused: missing or wrong bearer token");
        let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
        return (
            StatusCode::UNAUTHORIZED,
            challenge,
            error_json("admin token required"),
        )
            .into_response();
    }
    let Ok(id) = Uuid::parse_str(&id) else {
        return (StatusCode::BAD_REQUEST, error_json("not an instance id")).into_response();
    };
    let Some(member) = shared.registry.find(id) else {
        if let Some(cluster) = &shared.registry.cluster {
            return kick_elsewhere(&shared, cluster, id).await;
        }
        return (StatusCode::NOT_FOUND, error_json("no such instance")).into_response();
    };
    info!(instance = %member.name, %id, "Instance '{}' kicked by operator", member.name);
    member.outbox.request_close(DisconnectReason::Kicked);
    shared.audit.record(
        AuditEvent::new("kicked")
            .peer(member.peer.addr.ip())
            .transport(member.peer.transport)
            .session(&member.session_label)
            .instance(&member.name, member.id),
    );
    Json(json!({ "kicked": { "id": id, "name": member.name } })).into_response()
}

/// The kick of an instance registered on another node of the cluster, forwarded to it.
async fn kick_elsewhere(shared: &Shared, cluster: &Cluster, id: Uuid) -> Response {
    match Box::pin(cluster.kick_remote(id)).await {
        RemoteKick::Kicked(instance) => {
            info!(instance = %instance.name, %id, node = %instance.node,
                  "Instance '{}' kicked by operator (on node {})", instance.name, instance.node);
            shared.audit.record(
                AuditEvent::new("kicked")
                    .session(&instance.session_label)
                    .instance(&instance.name, id),
            );
            Json(json!({ "kicked": { "id": id, "name": instance.name, "node": instance.node } }))
                .into_response()
        }
        RemoteKick::NotFound => {
            (StatusCode::NOT_FOUND, error_json("no such instance")).into_response()
        }
        RemoteKick::NoAnswer(instance, why) => {
            warn!(instance = %instance.name, %id, node = %instance.node, error = %why,
                  "Kick not delivered: the instance's node did not answer");
            let text = format!("node {} did not answer: {why}", instance.node);
            (StatusCode::SERVICE_UNAVAILABLE, error_json(&text)).into_response()
        }
    }
}

/// Compares the bearer token in constant time (over digests, so length leaks nothing).
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

fn error_json(message: &str) -> Json<serde_json::Value> {
    Json(json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::Config;

    async fn status_of(shared: Arc<Shared>, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        router(shared).oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn health_and_readiness_fail_once_shutdown_starts() {
        let shared = Shared::new(Config::default(), None).unwrap();
        assert_eq!(status_of(shared.clone(), "/readyz").await, StatusCode::OK);
        shared.shutdown.cancel();
        for path in ["/readyz", "/healthz"] {
            assert_eq!(
                status_of(shared.clone(), path).await,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "token"));
        for (value, ok) in [
            ("Bearer token", true),
            ("Bearer token2", false),
            ("Bearer tok", false),
            ("Basic token", false),
            ("token", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_matches(&headers, "token"), ok, "{value}");
        }
    }
}
