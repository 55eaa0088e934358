//! `--tls`, `--ca` and `SOVA_RELAY_CA`: every command against a relay with a private CA.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sova_relay_testkit::TestPki;

use crate::{cli, run, TestServer, Watch};

/// A relay serving TLS with `pki`'s certificate.
async fn tls_relay(pki: &TestPki) -> TestServer {
    TestServer::start(sova_relay::Config {
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(pki.key.clone()),
        ..sova_relay::Config::default()
    })
    .await
}

#[tokio::test]
async fn watch_send_and_ping_work_with_tls_and_a_private_ca() {
    let pki = TestPki::new("cli");
    let relay = tls_relay(&pki).await;
    let ca = pki.ca.to_str().unwrap();
    let mut watch =
        Watch::start_with(&["--addr", &relay.addr, "--tls", "--ca", ca, "--name", "w"]).await;

    // --tls --ca over framed TLS; the CA from the environment over wss://.
    let (status, _, stderr) = run(cli().args([
        "send",
        "--addr",
        &relay.addr,
        "--tls",
        "--ca",
        ca,
        "--name",
        "tls",
        "--data",
        "tls",
    ]))
    .await;
    assert!(status.success(), "{stderr}");
    let wss = format!("wss://{}/ws", relay.addr.replace("127.0.0.1", "localhost"));
    let (status, _, stderr) = run(cli()
        .env("SOVA_RELAY_CA", ca)
        .args(["send", "--addr", &wss, "--name", "wss", "--data", "wss"]))
    .await;
    assert!(status.success(), "{stderr}");
    for name in ["tls", "wss"] {
        let event = watch.until("broadcast").await;
        assert_eq!(event["from"], name);
        assert_eq!(event["data"], BASE64.encode(name));
    }

    let (status, stdout, stderr) = run(cli().args([
        "ping",
        "--addr",
        &relay.addr,
        "--tls",
        "--ca",
        ca,
        "--count",
        "2",
    ]))
    .await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(" ms (2 pings)"), "{stdout}");
    assert!(watch.interrupt().await.success());
}

#[tokio::test]
async fn an_untrusted_relay_is_refused_at_once_with_the_reason() {
    let pki = TestPki::new("cli");
    let relay = tls_relay(&pki).await;
    // `watch` retries what may pass later; a certificate it does not trust will not.
    for command in ["watch", "send"] {
        let mut args = vec![command, "--addr", &relay.addr, "--tls", "--name", "x"];
        if command == "send" {
            args.extend(["--data", "x"]);
        }
        let (status, stdout, stderr) = run(cli().args(&args)).await;
        assert!(!status.success(), "{command}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains("invalid peer certificate: UnknownIssuer"),
            "{command}: {stderr}"
        );
    }
}
