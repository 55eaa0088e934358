//! Updates between instances on different nodes: order, exactly once, one global order;
//! presence and the cluster view; the snapshot for a late joiner on another node.

use std::collections::HashMap;

use sova_relay_protocol::{Message, UpdateData};

use crate::harness::{http_get, Cluster, Node};
use crate::support::TestClient;

/// A broadcast as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub timestamp: u64,
    pub data: Vec<u8>,
    pub seq: Option<u64>,
}

/// The broadcast in `message`, if it is one.
pub fn as_broadcast(message: &Message) -> Option<Received> {
    match message {
        Message::StateBroadcast {
            source_instance_name,
            timestamp,
            update_data,
            seq,
        } => Some(Received {
            from: source_instance_name.clone(),
            timestamp: *timestamp,
            data: update_data.to_vec().unwrap(),
            seq: *seq,
        }),
        _ => None,
    }
}

/// The payload of update `n` of `name`, distinct for every update of a test.
pub fn payload(name: &str, n: u64) -> Vec<u8> {
    format!("{name}#{n}").into_bytes()
}

/// Reads until `count` broadcasts arrived; presence events are skipped, anything else
/// fails the test.
pub async fn read_broadcasts(client: &mut TestClient, count: usize) -> Vec<Received> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let message = client.recv().await;
        match as_broadcast(&message) {
            Some(broadcast) => received.push(broadcast),
            None => assert!(
                matches!(
                    message,
                    Message::InstanceConnected { .. } | Message::InstanceDisconnected { .. }
                ),
                "{}: unexpected {message:?} after {} broadcasts",
                client.name,
                received.len()
            ),
        }
    }
    received
}

/// Checks what `receiver` got: from each of `sources`, updates 0..per_source exactly once
/// and in order, with their payloads; never its own; `seq` strictly increasing.
fn check_stream(receiver: &str, received: &[Received], sources: &[String], per_source: u64) {
    let mut next: HashMap<&str, u64> = sources.iter().map(|s| (s.as_str(), 0)).collect();
    let mut last_seq = 0;
    for (i, broadcast) in received.iter().enumerate() {
        assert_ne!(
            broadcast.from, receiver,
            "{receiver} got its own update back"
        );
        let expected = next
            .get_mut(broadcast.from.as_str())
            .unwrap_or_else(|| panic!("{receiver}: broadcast from stranger {broadcast:?}"));
        assert_eq!(
            broadcast.timestamp, *expected,
            "{receiver}: from {} got update {} where {} was due (lost, duplicated or reordered)",
            broadcast.from, broadcast.timestamp, expected
        );
        assert_eq!(
            broadcast.data,
            payload(&broadcast.from, broadcast.timestamp)
        );
        *expected += 1;
        let seq = broadcast
            .seq
            .unwrap_or_else(|| panic!("{receiver}: broadcast without seq: {broadcast:?}"));
        assert!(
            seq > last_seq,
            "{receiver}: seq {seq} after {last_seq} (broadcast {i})"
        );
        last_seq = seq;
    }
    for (source, count) in next {
        assert_eq!(count, per_source, "{receiver}: from {source}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_three_nodes_exchange_updates_in_one_global_order() {
    const PER_SOURCE: u64 = 200;
    let Some(cluster) = Cluster::start("ordering", 3, &[]).await else {
        return;
    };
    let token = Some("cluster-jam");
    let names: Vec<String> = (0..3).map(|i| format!("player-{i}")).collect();
    let mut players = Vec::new();
    for (node, name) in names.iter().enumerate() {
        let (client, response) =
            TestClient::register_with(cluster.addr(node), name, token, Some(&["resume"])).await;
        assert!(
            matches!(
                response,
                Message::RegistrationResponse { success: true, .. }
            ),
            "{name}: {response:?}"
        );
        players.push(client);
    }
    // A silent observer hears all 600, in the order every player must agree with.
    let (observer, response) =
        TestClient::register_with(cluster.addr(1), "observer", token, Some(&["resume"])).await;
    assert!(matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    ));

    let mut tasks = Vec::new();
    for mut player in players {
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SOURCE {
                player.update(n, &payload(&player.name, n)).await;
                if n % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let received = read_broadcasts(&mut player, 2 * PER_SOURCE as usize).await;
            (player, received)
        }));
    }
    let watching = tokio::spawn(async move {
        let mut observer = observer;
        let received = read_broadcasts(&mut observer, 3 * PER_SOURCE as usize).await;
        (observer, received)
    });

    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap());
    }
    let (_observer, observed) = watching.await.unwrap();
    check_stream("observer", &observed, &names, PER_SOURCE);
    let global: HashMap<(String, u64), u64> = observed
        .iter()
        .map(|b| ((b.from.clone(), b.timestamp), b.seq.unwrap()))
        .collect();
    for (player, received) in &streams {
        let others: Vec<String> = names
            .iter()
            .filter(|n| **n != player.name)
            .cloned()
            .collect();
        check_stream(&player.name, received, &others, PER_SOURCE);
        // The same seq for the same update on every node, hence one order for everyone.
        for broadcast in received {
            let key = (broadcast.from.clone(), broadcast.timestamp);
            assert_eq!(
                Some(broadcast.seq.unwrap()),
                global.get(&key).copied(),
                "{} and the observer disagree on the seq of {key:?}",
                player.name
            );
        }
        let expected: Vec<&Received> = observed.iter().filter(|b| b.from != player.name).collect();
        assert!(
            received.iter().eq(expected.iter().copied()),
            "{}: not the observer's order",
            player.name
        );
    }
    // Nothing more arrives: no duplicate was on its way. Every player stays connected
    // until all have checked (one that left would be announced to the others).
    let mut players: Vec<TestClient> = streams.into_iter().map(|(player, _)| player).collect();
    for player in &mut players {
        let late = player.sync().await;
        assert!(late.is_empty(), "{}: extra messages {late:?}", player.name);
    }
}

#[tokio::test]
async fn presence_and_the_cluster_view_span_the_nodes() {
    let Some(cluster) = Cluster::start("presence", 3, &[]).await else {
        return;
    };
    let token = Some("presence-jam");
    let (mut watcher, response) =
        TestClient::register_with(cluster.addr(0), "watcher", token, Some(&["presence"])).await;
    assert!(matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    ));
    let joiner = TestClient::register(cluster.addr(1), "joiner", token).await;
    match watcher.recv().await {
        Message::InstanceConnected {
            instance_id,
            instance_name,
        } => assert_eq!((instance_id, instance_name.as_str()), (joiner.id, "joiner")),
        other => panic!("watcher: expected InstanceConnected for joiner, got {other:?}"),
    }

    // Every node lists the three nodes; node-2 counts both instances.
    for node in &cluster.nodes {
        node.wait_status("all three nodes", |s| {
            let mut nodes: Vec<&str> = s["cluster"]["nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                .unwrap_or_default();
            nodes.sort_unstable();
            s["node"] == node.name.as_str()
                && s["cluster"]["connected"] == true
                && nodes == ["node-0", "node-1", "node-2"]
        })
        .await;
    }
    cluster.nodes[2]
        .wait_status("2 cluster instances", |s| s["cluster"]["instances"] == 2)
        .await;
    // node-2 has no member in the session, yet its API lists both, with their nodes.
    let (code, body) = http_get(cluster.addr(2), "/api/instances").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let instances: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut listed: Vec<(&str, &str, &str)> = instances
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let field = |key: &str| i[key].as_str().unwrap_or_default();
            (field("name"), field("node"), field("transport"))
        })
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            ("joiner", "node-1", "remote"),
            ("watcher", "node-0", "remote")
        ]
    );
    // Their activity is seen only by their own node: unknown here, not invented.
    for instance in instances.as_array().unwrap() {
        assert!(instance["last_activity"].is_null(), "{instance}");
        assert!(instance["idle_seconds"].is_null(), "{instance}");
    }
    // On its own node an instance's activity is known.
    let (_, body) = http_get(cluster.addr(0), "/api/instances").await.unwrap();
    let on_node_0: serde_json::Value = serde_json::from_str(&body).unwrap();
    let watcher_there = on_node_0
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "watcher")
        .unwrap();
    assert_eq!(watcher_there["transport"], "tcp", "{body}");
    assert!(watcher_there["idle_seconds"].is_u64(), "{body}");
    let (code, body) = http_get(cluster.addr(2), "/api/sessions").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{body}");
    assert_eq!(sessions[0]["instances"].as_array().map(Vec::len), Some(2));

    // A third instance, on node-2, sees both remote ones in `current_instances`.
    let (_third, response) = TestClient::register_with(cluster.addr(2), "third", token, None).await;
    let Message::RegistrationResponse {
        success: true,
        current_instances,
        ..
    } = response
    else {
        panic!("third: {response:?}");
    };
    let mut current: Vec<(String, uuid::Uuid)> = current_instances
        .into_iter()
        .map(|i| (i.name, i.id))
        .collect();
    current.sort();
    assert_eq!(
        current,
        [
            ("joiner".to_owned(), joiner.id),
            ("watcher".to_owned(), watcher.id)
        ]
    );
    // The joiner leaves: the watcher on another node is told once.
    let joiner_id = joiner.id;
    drop(joiner);
    let seen = read_presence_until_disconnect(&mut watcher, "joiner").await;
    assert_eq!(seen, joiner_id);
}

#[tokio::test]
async fn a_node_started_later_knows_the_instances_already_there() {
    let Some(mut cluster) = Cluster::start("later-node", 1, &[]).await else {
        return;
    };
    let token = Some("early-jam");
    let early = TestClient::register(cluster.addr(0), "early", token).await;
    let late_node = Node::start(&cluster.nats.url(), "node-1", &[]).await;
    cluster.nodes.push(late_node);
    let (mut late, response) =
        TestClient::register_with(cluster.addr(1), "late", token, None).await;
    let Message::RegistrationResponse {
        success: true,
        current_instances,
        ..
    } = response
    else {
        panic!("late: {response:?}");
    };
    let current: Vec<(String, uuid::Uuid)> = current_instances
        .into_iter()
        .map(|i| (i.name, i.id))
        .collect();
    assert_eq!(
        current,
        [("early".to_owned(), early.id)],
        "late's current_instances"
    );
    let early_id = early.id;
    drop(early);
    assert_eq!(
        read_presence_until_disconnect(&mut late, "early").await,
        early_id
    );
}

/// Reads past `InstanceConnected` events until `name`'s `InstanceDisconnected`; its id.
async fn read_presence_until_disconnect(client: &mut TestClient, name: &str) -> uuid::Uuid {
    loop {
        match client.recv().await {
            Message::InstanceDisconnected {
                instance_id,
                instance_name,
            } if instance_name == name => return instance_id,
            Message::InstanceConnected { .. } => {}
            other => panic!("{}: expected {name} to leave, got {other:?}", client.name),
        }
    }
}

#[tokio::test]
async fn a_late_joiner_on_another_node_starts_from_the_snapshot() {
    let Some(cluster) = Cluster::start("snapshot", 3, &[]).await else {
        return;
    };
    let token = Some("snapshot-jam");
    let caps: &[&str] = &["snapshot"];
    let (mut author, _) =
        TestClient::register_with(cluster.addr(0), "author", token, Some(caps)).await;
    let (mut peer, _) = TestClient::register_with(cluster.addr(1), "peer", token, Some(caps)).await;
    assert!(!author.id.is_nil() && !peer.id.is_nil(), "both registered");

    for n in 0..10 {
        peer.update(n, &payload("peer", n)).await;
    }
    let heard = read_broadcasts(&mut author, 10).await;
    let snapshot_seq = heard.last().unwrap().seq.unwrap();
    for n in 0..5 {
        author.update(n, &payload("author", n)).await;
    }
    read_broadcasts(&mut peer, 5).await;
    // The state: peer's 10 updates (up to snapshot_seq) and author's own 5, then update 5
    // of the author after it, which the snapshot does not contain.
    author
        .send(&Message::SessionSnapshot {
            seq: snapshot_seq,
            data: UpdateData::from_bin(b"state after 15 updates"),
        })
        .await;
    author.update(5, &payload("author", 5)).await;
    let sentinel = read_broadcasts(&mut peer, 1).await;
    assert_eq!(sentinel[0].timestamp, 5);
    for n in 10..15 {
        peer.update(n, &payload("peer", n)).await;
    }
    read_broadcasts(&mut author, 5).await;

    let (mut late, response) =
        TestClient::register_with(cluster.addr(2), "late", token, Some(caps)).await;
    assert!(
        matches!(
            response,
            Message::RegistrationResponse { success: true, .. }
        ),
        "{response:?}"
    );
    let given_seq = match late.recv().await {
        Message::SessionSnapshot { seq, data } => {
            assert_eq!(data.to_vec().unwrap(), b"state after 15 updates");
            seq
        }
        other => panic!("late: expected the SessionSnapshot first, got {other:?}"),
    };
    let after = read_broadcasts(&mut late, 6).await;
    let got: Vec<(&str, u64)> = after
        .iter()
        .map(|b| (b.from.as_str(), b.timestamp))
        .collect();
    let mut expected = vec![("author", 5)];
    expected.extend((10..15).map(|n| ("peer", n)));
    assert_eq!(
        got, expected,
        "what the snapshot does not contain, in order"
    );
    assert!(after.iter().all(|b| b.seq.unwrap() > given_seq));
    assert!(late.sync().await.is_empty(), "nothing more");
}

/// An instance that joins, sends updates at once and leaves at once: every member, on its
/// node and on the others, is told it joined before its first update and left after its
/// last (presence comes through NATS's registry, the updates through the stream: two
/// consumers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_told_in_order_with_the_updates_of_who_joined_and_left() {
    let Some(cluster) = Cluster::start("departure-order", 2, &[]).await else {
        return;
    };
    let token = "departure-jam";
    let mut listeners = Vec::new();
    for node in 0..2 {
        let (listener, _) = crate::harness::join(
            &cluster,
            node,
            &format!("listener-{node}"),
            token,
            &["presence"],
        )
        .await;
        listeners.push(listener);
    }
    crate::harness::next_is_connected(&mut listeners[0], "listener-1").await;
    let data = vec![7u8; 16 * 1024];
    const ROUNDS: u64 = 20;
    const UPDATES: u64 = 5;
    for round in 0..ROUNDS {
        let node = usize::try_from(round % 2).unwrap();
        let name = format!("leaver-{round}");
        let (mut leaver, _) = crate::harness::join(&cluster, node, &name, token, &[]).await;
        for n in 1..=UPDATES {
            leaver.update(n, &data).await;
        }
        drop(leaver);
        for listener in &mut listeners {
            let (mut joined, mut seen) = (false, 0);
            loop {
                match listener.recv().await {
                    Message::InstanceConnected { instance_name, .. } => {
                        assert_eq!(instance_name, name, "{}", listener.name);
                        joined = true;
                    }
                    Message::StateBroadcast {
                        source_instance_name,
                        timestamp,
                        ..
                    } => {
                        assert_eq!(source_instance_name, name, "{}", listener.name);
                        assert!(
                            joined,
                            "{}: an update of {name} before it joined",
                            listener.name
                        );
                        seen += 1;
                        assert_eq!(timestamp, seen, "{}: from {name}", listener.name);
                    }
                    Message::InstanceDisconnected { instance_name, .. } => {
                        assert_eq!(instance_name, name, "{}", listener.name);
                        assert_eq!(
                            seen, UPDATES,
                            "{}: {name} left after {seen} of its {UPDATES} updates",
                            listener.name
                        );
                        break;
                    }
                    other => panic!("{}: unexpected {other:?}", listener.name),
                }
            }
        }
    }
}
