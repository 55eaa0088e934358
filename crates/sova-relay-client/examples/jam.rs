//! Two instances jamming through a relay: each sends a few edits, and prints the other's.
//!
//! ```text
//! cargo run -p sova-relay-client --example jam                  # embedded relay
//! cargo run -p sova-relay-client --example jam -- 127.0.0.1:9090 # a running relay
//! ```

use std::time::Duration;

use sova_relay_client::{ClientConfig, ClientError, Event, RelayClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => embedded_relay().await?,
    };
    println!("relay at {addr}");

    let alice = RelayClient::connect(&addr, ClientConfig::new("alice")).await?;
    let bob = RelayClient::connect(&addr, ClientConfig::new("bob")).await?;

    // Each jams in its own task: send its edits, then print the other's until it has them all.
    let alice = tokio::spawn(jam("alice", alice, edits("alice")));
    let bob = tokio::spawn(jam("bob", bob, edits("bob")));
    alice.await??;
    bob.await??;
    Ok(())
}

async fn jam(me: &str, client: RelayClient, edits: Vec<String>) -> Result<(), ClientError> {
    let (sender, mut events) = client.split();
    for edit in &edits {
        sender.send_update(edit)?;
    }
    let mut received = 0;
    while received < edits.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        match event {
            Ok(Some(Event::Broadcast { from, data, .. })) => {
                received += 1;
                println!("[{me}] from {from}: {}", String::from_utf8_lossy(&data));
            }
            Ok(Some(other)) => println!("[{me}] {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    println!("[{me}] round trip to the relay: {:?}", sender.ping().await?);
    sender.close().await;
    Ok(())
}

/// The edits one instance makes.
fn edits(who: &str) -> Vec<String> {
    (1..=3)
        .map(|bar| format!("{who}: pattern change at bar {bar}"))
        .collect()
}

/// Starts a relay in this process on a free port (so the example runs on its own).
async fn embedded_relay() -> std::io::Result<String> {
    let server = sova_relay::Server::bind(
        "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        sova_relay::Config::default(),
    )
    .await?;
    let addr = server.local_addr()?.to_string();
    tokio::spawn(server.run(std::future::pending()));
    Ok(addr)
}
