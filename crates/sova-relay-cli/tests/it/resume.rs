//! `watch` resumes by itself: across a kick it prints `resynced` and every update once; with
//! `--snapshots` a late watcher starts from the session's snapshot.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;
use sova_relay_client::{ClientConfig, Event, RelayClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TestServer, Watch, PATIENCE};

const ADMIN_TOKEN: &str = "test-admin-token";

/// One HTTP/1.1 request to the relay's API; the response body.
async fn http(addr: &str, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 2"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Kicks the instance named `name` through the admin API.
async fn kick(addr: &str, name: &str) {
    let instances: Value =
        serde_json::from_str(&http(addr, "GET", "/api/instances").await).unwrap();
    let id = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|instance| instance["name"] == name)
        .and_then(|instance| instance["id"].as_str())
        .unwrap()
        .to_owned();
    http(addr, "DELETE", &format!("/api/instances/{id}")).await;
}

#[tokio::test]
async fn watch_resumes_across_a_kick_and_prints_every_update_once() {
    let server = TestServer::start(sova_relay::Config {
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        rate_limit: 1_000_000,
        ..sova_relay::Config::default()
    })
    .await;
    let mut watch = Watch::start(&server.addr, "watcher").await;
    let sender = RelayClient::connect(&server.addr, ClientConfig::new("sender"))
        .await
        .unwrap();
    // A steady stream, so that some of it is sent while the watcher is away.
    let sending = tokio::spawn(async move {
        for i in 0..1000u32 {
            sender.send_update_wait(i.to_be_bytes()).await.unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sender.flush().await.unwrap();
        sender
    });

    let (mut seen, mut others) = (Vec::new(), Vec::new());
    while seen.len() < 1000 {
        let event = watch.event().await;
        match event["type"].as_str().unwrap() {
            "broadcast" => {
                let data = BASE64.decode(event["data"].as_str().unwrap()).unwrap();
                seen.push(u32::from_be_bytes(data.try_into().unwrap()));
                if seen.len() == 200 {
                    kick(&server.addr, "watcher").await;
                }
            }
            _ => others.push(event),
        }
    }
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<_>>(),
        "every update once, in order"
    );
    let kinds: Vec<&str> = others.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["joined", "error", "disconnected", "reconnected", "resynced"],
        "{others:?}"
    );
    assert_eq!(others[1]["message"], "Kicked by operator");
    let _sender = sending.await.unwrap();
    assert!(watch.interrupt().await.success());
}

#[tokio::test]
async fn a_late_watcher_with_snapshots_starts_from_the_snapshot() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let mut alice = RelayClient::connect(&server.addr, ClientConfig::new("alice").snapshots(true))
        .await
        .unwrap();
    let bob = RelayClient::connect(&server.addr, ClientConfig::new("bob"))
        .await
        .unwrap();
    bob.send_update("tempo=120").unwrap();
    loop {
        if let Some(Event::Broadcast { .. }) = alice.next_event().await {
            break;
        }
    }
    alice.send_snapshot("tempo=120").unwrap();
    alice.flush().await.unwrap();
    // Sent after the snapshot: the watcher gets it after the snapshot.
    bob.send_update("tempo=90").unwrap();
    bob.flush().await.unwrap();
    alice.ping().await.unwrap();

    let mut watch =
        Watch::start_with(&["--addr", &server.addr, "--name", "w", "--snapshots"]).await;
    let snapshot = watch.event().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert!(snapshot["seq"].as_u64().unwrap() >= 1);
    assert_eq!(snapshot["data"], BASE64.encode("tempo=120"));
    let next = watch.until("broadcast").await;
    assert_eq!(next["data"], BASE64.encode("tempo=90"));
    assert!(watch.interrupt().await.success());
}
