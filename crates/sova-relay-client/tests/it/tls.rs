//! The client over `tls://` and `wss://`, against the real relay with a test CA.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sova_relay_client::{ClientError, Event, RelayClient};

use crate::relay::queued_updates_survive_a_restart_of;
use crate::scripted::PATIENCE;
use crate::server::{relay_config, TestServer};
use crate::{config, next};

/// A CA, and a relay certificate it signed for `localhost` and 127.0.0.1, as PEM files in a
/// fresh directory removed on drop.
pub struct TestPki {
    dir: PathBuf,
    /// The CA certificate, for `ca_file`.
    pub ca: PathBuf,
    /// The relay's certificate and key, for `--tls-cert` and `--tls-key`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sova-client-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, issuer.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// A test relay configuration serving TLS with this certificate.
    pub fn relay_config(&self) -> sova_relay::Config {
        sova_relay::Config {
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
            ..relay_config()
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn tls_and_wss_clients_exchange_updates_with_a_plaintext_one() {
    let pki = TestPki::new();
    let server = TestServer::start(pki.relay_config()).await;
    let port = server.addr.port();
    let mut tls = RelayClient::connect(
        &format!("tls://127.0.0.1:{port}"),
        config("tls").ca_file(&pki.ca),
    )
    .await
    .unwrap();
    let mut wss = RelayClient::connect(
        &format!("wss://localhost:{port}/ws"),
        config("wss").ca_file(&pki.ca),
    )
    .await
    .unwrap();
    let mut plain = RelayClient::connect(&server.addr(), config("plain"))
        .await
        .unwrap();

    for (sender, text) in [
        (&tls, "from tls"),
        (&wss, "from wss"),
        (&plain, "from plain"),
    ] {
        for i in 0..50u8 {
            sender
                .send_update([text.as_bytes(), &[i]].concat())
                .unwrap();
        }
    }
    for (receiver, others) in [
        (&mut tls, ["wss", "plain"]),
        (&mut wss, ["tls", "plain"]),
        (&mut plain, ["tls", "wss"]),
    ] {
        let mut seen = std::collections::HashMap::<String, u8>::new();
        while seen.values().map(|&n| usize::from(n)).sum::<usize>() < 100 {
            if let Event::Broadcast { from, data, .. } = next(receiver.events()).await {
                assert!(others.contains(&from.as_str()), "{from}");
                let count = seen.entry(from.clone()).or_default();
                let expected = [format!("from {from}").as_bytes(), &[*count]].concat();
                assert_eq!(data, expected, "in order, from {from}");
                *count += 1;
            }
        }
    }
    assert!(tls.ping().await.unwrap() < PATIENCE);
    assert!(wss.ping().await.unwrap() < PATIENCE);
    for client in [wss, tls] {
        client.close().await;
        let (_, mut events) = client.split();
        // What is left is presence (the other TLS client leaving first), then the end.
        while let Some(event) = events.recv().await {
            assert!(matches!(event, Event::Left { .. }), "{event:?}");
        }
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error_not_retried() {
    let pki = TestPki::new();
    let server = TestServer::start(pki.relay_config()).await;
    let port = server.addr.port();
    for address in [
        format!("tls://127.0.0.1:{port}"),
        format!("wss://localhost:{port}/ws"),
    ] {
        let err = RelayClient::connect(&address, config("alice"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("certificate"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
    }
    // The CA of another PKI is no better.
    let other = TestPki::new();
    let err = RelayClient::connect(
        &format!("tls://localhost:{port}"),
        config("alice").ca_file(&other.ca),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn tls_to_a_relay_without_tls_says_so() {
    let server = TestServer::start(relay_config()).await;
    let pki = TestPki::new();
    let err = RelayClient::connect(
        &format!("tls://{}", server.addr),
        config("alice").ca_file(&pki.ca),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("TLS enabled"), "{err}");
}

#[tokio::test]
async fn queued_updates_are_sent_in_order_after_a_tls_relay_restarts() {
    let pki = TestPki::new();
    let reason = queued_updates_survive_a_restart_of(
        || pki.relay_config(),
        |proxy| format!("tls://{proxy}"),
        config("alice").ca_file(&pki.ca),
    )
    .await;
    assert_eq!(reason, "relay closed the connection");
}
