//! Repairs of the cluster's shared state, seen from the clients and from NATS itself:
//!
//! - a live instance whose entry in `sova_names` another node deleted (this node judged
//!   dead while cut off) claims its name again, or is closed if the name was taken;
//! - NATS back without the update stream (memory storage, restarted empty): every node's
//!   instances are told to reconnect, and the cluster works again with a new epoch;
//! - a node stopped with SIGTERM frees its names at once, not after the expiry;
//! - a resume with an epoch that is not the cluster's gets `resync_required`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};
use sova_relay_protocol::{Message, ResumeRequest};
use uuid::Uuid;

use crate::harness::{
    join, next_is_connected, next_is_disconnected, resume, Cluster, EXPIRY, WAIT,
};
use crate::relaying::{payload, read_broadcasts};
use crate::support::{assert_broadcast, TestClient};

/// Expects an `Error` with exactly `text` and then the end of the connection; presence
/// events before the error are skipped.
async fn expect_closed_with(client: &mut TestClient, text: &str) {
    loop {
        match client.recv().await {
            Message::Error { message } => {
                assert_eq!(message, text, "{}", client.name);
                break;
            }
            Message::InstanceConnected { .. } | Message::InstanceDisconnected { .. } => {}
            other => panic!("{}: expected Error {text:?}, got {other:?}", client.name),
        }
    }
    let after = client.expect_closed().await;
    assert!(
        after.is_empty(),
        "{}: after the error: {after:?}",
        client.name
    );
}

/// The resume fields of a successful registration: epoch, seq, secret.
fn resume_fields(response: &Message) -> (u64, u64, String) {
    match response {
        Message::RegistrationResponse {
            epoch: Some(epoch),
            seq: Some(seq),
            resume_secret: Some(secret),
            ..
        } => (*epoch, *seq, secret.clone()),
        other => panic!("no resume fields: {other:?}"),
    }
}

/// The key of `name` in `sova_names`: the session key (the first 16 hex digits of
/// SHA-256("sova-session:" + token)), a dot, the name in hex.
fn name_key(token: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("sova-session:{token}").as_bytes());
    format!("{}.{}", hex::encode(&digest[..8]), hex::encode(name))
}

/// A KV bucket of the cluster, through a NATS connection of the test's own.
async fn bucket(cluster: &Cluster, name: &str) -> kv::Store {
    let open = async {
        let client = async_nats::connect(cluster.nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
            .get_key_value(name)
            .await
            .unwrap()
    };
    tokio::time::timeout(WAIT, open)
        .await
        .unwrap_or_else(|_| panic!("bucket {name}: NATS did not answer within {WAIT:?}"))
}

/// The current entry of `key` as JSON with its revision, or `None` if it is absent or
/// deleted.
async fn current(names: &kv::Store, key: &str) -> Option<(serde_json::Value, u64)> {
    let entry = names.entry(key).await.unwrap()?;
    (entry.operation == kv::Operation::Put).then(|| {
        (
            serde_json::from_slice(&entry.value).unwrap(),
            entry.revision,
        )
    })
}

/// The instance id an entry holds.
fn id_of(value: &serde_json::Value) -> Uuid {
    value["id"].as_str().unwrap().parse().unwrap()
}

/// Polls `key` until its entry satisfies `check`; that entry.
async fn wait_entry(
    names: &kv::Store,
    key: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let entry = current(names, key).await;
        if let Some(found) = entry.as_ref().filter(|(value, _)| check(value)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{key} never showed {what} within {WAIT:?}; last: {entry:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_live_instance_whose_entry_another_node_deleted_claims_its_name_again() {
    let Some(cluster) = Cluster::start("reclaim", 2, &[]).await else {
        return;
    };
    let token = "reclaim";
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence"]).await;
    let (mut a, _) = join(&cluster, 0, "a", token, &[]).await;
    assert_eq!(next_is_connected(&mut b, "a").await, a.id);

    let names = bucket(&cluster, "sova_names").await;
    let key = name_key(token, "a");
    let (value, revision) = current(&names, &key).await.expect("a's entry");
    assert_eq!(
        (id_of(&value), value["node"].as_str()),
        (a.id, Some("node-0"))
    );
    // What a survivor's dead-node sweep does to the entries of a node it judged dead.
    names
        .delete_expect_revision(&key, Some(revision))
        .await
        .unwrap();

    // node-0 claims the name again, for the same instance.
    let (again, new_revision) = wait_entry(&names, &key, "a again", |v| id_of(v) == a.id).await;
    assert_eq!(again["node"], "node-0");
    assert_eq!(again["name"], "a");
    assert!(new_revision > revision, "{new_revision} after {revision}");
    // node-1 followed the entry: a left, then came back, as the same instance.
    assert_eq!(next_is_disconnected(&mut b, "a").await, a.id);
    assert_eq!(next_is_connected(&mut b, "a").await, a.id);

    // a never noticed, and plays on both ways.
    a.update(1, &payload("a", 1)).await;
    assert_broadcast(&b.recv().await, "a", 1, &payload("a", 1));
    b.update(2, &payload("b", 2)).await;
    assert_broadcast(&a.recv().await, "b", 2, &payload("b", 2));
    assert!(a.sync().await.is_empty(), "a: nothing else");
    assert!(b.sync().await.is_empty(), "b: nothing else");
    // The name is still a's, cluster-wide.
    for node in 0..2 {
        let (_, refused) =
            TestClient::register_with(cluster.addr(node), "a", Some(token), None).await;
        assert_eq!(
            refused,
            Message::error("Instance name 'a' already in use"),
            "node-{node}"
        );
    }
}

/// `a` registered on node-0; its entry deleted (as a sweep would), then at once created
/// by "node-1" for another instance named `a`. Returns the error `a` was closed with.
async fn name_taken_elsewhere_meanwhile(label: &str) -> Option<String> {
    let cluster = Cluster::start(label, 2, &[]).await?;
    let token = label;
    let (mut a, _) = join(&cluster, 0, "a", token, &[]).await;
    let names = bucket(&cluster, "sova_names").await;
    let nodes = bucket(&cluster, "sova_nodes").await;
    let key = name_key(token, "a");
    // The entry node-1 would write for an instance of its own named `a`: a's, with another
    // id, node-1's name and incarnation, and no resume secret.
    let beat = nodes
        .entry("node-1")
        .await
        .unwrap()
        .expect("node-1's heartbeat");
    let beat: serde_json::Value = serde_json::from_slice(&beat.value).unwrap();
    let (mut taken, _) = current(&names, &key).await.expect("a's entry");
    let other = Uuid::new_v4();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    taken["id"] = serde_json::json!(other);
    taken["node"] = serde_json::json!("node-1");
    taken["incarnation"] = beat["incarnation"].clone();
    taken["connected_at_ms"] = serde_json::json!(now_ms);
    taken["secret_sha256"] = serde_json::Value::Null;
    let taken: bytes::Bytes = serde_json::to_vec(&taken).unwrap().into();

    // Should node-0 claim the name back before the test's create, the create fails and
    // the test tries again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (value, revision) = current(&names, &key).await.expect("a's entry");
        assert_eq!(id_of(&value), a.id);
        names
            .delete_expect_revision(&key, Some(revision))
            .await
            .unwrap();
        match names.create(&key, taken.clone()).await {
            Ok(_) => break,
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists && attempts < 20 => {
                eprintln!("cluster: node-0 claimed a again before the test's create; retrying");
                wait_entry(&names, &key, "a again", |v| id_of(v) == a.id).await;
            }
            Err(err) => panic!("create after {attempts} attempts: {err}"),
        }
    }

    let error = match a.recv().await {
        Message::Error { message } => message,
        other => panic!("a: expected an Error, got {other:?}"),
    };
    let after = a.expect_closed().await;
    assert!(after.is_empty(), "a after the error: {after:?}");
    // node-0 left the other instance's entry alone, and the name stays taken there (node-1
    // would hand it out: the entry names an instance of its own that it does not have).
    let (value, _) = current(&names, &key).await.expect("the new entry");
    assert_eq!(id_of(&value), other);
    let (_, refused) = TestClient::register_with(cluster.addr(0), "a", Some(token), None).await;
    assert_eq!(refused, Message::error("Instance name 'a' already in use"));
    Some(error)
}

#[tokio::test]
async fn a_live_instance_whose_name_was_taken_elsewhere_meanwhile_is_closed() {
    let Some(error) = name_taken_elsewhere_meanwhile("reclaim-lost").await else {
        return;
    };
    assert_eq!(error, "Instance name 'a' was claimed on another node");
}

/// Two nodes with `--cluster-storage memory`, `a` on node-0 and `b` (presence) on node-1;
/// NATS restarted empty: both are closed, told to reconnect. Returns the cluster once
/// both nodes are ready again, and the epoch before.
async fn nats_back_empty(label: &str) -> Option<(Cluster, u64)> {
    let mut cluster = Cluster::start(label, 2, &["--cluster-storage", "memory"]).await?;
    let token = label;
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence", "resume"]).await;
    let (mut a, response) = join(&cluster, 0, "a", token, &["resume"]).await;
    let (old_epoch, _, _) = resume_fields(&response);
    assert_eq!(next_is_connected(&mut b, "a").await, a.id);
    a.update(0, &payload("a", 0)).await;
    assert_eq!(read_broadcasts(&mut b, 1).await[0].data, payload("a", 0));

    cluster.nats.terminate();
    for node in &cluster.nodes {
        node.wait_ready(503, WAIT).await;
    }
    cluster.nats.restart_empty();
    // Each node finds a new update stream (a new epoch): the seqs it handed out mean
    // nothing any more, so its instances must start again.
    let text = "The cluster lost its history: reconnect";
    expect_closed_with(&mut a, text).await;
    expect_closed_with(&mut b, text).await;
    for node in &cluster.nodes {
        node.wait_ready(200, WAIT).await;
    }
    Some((cluster, old_epoch))
}

#[tokio::test]
async fn nats_back_without_its_memory_streams_makes_every_instance_reconnect() {
    let label = "memory-restart";
    let Some((cluster, old_epoch)) = nats_back_empty(label).await else {
        return;
    };
    // Registrations work again, with the new epoch, and updates cross the nodes.
    let (mut b, response) = join(&cluster, 1, "b", label, &["resume"]).await;
    let (epoch, _, _) = resume_fields(&response);
    assert_ne!(epoch, old_epoch, "the epoch after NATS lost the stream");
    let (mut a, response) = join(&cluster, 0, "a", label, &["resume"]).await;
    assert_eq!(resume_fields(&response).0, epoch, "both nodes' epoch");
    for n in 1..4 {
        a.update(n, &payload("a", n)).await;
    }
    let at_b = read_broadcasts(&mut b, 3).await;
    b.update(0, &payload("b", 0)).await;
    let at_a = read_broadcasts(&mut a, 1).await;
    let got: Vec<(&str, u64, bool)> = at_b
        .iter()
        .chain(&at_a)
        .map(|x| (x.from.as_str(), x.timestamp, x.seq.is_some()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", 1, true),
            ("a", 2, true),
            ("a", 3, true),
            ("b", 0, true)
        ]
    );
    // And a newcomer on node-1 hears a.
    let (mut c, _) = join(&cluster, 1, "c", label, &[]).await;
    a.update(4, &payload("a", 4)).await;
    assert_eq!(read_broadcasts(&mut c, 1).await[0].data, payload("a", 4));
}

#[tokio::test]
async fn nats_back_without_its_memory_streams_leaves_no_stale_view() {
    let label = "memory-view";
    let Some((cluster, _)) = nats_back_empty(label).await else {
        return;
    };
    // node-1 forgot the instances of before: b registers alone (the response lists the
    // others), and hears a join.
    let (mut b, response) = join(&cluster, 1, "b", label, &["presence"]).await;
    let Message::RegistrationResponse {
        current_instances, ..
    } = &response
    else {
        unreachable!()
    };
    let names: Vec<&str> = current_instances.iter().map(|i| i.name.as_str()).collect();
    assert!(
        names.is_empty(),
        "node-1 after NATS lost everything: {names:?}"
    );
    let (a, _) = join(&cluster, 0, "a", label, &[]).await;
    assert_eq!(next_is_connected(&mut b, "a").await, a.id);
}

#[tokio::test]
async fn a_node_stopped_gracefully_frees_its_names_well_before_the_expiry() {
    let Some(mut cluster) = Cluster::start("graceful", 2, &[]).await else {
        return;
    };
    let token = "graceful";
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence"]).await;
    let (mut a, _) = join(&cluster, 0, "a", token, &[]).await;
    assert_eq!(next_is_connected(&mut b, "a").await, a.id);

    // The stopping node frees its names itself, before it exits: no other node's sweep (or
    // its grace period after connecting) is needed.
    let stopped = cluster.nodes[0].terminate();
    // Another `a` tries node-1 every 50 ms until the name is free there.
    let mut attempts = 0;
    let (mut fresh, freed) = loop {
        attempts += 1;
        let (client, response) =
            TestClient::register_with(cluster.addr(1), "a", Some(token), None).await;
        match response {
            Message::RegistrationResponse { success: true, .. } => {
                break (client, stopped.elapsed())
            }
            refused => assert_eq!(refused, Message::error("Instance name 'a' already in use")),
        }
        assert!(
            stopped.elapsed() < WAIT,
            "the name was still taken {WAIT:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "cluster: a's name free on node-1 {freed:?} after SIGTERM to node-0 \
         ({attempts} attempts; --cluster-expiry {EXPIRY:?})"
    );
    // A SIGKILLed node's heartbeat was renewed at most expiry/4 before it died, so its
    // names are freed no sooner than 3/4 of the expiry after: under half of it, the
    // goodbye freed them, not the expiry.
    assert!(
        freed < EXPIRY / 2,
        "a's name freed {freed:?} after SIGTERM (expiry {EXPIRY:?})"
    );
    // node-0 said goodbye to a, exited cleanly, and b was told once that a left.
    expect_closed_with(&mut a, "Relay shutting down").await;
    let status = cluster.nodes[0].wait_exit(WAIT);
    assert!(status.success(), "node-0 after SIGTERM: {status}");
    assert_eq!(next_is_disconnected(&mut b, "a").await, a.id);
    assert_eq!(next_is_connected(&mut b, "a").await, fresh.id);
    fresh.update(1, &payload("a", 1)).await;
    assert_broadcast(&b.recv().await, "a", 1, &payload("a", 1));
    assert!(b.sync().await.is_empty(), "b: nothing else");
}

#[tokio::test]
async fn a_resume_on_another_node_with_a_foreign_epoch_must_resync() {
    let Some(cluster) = Cluster::start("resync", 3, &[]).await else {
        return;
    };
    let token = "resync";
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence"]).await;
    let (mut a, response) = join(&cluster, 0, "a", token, &["resume"]).await;
    let (epoch, _, secret) = resume_fields(&response);
    let old_a = next_is_connected(&mut b, "a").await;
    for n in 0..5 {
        b.update(n, &payload("b", n)).await;
    }
    let last_seq = read_broadcasts(&mut a, 5).await[4].seq.unwrap();
    // a's connection ends; b sends on, and a misses these.
    drop(a);
    assert_eq!(next_is_disconnected(&mut b, "a").await, old_a);
    for n in 5..10 {
        b.update(n, &payload("b", n)).await;
    }

    // Back on node-1 with an epoch that is not the cluster's: registered, but told to
    // rebuild its state; nothing is replayed, live broadcasts follow.
    let foreign = epoch.wrapping_add(1);
    let from = ResumeRequest {
        epoch: foreign,
        seq: last_seq,
        secret: secret.clone(),
    };
    let (mut resync, response) = resume(&cluster, 1, "a", token, from).await;
    match &response {
        Message::RegistrationResponse {
            success: true,
            resumed: Some(outcome),
            epoch: Some(given),
            ..
        } => {
            assert_eq!(outcome, "resync_required", "{response:?}");
            assert_eq!(*given, epoch, "the cluster's epoch, not the foreign one");
        }
        other => panic!("a could not register on node-1: {other:?}"),
    }
    assert!(resync.sync().await.is_empty(), "a: nothing replayed");
    assert_eq!(next_is_connected(&mut b, "a").await, resync.id);
    b.update(10, &payload("b", 10)).await;
    assert_broadcast(&resync.recv().await, "b", 10, &payload("b", 10));
    resync.update(100, &payload("a", 100)).await;
    assert_broadcast(&b.recv().await, "a", 100, &payload("a", 100));

    // The same point with the cluster's epoch, on node-2: everything after it is replayed
    // (b's 5..=10, never a's own), and the resynced connection is replaced.
    let from = ResumeRequest {
        epoch,
        seq: last_seq,
        secret,
    };
    let (mut resumed, response) = resume(&cluster, 2, "a", token, from).await;
    assert!(
        matches!(
            &response,
            Message::RegistrationResponse { success: true, resumed: Some(outcome), .. }
                if outcome == "ok"
        ),
        "a on node-2: {response:?}"
    );
    let replayed: Vec<(String, u64)> = read_broadcasts(&mut resumed, 6)
        .await
        .into_iter()
        .map(|x| (x.from, x.timestamp))
        .collect();
    let expected: Vec<(String, u64)> = (5..=10).map(|n| ("b".to_owned(), n)).collect();
    assert_eq!(replayed, expected);
    expect_closed_with(&mut resync, "Replaced by a resumed connection").await;
    assert!(resumed.sync().await.is_empty(), "a on node-2: nothing else");
}
