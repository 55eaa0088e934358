//! In-process shutdown: every instance is told, the server returns.

use sova_relay_protocol::Message;

use crate::support::{TestClient, TestServer};

#[tokio::test]
async fn stopping_tells_every_instance_and_closes_unregistered_connections() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client_in("bob", "jam").await;
    let mut lurker = TestClient::connect(relay.addr).await;
    relay.stop().await;
    for client in [&mut alice, &mut bob] {
        let seen = client.expect_closed().await;
        assert_eq!(seen.last(), Some(&Message::error("Relay shutting down")));
    }
    assert!(lurker.expect_closed().await.is_empty());
}
