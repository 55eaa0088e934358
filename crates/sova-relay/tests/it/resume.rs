//! Resume after a dropped connection, and snapshots for late joiners (docs/PROTOCOL.md).

use std::collections::BTreeMap;

use sova_relay_protocol::{Message, ResumeRequest, UpdateData};

use crate::support::{register_message, TestClient, TestServer};

/// A resume-capable client's view: where it is in the session's history.
struct Resumable {
    client: TestClient,
    epoch: u64,
    last_seq: u64,
    secret: String,
}

async fn join_resumable(relay: &TestServer, name: &str) -> Resumable {
    let (client, response) =
        TestClient::register_with(relay.addr, name, None, Some(&["resume"])).await;
    let Message::RegistrationResponse {
        success: true,
        epoch: Some(epoch),
        seq: Some(seq),
        resume_secret: Some(secret),
        capabilities,
        ..
    } = response
    else {
        panic!("not registered with resume: {response:?}");
    };
    assert_eq!(capabilities, Some(vec!["resume".to_owned()]));
    assert_eq!(secret.len(), 32);
    Resumable {
        client,
        epoch,
        last_seq: seq,
        secret,
    }
}

/// Reconnects `name` asking to resume from `from`; returns the client and the response.
async fn resume(relay: &TestServer, name: &str, from: &Resumable) -> (TestClient, Message) {
    let mut client = TestClient::connect(relay.addr).await;
    let Message::RegisterInstance {
        instance_name,
        version,
        session_token,
        capabilities,
        ..
    } = register_message(name, "0.1.0", None, Some(&["resume"]))
    else {
        unreachable!()
    };
    let request = Message::RegisterInstance {
        instance_name,
        version,
        session_token,
        capabilities,
        resume: Some(ResumeRequest {
            epoch: from.epoch,
            seq: from.last_seq,
            secret: from.secret.clone(),
        }),
    };
    let response = client.register_by(request).await;
    (client, response)
}

fn resumed(response: &Message) -> Option<&str> {
    match response {
        Message::RegistrationResponse { resumed, .. } => resumed.as_deref(),
        other => panic!("not a registration response: {other:?}"),
    }
}

/// Reads broadcasts until `count` numbered updates from `from` were seen; returns their
/// timestamps and the last seq.
async fn read_numbered(client: &mut TestClient, from: &str, count: usize) -> (Vec<u64>, u64) {
    let mut timestamps = Vec::new();
    let mut last_seq = 0;
    while timestamps.len() < count {
        match client.recv().await {
            Message::StateBroadcast {
                source_instance_name,
                timestamp,
                seq: Some(seq),
                ..
            } if source_instance_name == from => {
                assert!(seq > last_seq, "seq went backwards: {seq} after {last_seq}");
                last_seq = seq;
                timestamps.push(timestamp);
            }
            Message::InstanceDisconnected { .. } | Message::InstanceConnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (timestamps, last_seq)
}

async fn dropped_mid_stream_then_resumed(keep_old_socket_open: bool) {
    let relay = TestServer::with(|c| c.rate_limit = 1_000_000).await;
    let mut alice = relay.client("alice").await;
    let mut bob = join_resumable(&relay, "bob").await;
    for i in 0..1000u64 {
        alice.update(i, &i.to_be_bytes()).await;
    }
    let (mut seen, last_seq) = read_numbered(&mut bob.client, "alice", 300).await;
    bob.last_seq = last_seq;
    // Either the connection is gone, or it is half-open: still registered, never read again.
    let old = if keep_old_socket_open {
        Some(std::mem::replace(
            &mut bob.client,
            TestClient::connect(relay.addr).await,
        ))
    } else {
        None
    };
    drop(std::mem::replace(
        &mut bob.client,
        TestClient::connect(relay.addr).await,
    ));
    let (mut resumed_client, response) = resume(&relay, "bob", &bob).await;
    assert_eq!(resumed(&response), Some("ok"), "{response:?}");
    let (rest, _) = read_numbered(&mut resumed_client, "alice", 700).await;
    seen.extend(rest);
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<_>>(),
        "every update exactly once, in order"
    );
    assert!(
        resumed_client.sync().await.is_empty(),
        "nothing more after the 1,000"
    );
    if let Some(mut old) = old {
        let farewell = old.expect_closed().await;
        assert!(farewell.contains(&Message::error("Replaced by a resumed connection")));
    }
}

#[tokio::test]
async fn a_dropped_client_resumes_with_every_update_exactly_once() {
    dropped_mid_stream_then_resumed(false).await;
}

#[tokio::test]
async fn a_resumed_connection_takes_over_a_half_open_one() {
    dropped_mid_stream_then_resumed(true).await;
}

#[tokio::test]
async fn a_wrong_secret_takes_nothing_over() {
    let relay = TestServer::start().await;
    let mut bob = join_resumable(&relay, "bob").await;
    bob.secret = "0".repeat(32);
    let (_, response) = resume(&relay, "bob", &bob).await;
    assert_eq!(
        response,
        Message::error("Instance name 'bob' already in use")
    );
    assert!(
        bob.client.sync().await.is_empty(),
        "the real bob is untouched"
    );
}

#[tokio::test]
async fn a_gap_beyond_the_history_requires_a_resync() {
    let relay = TestServer::with(|c| c.history_max_updates = 10).await;
    let mut alice = relay.client("alice").await;
    let bob = join_resumable(&relay, "bob").await;
    for i in 0..100u64 {
        alice.update(i, b"x").await;
    }
    assert!(alice.sync().await.is_empty());
    let (mut client, response) = resume(&relay, "bob2", &bob).await;
    assert_eq!(resumed(&response), Some("resync_required"));
    alice.update(100, b"live").await;
    match client.recv().await {
        Message::StateBroadcast { timestamp: 100, .. } => {}
        other => panic!("expected the live update, got {other:?}"),
    }
}

#[tokio::test]
async fn a_restarted_relay_has_a_new_epoch_and_asks_for_a_resync() {
    let relay = TestServer::start().await;
    let bob = join_resumable(&relay, "bob").await;
    let addr = relay.addr;
    relay.stop().await;
    let restarted = TestServer::on(&addr.to_string(), |_| {}).await;
    let (_, response) = resume(&restarted, "bob", &bob).await;
    let Message::RegistrationResponse {
        epoch: Some(epoch),
        resumed,
        ..
    } = &response
    else {
        panic!("{response:?}");
    };
    assert_ne!(*epoch, bob.epoch);
    assert_eq!(resumed.as_deref(), Some("resync_required"));
}

/// The model of a session's state: a map that updates `key=value` write into. Every
/// update is distinct, so applying one twice is caught (exactly once, not just the same end).
#[derive(Default, Debug, Clone)]
struct Model {
    map: BTreeMap<String, String>,
    applied: std::collections::BTreeSet<String>,
}

impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Model {
    fn apply(&mut self, update: &[u8]) {
        let text = String::from_utf8(update.to_vec()).unwrap();
        assert!(self.applied.insert(text.clone()), "{text} applied twice");
        let (key, value) = text.split_once('=').unwrap();
        self.map.insert(key.to_owned(), value.to_owned());
    }

    fn encode(&self) -> Vec<u8> {
        self.map
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut model = Model::default();
        for line in String::from_utf8(bytes.to_vec()).unwrap().lines() {
            model.apply(line.as_bytes());
        }
        model
    }
}

/// Applies `count` broadcasts (and whatever else arrives first); returns the last seq.
async fn apply_broadcasts(client: &mut TestClient, model: &mut Model, count: usize) -> u64 {
    let (mut applied, mut last_seq) = (0, 0);
    while applied < count {
        match client.recv().await {
            Message::StateBroadcast {
                update_data,
                seq: Some(seq),
                ..
            } => {
                model.apply(&update_data.to_vec().unwrap());
                (applied, last_seq) = (applied + 1, seq);
            }
            Message::InstanceConnected { .. } | Message::InstanceDisconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    last_seq
}

async fn send(client: &mut TestClient, model: &mut Model, timestamp: u64, update: &str) {
    client.update(timestamp, update.as_bytes()).await;
    model.apply(update.as_bytes());
}

async fn jam(
    alice: &mut TestClient,
    alice_model: &mut Model,
    field: &mut TestClient,
    field_model: &mut Model,
    rounds: std::ops::Range<u64>,
) -> u64 {
    let count = rounds.clone().count();
    for i in rounds {
        send(alice, alice_model, i, &format!("alice{}={i}", i % 7)).await;
        send(field, field_model, i, &format!("field{}={i}", i % 5)).await;
    }
    let alice_seq = apply_broadcasts(alice, alice_model, count).await;
    apply_broadcasts(field, field_model, count).await;
    alice_seq
}

#[tokio::test]
async fn a_late_joiner_starts_from_the_snapshot_and_ends_in_sync() {
    let relay = TestServer::with(|c| c.rate_limit = 1_000_000).await;
    let (mut alice, _) =
        TestClient::register_with(relay.addr, "alice", None, Some(&["snapshot"])).await;
    let mut field = relay.client("field").await;
    let (mut alice_model, mut field_model) = (Model::default(), Model::default());
    let alice_seq = jam(
        &mut alice,
        &mut alice_model,
        &mut field,
        &mut field_model,
        0..50,
    )
    .await;
    assert_eq!(alice_model, field_model, "the two early instances agree");

    // Alice's latest updates are in her state though she received nothing after them: the
    // snapshot must not make a joiner apply them twice.
    for i in 100..103u64 {
        send(
            &mut alice,
            &mut alice_model,
            i,
            &format!("alice-late{i}={i}"),
        )
        .await;
    }
    apply_broadcasts(&mut field, &mut field_model, 3).await;
    // Alice publishes her state, then the jam goes on, with her own updates and field's
    // interleaved with the snapshot in flight.
    let snapshot = Message::SessionSnapshot {
        seq: alice_seq,
        data: UpdateData::from_bin(&alice_model.encode()),
    };
    send(&mut field, &mut field_model, 50, "field-racing=1").await;
    alice.send(&snapshot).await;
    apply_broadcasts(&mut alice, &mut alice_model, 1).await;
    jam(
        &mut alice,
        &mut alice_model,
        &mut field,
        &mut field_model,
        51..80,
    )
    .await;
    assert_eq!(alice_model, field_model);

    let (mut carol, response) =
        TestClient::register_with(relay.addr, "carol", None, Some(&["snapshot"])).await;
    assert!(matches!(
        response,
        Message::RegistrationResponse { success: true, .. }
    ));
    let Message::SessionSnapshot { data, seq } = carol.recv().await else {
        panic!("no snapshot for the late joiner");
    };
    assert_eq!(seq, alice_seq);
    let mut carol_model = Model::decode(&data.to_vec().unwrap());
    for message in carol.sync().await {
        match message {
            Message::StateBroadcast { update_data, .. } => {
                carol_model.apply(&update_data.to_vec().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        carol_model, alice_model,
        "the late joiner holds the same state"
    );

    let seen = field.sync().await;
    assert!(
        seen.iter().all(|m| !matches!(
            m,
            Message::SessionSnapshot { .. } | Message::InstanceConnected { .. }
        )),
        "{seen:?}"
    );
}

#[tokio::test]
async fn snapshots_need_the_capability_and_a_sane_seq() {
    let relay = TestServer::with(|c| c.max_snapshot_bytes = 100).await;
    let mut field = relay.client("field").await;
    let snapshot = |seq, len| Message::SessionSnapshot {
        seq,
        data: UpdateData::from_bin(&vec![0; len]),
    };
    field.send(&snapshot(0, 1)).await;
    field
        .expect_error("Unexpected message: SessionSnapshot (capability `snapshot` not granted)")
        .await;
    let (mut modern, _) =
        TestClient::register_with(relay.addr, "modern", None, Some(&["snapshot"])).await;
    modern.send(&snapshot(0, 1000)).await;
    modern
        .expect_error("Snapshot too large: 1003 bytes (max: 100)")
        .await;
    modern.send(&snapshot(5, 1)).await;
    modern
        .expect_error("Snapshot refused: seq 5 is ahead of the session (latest broadcast: 0)")
        .await;
}

#[tokio::test]
async fn a_resumed_instance_never_gets_its_own_updates_back_even_across_resumes() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = join_resumable(&relay, "bob").await;
    for round in 1..=2u64 {
        // Bob's own update is in the history after the seq he last received.
        bob.client.update(round, b"from bob").await;
        let (timestamps, _) = read_numbered(&mut alice, "bob", 1).await;
        assert_eq!(timestamps, [round]);
        drop(std::mem::replace(
            &mut bob.client,
            TestClient::connect(relay.addr).await,
        ));
        let (mut client, response) = resume(&relay, "bob", &bob).await;
        assert_eq!(resumed(&response), Some("ok"));
        let Message::RegistrationResponse { resume_secret, .. } = &response else {
            unreachable!()
        };
        assert_eq!(
            resume_secret.as_deref(),
            Some(bob.secret.as_str()),
            "the secret names the instance"
        );
        assert!(
            client.sync().await.is_empty(),
            "bob got his own update back"
        );
        bob.client = client;
    }
}
