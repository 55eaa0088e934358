//! Silence is healthy; only pong-capable clients are judged by pongs.

use std::time::Duration;

use sova_relay_protocol::Message;

use crate::support::{assert_broadcast, TestClient, TestServer};

#[tokio::test(start_paused = true)]
async fn an_instance_silent_for_hours_is_still_in_the_jam() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    alice.update(1, b"after six hours").await;
    assert_broadcast(&bob.recv().await, "alice", 1, b"after six hours");
    bob.update(2, b"still here").await;
    assert_broadcast(&alice.recv().await, "bob", 2, b"still here");
}

#[tokio::test]
async fn a_pong_client_that_stops_answering_is_dropped() {
    let relay = TestServer::with(|c| {
        c.ping_interval = Duration::from_millis(50);
        c.max_missed_pongs = 3;
    })
    .await;
    let mut watcher = relay.client("watcher").await;
    let (mut mute, _) = TestClient::register_with(relay.addr, "mute", None, Some(&["pong"])).await;
    for _ in 0..3 {
        assert!(matches!(mute.recv().await, Message::Ping { .. }));
    }
    let farewell = mute.expect_closed().await;
    assert_eq!(
        farewell,
        [Message::error("Ping timeout: 3 pings unanswered")]
    );
    assert!(matches!(
        watcher.recv().await,
        Message::InstanceDisconnected { .. }
    ));
}

#[tokio::test]
async fn a_pong_client_that_answers_stays() {
    let relay = TestServer::with(|c| c.ping_interval = Duration::from_millis(20)).await;
    let (mut lively, _) =
        TestClient::register_with(relay.addr, "lively", None, Some(&["pong"])).await;
    for _ in 0..20 {
        match lively.recv().await {
            Message::Ping { timestamp } => lively.send(&Message::Pong { timestamp }).await,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn clients_without_the_capability_are_never_pinged() {
    let relay = TestServer::with(|c| c.ping_interval = Duration::from_millis(10)).await;
    let mut field = relay.client("field").await;
    assert!(field.try_recv(Duration::from_millis(200)).await.is_none());
}
