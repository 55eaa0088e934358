//! The client over `tls://` and `wss://`, against the real relay with a test CA.

use sova_relay_client::{ClientError, Event, RelayClient};
use sova_relay_testkit::TestPki;

use crate::relay::queued_updates_survive_a_restart_of;
use crate::scripted::PATIENCE;
use crate::server::{relay_config, TestServer};
use crate::{config, next};

/// A test relay configuration serving TLS with `pki`'s certificate.
pub fn tls_relay_config(pki: &TestPki) -> sova_relay::Config {
    sova_relay::Config {
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(pki.key.clone()),
        ..relay_config()
    }
}

#[tokio::test]
async fn tls_and_wss_clients_exchange_updates_with_a_plaintext_one() {
    let pki = TestPki::new("client");
    let server = TestServer::start(tls_relay_config(&pki)).await;
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
    let pki = TestPki::new("client");
    let server = TestServer::start(tls_relay_config(&pki)).await;
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
    let other = TestPki::new("client");
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
    let pki = TestPki::new("client");
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
    let pki = TestPki::new("client");
    let reason = queued_updates_survive_a_restart_of(
        || tls_relay_config(&pki),
        |proxy| format!("tls://{proxy}"),
        config("alice").ca_file(&pki.ca),
    )
    .await;
    assert_eq!(reason, "relay closed the connection");
}
