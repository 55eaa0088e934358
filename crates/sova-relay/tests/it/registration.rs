//! Registration: the checks, their order, their texts, and atomicity under races.

use futures_util::future::join_all;
use sova_relay_protocol::Message;

use crate::support::{register_message, TestClient, TestServer};

#[tokio::test]
async fn registration_answers_with_id_and_the_other_instances_of_the_session() {
    let relay = TestServer::start().await;
    let alice = relay.client("alice").await;
    let _elsewhere = relay.client_in("carol", "other-session").await;
    let (bob, response) = TestClient::register_with(relay.addr, "bob", None, None).await;
    let Message::RegistrationResponse {
        success,
        message,
        assigned_id,
        current_instances,
        capabilities,
        epoch,
        ..
    } = response
    else {
        panic!("not a RegistrationResponse");
    };
    assert!(success);
    assert_eq!(message, "Registered as bob");
    assert_eq!(assigned_id, Some(bob.id));
    assert_ne!(bob.id, alice.id);
    let names: Vec<_> = current_instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["alice"]);
    assert_eq!(current_instances[0].id, alice.id);
    assert_eq!(current_instances[0].version, "0.1.0");
    assert_eq!(
        capabilities, None,
        "a client that asked for none is told of none"
    );
    assert_eq!(epoch, None, "nor of extension fields");
}

#[tokio::test]
async fn version_mismatch_is_refused_first_and_closed() {
    let relay = TestServer::with(|c| c.max_instances = 1).await;
    let _alice = relay.client("alice").await;
    let mut late = TestClient::connect(relay.addr).await;
    late.send(&register_message("alice", "0.2.0", None, None))
        .await;
    late.expect_error("Version mismatch: expected 0.1.0, got 0.2.0")
        .await;
    assert!(late.expect_closed().await.is_empty());
}

#[tokio::test]
async fn a_full_relay_refuses_before_looking_at_the_name() {
    let relay = TestServer::with(|c| c.max_instances = 1).await;
    let _alice = relay.client("alice").await;
    let (mut second, response) = TestClient::register_with(relay.addr, "alice", None, None).await;
    assert_eq!(response, Message::error("Maximum instances (1) reached"));
    second.expect_closed().await;
}

#[tokio::test]
async fn max_instances_counts_every_session() {
    let relay = TestServer::with(|c| c.max_instances = 2).await;
    let _a = relay.client_in("a", "one").await;
    let _b = relay.client_in("b", "two").await;
    let (_, response) = TestClient::register_with(relay.addr, "c", Some("three"), None).await;
    assert_eq!(response, Message::error("Maximum instances (2) reached"));
}

#[tokio::test]
async fn names_are_unique_within_a_session_only() {
    let relay = TestServer::start().await;
    let _bob = relay.client("bob").await;
    let (mut dup, response) = TestClient::register_with(relay.addr, "bob", None, None).await;
    assert_eq!(
        response,
        Message::error("Instance name 'bob' already in use")
    );
    dup.expect_closed().await;
    let _other_bob = relay.client_in("bob", "jam").await;
}

#[tokio::test]
async fn a_name_is_free_again_as_soon_as_its_instance_leaves() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let bob = relay.client("bob").await;
    let bob_id = bob.id;
    drop(bob);
    assert_eq!(
        alice.recv().await,
        Message::InstanceDisconnected {
            instance_id: bob_id,
            instance_name: "bob".into()
        }
    );
    let _bob_again = relay.client("bob").await;
}

#[tokio::test]
async fn thirty_racing_for_one_name_exactly_one_wins() {
    let relay = TestServer::with(|c| c.max_instances = 100).await;
    let attempts = (0..30).map(|_| TestClient::register_with(relay.addr, "same", None, None));
    let results = join_all(attempts).await;
    let winners = results
        .iter()
        .filter(|(_, r)| matches!(r, Message::RegistrationResponse { success: true, .. }))
        .count();
    assert_eq!(winners, 1);
    for (_, response) in results.iter().filter(|(c, _)| c.id.is_nil()) {
        assert_eq!(
            *response,
            Message::error("Instance name 'same' already in use")
        );
    }
}

#[tokio::test]
async fn twenty_racing_for_five_free_slots_exactly_five_win() {
    let relay = TestServer::with(|c| c.max_instances = 8).await;
    let mut early = Vec::new();
    for i in 0..3 {
        early.push(relay.client(&format!("early-{i}")).await);
    }
    let names: Vec<String> = (0..20).map(|i| format!("racer-{i}")).collect();
    let attempts = names
        .iter()
        .map(|name| TestClient::register_with(relay.addr, name, None, None));
    let results = join_all(attempts).await;
    let winners = results.iter().filter(|(c, _)| !c.id.is_nil()).count();
    assert_eq!(winners, 5);
    for (_, response) in results.iter().filter(|(c, _)| c.id.is_nil()) {
        assert_eq!(*response, Message::error("Maximum instances (8) reached"));
    }
}

#[tokio::test]
async fn capabilities_are_granted_only_when_known_and_asked_for() {
    let relay = TestServer::start().await;
    let (_, response) = TestClient::register_with(
        relay.addr,
        "new",
        None,
        Some(&["presence", "teleport", "pong"]),
    )
    .await;
    let Message::RegistrationResponse { capabilities, .. } = response else {
        panic!("not registered");
    };
    assert_eq!(capabilities, Some(vec!["pong".into(), "presence".into()]));
}
