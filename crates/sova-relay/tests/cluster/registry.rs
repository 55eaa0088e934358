//! The registry across nodes: one name per session and `--max-instances`, cluster-wide and
//! atomic under races.

use std::net::SocketAddr;
use std::sync::Arc;

use sova_relay_protocol::Message;
use tokio::sync::Barrier;

use crate::harness::Cluster;
use crate::support::{TestClient, WAIT};

/// Connects every `(node address, name, token)` first, then sends all the registrations
/// at once (behind a barrier); the clients and the answers, in the order given.
async fn race(entrants: Vec<(SocketAddr, String, Option<String>)>) -> Vec<(TestClient, Message)> {
    let barrier = Arc::new(Barrier::new(entrants.len()));
    let tasks: Vec<_> = entrants
        .into_iter()
        .map(|(addr, name, token)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut client = TestClient::connect(addr).await;
                barrier.wait().await;
                let response = client.register_as(&name, token.as_deref(), None).await;
                (client, response)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// The entrants whose registration succeeded, with their node (entrant `i` raced on node
/// `i % 3`); every other one must have been refused with `refusal` and closed.
async fn winners(results: Vec<(TestClient, Message)>, refusal: &str) -> Vec<(usize, TestClient)> {
    let mut winners = Vec::new();
    for (i, (mut client, response)) in results.into_iter().enumerate() {
        if succeeded(&response) {
            winners.push((i % 3, client));
        } else {
            assert_eq!(
                response,
                Message::error(refusal),
                "entrant {i} on node-{}",
                i % 3
            );
            assert!(client.expect_closed().await.is_empty());
        }
    }
    winners
}

fn succeeded(response: &Message) -> bool {
    matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_racing_registrations_of_one_name_across_three_nodes_one_wins() {
    let Some(cluster) = Cluster::start("name-race", 3, &[]).await else {
        return;
    };
    let entrants = (0..30)
        .map(|i| (cluster.addr(i % 3), "x".to_owned(), Some("race".to_owned())))
        .collect();
    let mut winners = winners(race(entrants).await, "Instance name 'x' already in use").await;
    assert_eq!(winners.len(), 1, "exactly one registration of 'x' succeeds");

    // The winner holds the name: it is still taken on every node, and a different name in
    // the same session, or the same name in another session, is free.
    for node in 0..3 {
        let (_, again) =
            TestClient::register_with(cluster.addr(node), "x", Some("race"), None).await;
        assert_eq!(again, Message::error("Instance name 'x' already in use"));
    }
    let (winner_node, mut winner) = winners.pop().unwrap();
    let other_node = (winner_node + 1) % 3;
    let mut y = TestClient::register(cluster.addr(other_node), "y", Some("race")).await;
    let _x_elsewhere = TestClient::register(cluster.addr(other_node), "x", Some("other")).await;
    winner.update(1, b"the winner plays").await;
    crate::support::assert_broadcast(&y.recv().await, "x", 1, b"the winner plays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_holds_cluster_wide_under_a_race() {
    let Some(cluster) = Cluster::start("capacity-race", 3, &["--max-instances", "5"]).await else {
        return;
    };
    // Twelve names in two sessions: the limit counts instances, whatever their session.
    let entrants = (0..12)
        .map(|i| {
            let token = if i % 2 == 0 { "even" } else { "odd" };
            (cluster.addr(i % 3), format!("n{i}"), Some(token.to_owned()))
        })
        .collect();
    let mut winners = winners(race(entrants).await, "Maximum instances (5) reached").await;
    assert_eq!(
        winners.len(),
        5,
        "exactly five of twelve registrations succeed"
    );
    let (_, refused) = TestClient::register_with(cluster.addr(2), "late", Some("odd"), None).await;
    assert_eq!(refused, Message::error("Maximum instances (5) reached"));

    // One leaves: its slot frees cluster-wide (the count is shared state, so the node that
    // takes the slot may learn of the leave a moment later), and only one slot.
    let (leaver_node, leaver) = winners.remove(0);
    drop(leaver);
    let taker_node = (leaver_node + 1) % 3;
    let deadline = tokio::time::Instant::now() + WAIT;
    let _late = loop {
        let (client, response) =
            TestClient::register_with(cluster.addr(taker_node), "late", Some("odd"), None).await;
        if succeeded(&response) {
            break client;
        }
        assert_eq!(response, Message::error("Maximum instances (5) reached"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leaver's slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for node in 0..3 {
        let (_, refused) =
            TestClient::register_with(cluster.addr(node), "later", Some("even"), None).await;
        assert_eq!(refused, Message::error("Maximum instances (5) reached"));
    }
}
