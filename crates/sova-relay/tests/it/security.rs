//! TLS on the shared port, session tokens and roles, IP rules, abuse limits, audit log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sova_relay_protocol::{decode_body, encode_frame, Message, FRAME_HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{assert_broadcast, register_message, TestClient, TestServer, WAIT};

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1, written
/// as PEM files into a fresh directory that is removed on drop.
pub struct TestPki {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sova-relay-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let pki = TestPki {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            issuer,
        };
        pki.issue(false);
        pki
    }

    /// Writes a fresh server certificate (expired if asked) over the current files; returns
    /// its DER.
    pub fn issue(&self, expired: bool) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&self.cert, cert.pem()).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        client_config(roots)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

async fn tls_server(pki: &TestPki, adjust: impl FnOnce(&mut sova_relay::Config)) -> TestServer {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    TestServer::with(move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        adjust(c);
    })
    .await
}

/// The relay closes the connection without a word (refused at accept).
async fn assert_refused(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream
        .write_all(&encode_frame(&register_message("x", "0.1.0", None, None)))
        .await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_framed_wss_and_plaintext_instances_share_a_session() {
    let pki = TestPki::new();
    let relay = tls_server(&pki, |_| {}).await;
    let mut plain = relay.client_in("plain", "jam").await;
    let mut tls = TestClient::over(tls_connect(relay.addr, pki.client_config()).await.unwrap());
    let response = tls.register_as("tls", Some("jam"), None).await;
    assert!(matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    ));

    let stream = tls_connect(relay.addr, pki.client_config()).await.unwrap();
    let (mut wss, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    let register = encode_frame(&register_message("wss", "0.1.0", Some("jam"), None));
    wss.send(WsMessage::Binary(register.slice(FRAME_HEADER_LEN..)))
        .await
        .unwrap();
    let Some(Ok(WsMessage::Binary(body))) = wss.next().await else {
        panic!("no registration response over wss");
    };
    assert!(matches!(
        decode_body(body).unwrap(),
        Message::RegistrationResponse { success: true, .. }
    ));

    plain.update(1, b"from plain").await;
    assert_broadcast(&tls.recv().await, "plain", 1, b"from plain");
    let Some(Ok(WsMessage::Binary(body))) = wss.next().await else {
        panic!("no broadcast over wss");
    };
    assert_broadcast(&decode_body(body).unwrap(), "plain", 1, b"from plain");
    tls.update(2, b"from tls").await;
    assert_broadcast(&plain.recv().await, "tls", 2, b"from tls");

    let instances = crate::http::get(relay.addr, "/api/instances").await.json();
    let mut transports: Vec<_> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["transport"].as_str().unwrap().to_owned())
        .collect();
    transports.sort();
    assert_eq!(transports, ["tcp", "tls", "wss"]);
}

#[tokio::test]
async fn tls_required_refuses_plaintext_instances_with_a_reason() {
    let pki = TestPki::new();
    let relay = tls_server(&pki, |c| c.tls_required = true).await;
    let (mut plain, response) = TestClient::register_with(relay.addr, "plain", None, None).await;
    assert_eq!(
        response,
        Message::error("TLS required: reconnect with TLS (tls://HOST:PORT, or wss://HOST:PORT/ws)")
    );
    plain.expect_closed().await;
    let mut tls = TestClient::over(tls_connect(relay.addr, pki.client_config()).await.unwrap());
    let response = tls.register_as("tls", None, None).await;
    assert!(matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    ));
    assert_eq!(
        crate::http::get(relay.addr, "/healthz").await.status,
        200,
        "plain health checks stay"
    );
}

#[tokio::test]
async fn failed_handshakes_leave_everyone_else_untouched() {
    let pki = TestPki::new();
    let relay = tls_server(&pki, |c| c.handshake_timeout = Duration::from_millis(500)).await;
    let mut alice = relay.client("alice").await;
    let mut bob = TestClient::over(tls_connect(relay.addr, pki.client_config()).await.unwrap());
    bob.register_as("bob", None, None).await;

    let untrusted = client_config(RootCertStore::empty());
    assert!(
        tls_connect(relay.addr, untrusted).await.is_err(),
        "an untrusted cert was accepted"
    );

    let mut garbage = TcpStream::connect(relay.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut rest))
        .await
        .expect("closed");

    let mut stalled = TcpStream::connect(relay.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("cut off");

    alice.update(1, b"still fine").await;
    assert_broadcast(&bob.recv().await, "alice", 1, b"still fine");
}

#[tokio::test]
async fn an_expired_certificate_fails_the_handshake_cleanly() {
    let pki = TestPki::new();
    pki.issue(true);
    let relay = tls_server(&pki, |_| {}).await;
    let err = tls_connect(relay.addr, pki.client_config())
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    let _plain_still_works = relay.client("plain").await;
}

fn tokens_file(pki: &TestPki, text: &str) -> PathBuf {
    let path = pki.path("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn session_tokens_admit_performers_and_listeners_only() {
    let pki = TestPki::new();
    let tokens = tokens_file(&pki, "# jam\nstage-pass\nback-row listener\n");
    let relay = TestServer::with(|c| c.tokens_file = Some(tokens)).await;
    for token in [None, Some("wrong"), Some("stage-pas")] {
        let (mut client, response) = TestClient::register_with(relay.addr, "x", token, None).await;
        assert_eq!(
            response,
            Message::error("Invalid session token"),
            "{token:?}"
        );
        client.expect_closed().await;
    }
    let mut performer = relay.client_in("performer", "stage-pass").await;
    let mut listener = relay.client_in("listener", "back-row").await;
    let mut other_performer = relay.client_in("other", "stage-pass").await;
    performer.update(1, b"music").await;
    assert_broadcast(&other_performer.recv().await, "performer", 1, b"music");
    listener.update(2, b"heckle").await;
    listener
        .expect_error("StateUpdate refused: this session token has the listener role")
        .await;
    assert!(
        other_performer.sync().await.is_empty(),
        "the listener's update was relayed"
    );
    assert!(listener.sync().await.is_empty());
    let back_row = relay.client_in("listener2", "back-row").await;
    drop(back_row);
}

#[tokio::test]
async fn deny_and_allow_rules_apply_to_ipv4_and_ipv6_loopback() {
    let relay = TestServer::with(|c| c.deny = vec!["127.0.0.1/32".parse().unwrap()]).await;
    assert_refused(relay.addr).await;

    let allowed = TestServer::with(|c| c.allow = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let _fine = allowed.client("fine").await;

    let Ok(v6) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: IPv6 loopback unavailable; IPv6 rules not tested");
        return;
    };
    drop(v6);
    let v6_denied = TestServer::on("[::1]:0", |c| c.deny = vec!["::1/128".parse().unwrap()]).await;
    assert_refused(v6_denied.addr).await;
    let v6_allowed = TestServer::on("[::1]:0", |c| {
        c.allow = vec!["::1/128".parse().unwrap()];
    })
    .await;
    let _v6_fine = v6_allowed.client("v6").await;
    let v4_only = TestServer::on("[::1]:0", |c| {
        c.allow = vec!["127.0.0.0/8".parse().unwrap()]
    })
    .await;
    assert_refused(v4_only.addr).await;
}

#[tokio::test]
async fn per_ip_and_global_connection_caps() {
    let relay = TestServer::with(|c| c.max_connections_per_ip = 2).await;
    let _a = relay.client("a").await;
    let _b = relay.client("b").await;
    assert_refused(relay.addr).await;
    drop(_a);
    let capped = TestServer::with(|c| {
        c.max_connections = 1;
        c.max_connections_per_ip = 0;
    })
    .await;
    let _only = capped.client("only").await;
    assert_refused(capped.addr).await;
}

#[tokio::test]
async fn repeated_failed_registrations_lock_the_ip_out() {
    let pki = TestPki::new();
    let tokens = tokens_file(&pki, "right\n");
    let relay = TestServer::with(|c| {
        c.tokens_file = Some(tokens);
        c.max_failed_registrations = 3;
    })
    .await;
    for token in ["wrong-1", "wrong-2", "wrong-3"] {
        let (_, response) =
            TestClient::register_with(relay.addr, "guesser", Some(token), None).await;
        assert_eq!(response, Message::error("Invalid session token"));
    }
    assert_refused(relay.addr).await;
}

#[tokio::test]
async fn the_audit_log_records_events_as_json_lines_without_tokens() {
    let pki = TestPki::new();
    let tokens = tokens_file(&pki, "very-secret-token\n");
    let audit = pki.path("audit.log");
    let relay = tls_server(&pki, |c| {
        c.tokens_file = Some(tokens);
        c.audit_log = Some(audit.clone());
        c.admin_token = Some("admin".into());
        c.rate_limit = 2;
    })
    .await;
    let (_, rejected) = TestClient::register_with(relay.addr, "eve", Some("guess"), None).await;
    assert_eq!(rejected, Message::error("Invalid session token"));
    let mut alice = relay.client_in("alice", "very-secret-token").await;
    let bob = relay.client_in("bob", "very-secret-token").await;
    for i in 0..3 {
        alice.update(i, b"x").await;
    }
    alice
        .expect_error("Rate limit exceeded for instance alice")
        .await;
    let path = format!("/api/instances/{}", bob.id);
    let kicked = crate::http::request(
        relay.addr,
        "DELETE",
        &path,
        &[("Authorization", "Bearer admin")],
    )
    .await;
    assert_eq!(kicked.status, 200);
    let _ = tls_connect(relay.addr, client_config(RootCertStore::empty())).await;
    // The trail is written by its own thread: wait until the last event is there.
    crate::support::wait_for_file_containing(&audit, "tls_failed").await;
    relay.stop().await;

    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains("very-secret-token") && !text.contains("guess"),
        "{text}"
    );
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in [
        "connect",
        "rejected",
        "registered",
        "rate_limited",
        "kicked",
        "disconnected",
        "tls_failed",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    for event in &events {
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
    }
    let registered = events.iter().find(|e| e["event"] == "registered").unwrap();
    assert_eq!(registered["peer_ip"], "127.0.0.1");
    assert_eq!(registered["session"].as_str().unwrap().len(), 8);
    assert!(registered["instance_id"].is_string() && registered["name"].is_string());
}
