//! `watch`: event lines, reconnection across a relay crash, exit on Ctrl+C.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::json;

use crate::{cli, run, RelayProcess, TestServer, Watch};

async fn send(addr: &str, name: &str, data: &str) {
    let (status, _, stderr) =
        run(cli().args(["send", "--addr", addr, "--name", name, "--data", data])).await;
    assert!(status.success(), "{stderr}");
}

#[tokio::test]
async fn watch_sees_updates_sent_before_and_after_a_relay_crash_and_restart() {
    let relay = RelayProcess::start(0).await;
    let port = relay.port;
    let mut watch = Watch::start(&relay.addr(), "watcher").await;
    send(&relay.addr(), "sender", "before").await;
    let event = watch.until("broadcast").await;
    assert_eq!(event["from"], "sender");
    assert_eq!(event["data"], BASE64.encode("before"));

    relay.kill().await;
    watch.until("disconnected").await;
    let relay = RelayProcess::start(port).await;
    watch.until("reconnected").await;
    send(&relay.addr(), "sender", "after").await;
    let event = watch.until("broadcast").await;
    assert_eq!(event["data"], BASE64.encode("after"));

    assert!(watch.interrupt().await.success());
}

#[tokio::test]
async fn json_lines_describe_every_event() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let mut watch = Watch::start(&server.addr, "watcher").await;
    let file = std::env::temp_dir().join(format!("sova-relay-cli-{}.msgpack", std::process::id()));
    std::fs::write(&file, [0x92, 0x01, 0xa1, b'x']).unwrap();
    let (status, _, stderr) = run(cli()
        .args(["send", "--addr", &server.addr, "--name", "bob", "--file"])
        .arg(&file))
    .await;
    std::fs::remove_file(&file).unwrap();
    assert!(status.success(), "{stderr}");

    let joined = watch.event().await;
    assert_eq!(
        (joined["type"].as_str(), joined["name"].as_str()),
        (Some("joined"), Some("bob"))
    );
    let mut broadcast = watch.event().await;
    assert!(broadcast["timestamp"].as_u64().unwrap() > 0);
    broadcast.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(
        broadcast,
        json!({"type": "broadcast", "from": "bob", "data": "kgGheA==", "decoded": [1, "x"]})
    );
    let left = watch.event().await;
    assert_eq!(
        (left["type"].as_str(), left["id"].clone()),
        (Some("left"), joined["id"].clone())
    );
    assert!(watch.interrupt().await.success());
}

#[tokio::test]
async fn plain_lines_for_people() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let mut child = cli()
        .args(["watch", "--addr", &server.addr, "--name", "watcher"])
        .spawn()
        .unwrap();
    let mut stdout = crate::Lines::spawn(child.stdout.take().unwrap());
    let mut stderr = crate::Lines::spawn(child.stderr.take().unwrap());
    stderr.until("watching").await;
    send(&server.addr, "bob", "tempo 120").await;
    assert!(stdout
        .next()
        .await
        .unwrap()
        .starts_with("joined name=\"bob\" id="));
    let line = stdout.next().await.unwrap();
    assert!(
        line.starts_with("broadcast from=\"bob\" timestamp="),
        "{line}"
    );
    assert!(line.ends_with(" size=9 text=\"tempo 120\""), "{line}");
}

#[tokio::test]
async fn watch_does_not_retry_a_version_mismatch() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let (status, stdout, stderr) = run(cli().args([
        "watch",
        "--addr",
        &server.addr,
        "--name",
        "w",
        "--sova-version",
        "0.0.1",
    ]))
    .await;
    assert!(!status.success());
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("Version mismatch: expected 0.1.0, got 0.0.1"),
        "{stderr}"
    );
}
