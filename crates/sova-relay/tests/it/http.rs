//! The HTTP surface on the relay's port: routes, content types, JSON, metrics, admin API,
//! hardening.

use std::time::Duration;

use serde_json::Value;
use sova_relay_protocol::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestClient, TestServer, WAIT};

/// A response read to the end of a `Connection: close` request.
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// Sends raw request bytes and reads the whole response.
pub async fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    raw_request(addr, text.as_bytes()).await
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[]).await
}

#[tokio::test]
async fn the_status_page_and_its_assets_are_served_with_a_strict_policy() {
    let relay = TestServer::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/status.js", "text/javascript; charset=utf-8"),
        ("/status.css", "text/css; charset=utf-8"),
    ] {
        let response = get(relay.addr, path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(
            response.header("content-type"),
            Some(content_type),
            "{path}"
        );
        let csp = response.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    let page = get(relay.addr, "/").await;
    assert!(page.body.contains("<script src=\"/status.js\""));
    let script = get(relay.addr, "/status.js").await.body;
    assert!(
        !script.contains("innerHTML ="),
        "names must never become markup"
    );
    assert!(
        !script.contains("insertAdjacentHTML"),
        "names must never become markup"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let relay = TestServer::with(|c| c.max_instances = 1).await;
    let health = get(relay.addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(relay.addr, "/readyz").await.status, 200);
    let _only = relay.client("only").await;
    let full = get(relay.addr, "/readyz").await;
    assert_eq!((full.status, full.body.as_str()), (503, "full\n"));
    assert_eq!(get(relay.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn the_json_api_describes_the_relay_its_sessions_and_instances() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let _bob = relay.client("bob").await;
    let _carol = relay.client_in("carol", "secret-jam").await;
    alice.update(1, b"hello").await;
    assert!(alice.sync().await.is_empty());

    let status = get(relay.addr, "/api/status").await;
    assert_eq!(status.header("content-type"), Some("application/json"));
    let status = status.json();
    assert_eq!(status["relay_version"], "0.1.0");
    assert_eq!(status["sova_version"], "0.1.0");
    assert_eq!(status["instances"], 3);
    assert_eq!(status["sessions"], 2);
    assert_eq!(status["max_instances"], 20);
    assert_eq!(status["shutting_down"], false);
    assert!(status["totals"]["messages_in"].as_u64().unwrap() >= 2);
    assert_eq!(status["totals"]["messages_out"], 1);
    assert_eq!(status["totals"]["broadcasts"], 1);

    let sessions = get(relay.addr, "/api/sessions").await.json();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let default = sessions.iter().find(|s| s["session"] == "default").unwrap();
    let names: Vec<_> = default["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let hashed = sessions.iter().find(|s| s["session"] != "default").unwrap();
    assert_eq!(hashed["session"].as_str().unwrap().len(), 8);
    assert!(
        hashed.get("token").is_none(),
        "tokens are hidden by default"
    );
    assert!(!get(relay.addr, "/api/sessions")
        .await
        .body
        .contains("secret-jam"));

    let instances = get(relay.addr, "/api/instances").await.json();
    let alice_json = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice_json["id"], alice.id.to_string());
    assert_eq!(alice_json["transport"], "tcp");
    assert_eq!(alice_json["version"], "0.1.0");
    assert_eq!(alice_json["session"], "default");
    for field in ["connected_at", "last_activity"] {
        assert!(
            alice_json[field].as_str().unwrap().ends_with('Z'),
            "{field}"
        );
    }
}

#[tokio::test]
async fn session_names_are_shown_only_when_asked() {
    let relay = TestServer::with(|c| c.show_session_names = true).await;
    let _carol = relay.client_in("carol", "open-jam").await;
    let sessions = get(relay.addr, "/api/sessions").await.json();
    assert_eq!(sessions[0]["token"], "open-jam");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    let before = metric(
        &get(relay.addr, "/metrics").await.body,
        "sova_relay_messages_out_total",
    );
    for i in 0..5 {
        alice.update(i, b"x").await;
        assert!(matches!(bob.recv().await, Message::StateBroadcast { .. }));
    }
    let metrics = get(relay.addr, "/metrics").await;
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let after = metric(&metrics.body, "sova_relay_messages_out_total");
    assert!(after >= before + 5.0, "{before} -> {after}");
    for name in [
        "sova_relay_connections_total{transport=\"tcp\"}",
        "sova_relay_messages_in_total",
        "sova_relay_bytes_in_total",
        "sova_relay_bytes_out_total",
        "sova_relay_broadcasts_total",
        "sova_relay_instances",
        "sova_relay_sessions",
        "sova_relay_fanout_seconds_count",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} missing from\n{}",
            metrics.body
        );
    }
    assert!(
        !metrics.body.contains(&alice.id.to_string()),
        "no per-instance labels"
    );
}

/// The value of the first sample whose name (with labels) starts with `name`.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn kicking_needs_the_admin_token_and_tells_everyone() {
    let relay = TestServer::with(|c| c.admin_token = Some("let-me-in".into())).await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    let path = format!("/api/instances/{}", bob.id);
    let no_token = request(relay.addr, "DELETE", &path, &[]).await;
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    let wrong = request(
        relay.addr,
        "DELETE",
        &path,
        &[("Authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(alice.sync().await.is_empty(), "nobody was kicked yet");

    let auth = [("Authorization", "Bearer let-me-in")];
    let kicked = request(relay.addr, "DELETE", &path, &auth).await;
    assert_eq!(kicked.status, 200);
    assert_eq!(kicked.json()["kicked"]["name"], "bob");
    assert_eq!(
        bob.expect_closed().await,
        [Message::error("Kicked by operator")]
    );
    assert_eq!(
        alice.recv().await,
        Message::InstanceDisconnected {
            instance_id: bob.id,
            instance_name: "bob".into()
        }
    );
    assert_eq!(
        request(relay.addr, "DELETE", &path, &auth).await.status,
        404
    );
    let bad_id = request(relay.addr, "DELETE", "/api/instances/xyz", &auth).await;
    assert_eq!(bad_id.status, 400);
}

#[tokio::test]
async fn without_an_admin_token_the_admin_routes_do_not_exist() {
    let relay = TestServer::start().await;
    let bob = relay.client("bob").await;
    let path = format!("/api/instances/{}", bob.id);
    let response = request(
        relay.addr,
        "DELETE",
        &path,
        &[("Authorization", "Bearer x")],
    )
    .await;
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let relay = TestServer::start().await;
    assert_eq!(get(relay.addr, "/nope").await.status, 404);
    assert_eq!(
        request(relay.addr, "POST", "/healthz", &[]).await.status,
        405
    );
    assert_eq!(
        request(relay.addr, "PUT", "/api/status", &[]).await.status,
        405
    );
}

#[tokio::test]
async fn oversized_and_overlong_requests_are_refused() {
    let relay = TestServer::start().await;
    let huge = "x".repeat(64 * 1024);
    let response = request(relay.addr, "GET", "/healthz", &[("X-Huge", &huge)]).await;
    assert_eq!(response.status, 431);
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let response = request(relay.addr, "GET", "/healthz", &many).await;
    assert_eq!(response.status, 431);
    assert_eq!(get(relay.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_request_trickled_too_slowly_is_cut_off() {
    let relay = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut jam_alice = relay.client("alice").await;
    let mut slow = TcpStream::connect(relay.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a slowloris request was kept open");
    assert!(jam_alice.sync().await.is_empty());
}

#[tokio::test]
async fn http_can_be_turned_off() {
    let relay = TestServer::with(|c| c.http = false).await;
    let mut client = TestClient::connect(relay.addr).await;
    client.send_raw(b"GET /healthz HTTP/1.1\r\n\r\n").await;
    let seen = client.expect_closed().await;
    assert!(matches!(seen.as_slice(), [Message::Error { .. }]));
}
