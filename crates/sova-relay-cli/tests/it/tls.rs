//! `--tls`, `--ca` and `SOVA_RELAY_CA`: every command against a relay with a private CA.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::{cli, run, TestServer, Watch};

/// A CA and a relay certificate for `localhost` and 127.0.0.1, as PEM files in a fresh
/// directory removed on drop.
struct TestPki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestPki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sova-cli-pki-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
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

    async fn relay(&self) -> TestServer {
        TestServer::start(sova_relay::Config {
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
            ..sova_relay::Config::default()
        })
        .await
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn watch_send_and_ping_work_with_tls_and_a_private_ca() {
    let pki = TestPki::new();
    let relay = pki.relay().await;
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
    let pki = TestPki::new();
    let relay = pki.relay().await;
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
