//! Client behaviour, checked frame by frame against a scripted relay.

use std::time::Duration;

use sova_relay_client::{ClientError, Event, RelayClient, UpdateForm};
use sova_relay_protocol::{
    Message, ResumeRequest, UpdateData, CAPABILITY_PONG, CAPABILITY_PRESENCE, CAPABILITY_RESUME,
};
use uuid::Uuid;

use crate::scripted::{ScriptedRelay, PATIENCE};
use crate::{config, next};

/// Connects a client to `relay`, accepting its registration; returns both ends.
async fn connected(
    relay: &ScriptedRelay,
    config: sova_relay_client::ClientConfig,
) -> (RelayClient, crate::scripted::Conn, Uuid) {
    let addr = relay.addr();
    let connecting = tokio::spawn(async move { RelayClient::connect(&addr, config).await });
    let mut conn = relay.accept().await;
    let (_, id) = conn.accept_registration(&[]).await;
    (connecting.await.unwrap().unwrap(), conn, id)
}

#[tokio::test]
async fn registers_with_capabilities_and_sends_the_array_form() {
    let relay = ScriptedRelay::bind().await;
    let addr = relay.addr();
    let connecting = tokio::spawn(async move {
        RelayClient::connect(&addr, config("alice").session_token("jam")).await
    });
    let mut conn = relay.accept().await;
    let Message::RegisterInstance {
        instance_name,
        version,
        session_token,
        capabilities,
        resume,
    } = conn.recv().await
    else {
        panic!("expected RegisterInstance");
    };
    assert_eq!(instance_name, "alice");
    assert_eq!(version, "0.1.0");
    assert_eq!(session_token.as_deref(), Some("jam"));
    assert_eq!(
        capabilities.unwrap(),
        [CAPABILITY_PONG, CAPABILITY_PRESENCE, CAPABILITY_RESUME]
    );
    assert_eq!(resume, None, "nothing to resume yet");
    conn.send(&Message::RegistrationResponse {
        success: true,
        message: "Registered as alice".to_owned(),
        assigned_id: Some(Uuid::from_u128(7)),
        current_instances: vec![],
        capabilities: None,
        epoch: None,
        seq: None,
        resume_secret: None,
        resumed: None,
    })
    .await;
    let client = connecting.await.unwrap().unwrap();
    assert_eq!(client.instance_id(), Some(Uuid::from_u128(7)));

    client.send_update_at([1, 2, 200], 42).unwrap();
    let (id, timestamp, data) = conn.recv_update().await;
    assert_eq!((id, timestamp), (Uuid::from_u128(7), 42));
    assert_eq!(data.raw().as_ref(), &[0x93, 1, 2, 0xcc, 200]);
}

#[tokio::test]
async fn bin_form_on_request() {
    let relay = ScriptedRelay::bind().await;
    let mut cfg = config("alice");
    cfg.update_form = UpdateForm::Bin;
    let (client, mut conn, _) = connected(&relay, cfg).await;
    client.send_update([1, 2, 3]).unwrap();
    let (_, _, data) = conn.recv_update().await;
    assert_eq!(data.raw().as_ref(), &[0xc4, 3, 1, 2, 3]);
}

#[tokio::test]
async fn both_update_forms_are_received_and_presence_is_reported() {
    let relay = ScriptedRelay::bind().await;
    let (mut client, mut conn, _) = connected(&relay, config("alice")).await;
    let bob = Uuid::new_v4();
    conn.send(&Message::InstanceConnected {
        instance_id: bob,
        instance_name: "bob".to_owned(),
    })
    .await;
    for (timestamp, data) in [
        (1, UpdateData::from_array(&[9, 250])),
        (2, UpdateData::from_bin(&[9, 250])),
    ] {
        conn.send(&Message::StateBroadcast {
            source_instance_name: "bob".to_owned(),
            timestamp,
            update_data: data,
            seq: None,
        })
        .await;
    }
    conn.send(&Message::error("Rate limit exceeded for instance alice"))
        .await;
    conn.send(&Message::InstanceDisconnected {
        instance_id: bob,
        instance_name: "bob".to_owned(),
    })
    .await;
    let events = client.events();
    assert_eq!(
        next(events).await,
        Event::Joined {
            id: bob,
            name: "bob".to_owned()
        }
    );
    for timestamp in [1, 2] {
        let expected = Event::Broadcast {
            from: "bob".to_owned(),
            timestamp,
            data: vec![9, 250],
        };
        assert_eq!(next(events).await, expected);
    }
    assert_eq!(
        next(events).await,
        Event::Error("Rate limit exceeded for instance alice".to_owned())
    );
    assert_eq!(
        next(events).await,
        Event::Left {
            id: bob,
            name: "bob".to_owned()
        }
    );
    assert!(client.peers().is_empty());
}

#[tokio::test]
async fn answers_relay_pings_and_estimates_its_clock() {
    let relay = ScriptedRelay::bind().await;
    let (client, mut conn, _) = connected(&relay, config("alice")).await;
    // The client pings right after registering, to learn the round trip.
    let Message::Ping { timestamp } = conn.recv().await else {
        panic!("expected the client's first ping");
    };
    conn.send(&Message::Pong { timestamp }).await;
    // The relay's clock runs exactly 60 s ahead of ours. Its ping is stamped at `stamped`,
    // and the client has certainly received it by the time its pong is back (`answered`).
    let stamped = local_ms();
    let relay_clock = sova_relay_client::now_ms() + 60_000;
    conn.send(&Message::Ping {
        timestamp: relay_clock,
    })
    .await;
    assert_eq!(
        conn.recv().await,
        Message::Pong {
            timestamp: relay_clock
        }
    );
    let answered = local_ms();

    // From now on, answer every ping (the client pings again after the relay's ping).
    tokio::spawn(async move {
        loop {
            conn.recv_skipping_pings().await;
        }
    });
    let rtt = client.ping().await;
    assert!(rtt.unwrap() < PATIENCE);

    let offset = client
        .clock_offset()
        .expect("an estimate after a relay ping");
    // The estimate assumes the relay's ping travelled no slower than our fastest round trip
    // (`error_bound`). Here "travel" includes the time the client task waited to be
    // scheduled, which on a loaded machine can be tens of milliseconds more: the estimate
    // is then low by that wait, which is at most `answered - stamped`. So the error lies in
    // [-(answered - stamped), error_bound], plus 1 ms for each whole-millisecond clock read.
    let error = offset.offset_ms - 60_000.0;
    let bound = offset.error_bound.as_secs_f64() * 1000.0;
    let wait = answered - stamped;
    assert!(
        -(wait + 2.0) <= error && error <= bound + 2.0,
        "error {error:.1} ms outside [-{wait:.1} - 2, {bound:.1} + 2]: {offset:?}"
    );
    assert!(
        offset.error_bound < Duration::from_millis(500),
        "{offset:?}"
    );
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision.
fn local_ms() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_secs_f64() * 1000.0
}

#[tokio::test]
async fn registration_errors_are_typed_and_keep_the_relay_text() {
    let cases = [
        "Version mismatch: expected 0.1.0, got 0.0.9",
        "Maximum instances (1) reached",
        "Instance name 'alice' already in use",
        "Invalid session token",
    ];
    for text in cases {
        let relay = ScriptedRelay::bind().await;
        let addr = relay.addr();
        let connecting =
            tokio::spawn(async move { RelayClient::connect(&addr, config("alice")).await });
        relay.accept().await.refuse_registration(text).await;
        let err = connecting.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), text);
        let typed = match text.chars().next() {
            Some('V') => matches!(err, ClientError::VersionMismatch(_)),
            Some('M') => matches!(err, ClientError::Full(_)),
            Some('I') if text.contains("name") => matches!(err, ClientError::NameTaken(_)),
            _ => matches!(err, ClientError::InvalidToken(_)),
        };
        assert!(typed, "{err:?}");
    }
}

#[tokio::test]
async fn a_silent_relay_times_out_and_a_bad_name_never_connects() {
    let relay = ScriptedRelay::bind().await;
    let mut cfg = config("alice");
    cfg.connect_timeout = Duration::from_millis(200);
    let addr = relay.addr();
    let connecting = tokio::spawn(async move { RelayClient::connect(&addr, cfg).await });
    let _conn = relay.accept().await;
    let err = connecting.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");

    let err = RelayClient::connect(&relay.addr(), config(""))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidName(_)), "{err:?}");
    assert!(!relay.connects_within(Duration::from_millis(50)).await);
}

#[tokio::test]
async fn the_queue_bound_is_a_clear_error() {
    let relay = ScriptedRelay::bind().await;
    let mut cfg = config("alice");
    cfg.queue_capacity = 2;
    let (client, conn, _) = connected(&relay, cfg).await;
    drop(conn);
    // The client sees the connection end, then reconnects in vain while updates queue up.
    let mut client = client;
    assert!(matches!(
        next(client.events()).await,
        Event::Disconnected(_)
    ));
    client.send_update([1]).unwrap();
    client.send_update([2]).unwrap();
    let err = client.send_update([3]).unwrap_err();
    assert!(
        matches!(err, ClientError::QueueFull { capacity: 2 }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "outgoing queue full (2 updates waiting)");
    assert!(matches!(
        client.send_update(vec![0; 2 << 20]),
        Err(ClientError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn reconnects_through_a_stale_name_then_sends_what_was_queued_in_order() {
    let relay = ScriptedRelay::bind().await;
    let bob = Uuid::new_v4();
    let addr = relay.addr();
    let connecting =
        tokio::spawn(async move { RelayClient::connect(&addr, config("alice")).await });
    let mut conn = relay.accept().await;
    conn.accept_registration(&[(bob, "bob")]).await;
    let mut client = connecting.await.unwrap().unwrap();
    client.send_update([0]).unwrap();
    assert_eq!(conn.recv_update().await.2.to_vec().unwrap(), [0]);
    drop(conn);
    assert!(matches!(
        next(client.events()).await,
        Event::Disconnected(_)
    ));
    assert_eq!(client.instance_id(), None);
    for i in 1..=5u8 {
        client.send_update([i]).unwrap();
    }
    // The relay has not noticed yet that the old connection is gone: the name is taken.
    for _ in 0..2 {
        relay
            .accept()
            .await
            .refuse_registration("Instance name 'alice' already in use")
            .await;
    }
    let mut conn = relay.accept().await;
    let carol = Uuid::new_v4();
    let (name, id) = conn.accept_registration(&[(carol, "carol")]).await;
    assert_eq!(name, "alice");
    for i in 1..=5u8 {
        let (source, _, data) = conn.recv_update().await;
        assert_eq!((source, data.to_vec().unwrap()), (id, vec![i]));
    }
    client.flush().await.unwrap();
    let events = client.events();
    assert_eq!(next(events).await, Event::Reconnected);
    assert_eq!(
        next(events).await,
        Event::Left {
            id: bob,
            name: "bob".to_owned()
        }
    );
    assert_eq!(
        next(events).await,
        Event::Joined {
            id: carol,
            name: "carol".to_owned()
        }
    );
    assert_eq!(client.instance_id(), Some(id));
}

#[tokio::test]
async fn no_retry_after_a_version_mismatch_on_reconnect() {
    let relay = ScriptedRelay::bind().await;
    let (mut client, conn, _) = connected(&relay, config("alice")).await;
    drop(conn);
    relay
        .accept()
        .await
        .refuse_registration("Version mismatch: expected 0.2.0, got 0.1.0")
        .await;
    let events = client.events();
    assert!(matches!(next(events).await, Event::Disconnected(_)));
    assert_eq!(
        next(events).await,
        Event::Error("Version mismatch: expected 0.2.0, got 0.1.0".to_owned())
    );
    assert_eq!(
        tokio::time::timeout(PATIENCE, events.recv()).await.unwrap(),
        None
    );
    assert!(!relay.connects_within(Duration::from_millis(300)).await);
    assert!(matches!(client.send_update([1]), Err(ClientError::Closed)));
}

#[tokio::test]
async fn without_reconnect_the_stream_ends_after_disconnected() {
    let relay = ScriptedRelay::bind().await;
    let cfg = config("alice").reconnect(sova_relay_client::ReconnectConfig::disabled());
    let (mut client, conn, _) = connected(&relay, cfg).await;
    drop(conn);
    assert!(matches!(
        next(client.events()).await,
        Event::Disconnected(_)
    ));
    assert_eq!(client.next_event().await, None);
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn close_writes_the_queue_and_half_closes() {
    let relay = ScriptedRelay::bind().await;
    let (client, mut conn, _) = connected(&relay, config("alice")).await;
    for i in 0..100u8 {
        client.send_update([i]).unwrap();
    }
    let closing = tokio::spawn(async move {
        client.close().await;
        client
    });
    for i in 0..100u8 {
        assert_eq!(conn.recv_update().await.2.to_vec().unwrap(), [i]);
    }
    // End of stream from the client; answer by closing, as the relay does.
    while tokio::time::timeout(PATIENCE, conn.try_recv())
        .await
        .unwrap()
        .is_some()
    {}
    drop(conn);
    let mut client = tokio::time::timeout(PATIENCE, closing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next_event().await, None);
    assert_eq!(client.instance_id(), None);
}

#[tokio::test]
async fn a_relay_that_stops_answering_pings_is_declared_dead_and_left() {
    let relay = ScriptedRelay::bind().await;
    let mut cfg = config("alice");
    cfg.heartbeat_interval = Some(Duration::from_millis(50));
    cfg.request_timeout = Duration::from_millis(100);
    // The connection stays open, but nothing is ever answered.
    let (mut client, _silent, _) = connected(&relay, cfg).await;
    let Event::Disconnected(reason) = next(client.events()).await else {
        panic!("expected Disconnected");
    };
    assert!(reason.contains("timed out"), "{reason}");
    let mut conn = relay.accept().await;
    conn.accept_registration(&[]).await;
    assert_eq!(next(client.events()).await, Event::Reconnected);
}

/// A registration response from a relay with the extensions.
fn extended_response(epoch: u64, seq: u64, secret: &str, resumed: Option<&str>) -> Message {
    Message::RegistrationResponse {
        success: true,
        message: "Registered as bob".to_owned(),
        assigned_id: Some(Uuid::new_v4()),
        current_instances: vec![],
        capabilities: Some(vec![
            "pong".to_owned(),
            "presence".to_owned(),
            "resume".to_owned(),
            "snapshot".to_owned(),
        ]),
        epoch: Some(epoch),
        seq: Some(seq),
        resume_secret: Some(secret.to_owned()),
        resumed: resumed.map(str::to_owned),
    }
}

fn broadcast(from: &str, seq: u64) -> Message {
    Message::StateBroadcast {
        source_instance_name: from.to_owned(),
        timestamp: seq,
        update_data: UpdateData::from_array(&seq.to_be_bytes()),
        seq: Some(seq),
    }
}

fn broadcast_event(from: &str, seq: u64) -> Event {
    Event::Broadcast {
        from: from.to_owned(),
        timestamp: seq,
        data: seq.to_be_bytes().to_vec(),
    }
}

/// The client's `RegisterInstance`: its capabilities and resume request.
async fn registration(conn: &mut crate::scripted::Conn) -> (Vec<String>, Option<ResumeRequest>) {
    match conn.recv().await {
        Message::RegisterInstance {
            capabilities,
            resume,
            ..
        } => (capabilities.unwrap_or_default(), resume),
        other => panic!("expected RegisterInstance, got {other:?}"),
    }
}

#[tokio::test]
async fn resumes_from_the_last_seq_and_reports_the_outcome() {
    let relay = ScriptedRelay::bind().await;
    let addr = relay.addr();
    let connecting =
        tokio::spawn(
            async move { RelayClient::connect(&addr, config("bob").snapshots(true)).await },
        );
    let mut conn = relay.accept().await;
    let (capabilities, resume) = registration(&mut conn).await;
    assert_eq!(capabilities, ["pong", "presence", "resume", "snapshot"]);
    assert_eq!(resume, None);
    conn.send(&extended_response(7, 10, "s1", None)).await;
    let mut client = connecting.await.unwrap().unwrap();
    for seq in [11, 12] {
        conn.send(&broadcast("alice", seq)).await;
    }
    for seq in [11, 12] {
        assert_eq!(next(client.events()).await, broadcast_event("alice", seq));
    }
    // The snapshot carries the seq of the last broadcast the application took in.
    client.send_snapshot(b"state at 12").unwrap();
    assert_eq!(
        conn.recv_skipping_pings().await,
        Message::SessionSnapshot {
            seq: 12,
            data: UpdateData::from_bin(b"state at 12")
        }
    );
    drop(conn);

    // Resumed: the relay replays 13 to 15; 13 is bob's own update, not delivered.
    let mut conn = relay.accept().await;
    let (_, resume) = registration(&mut conn).await;
    let expected = ResumeRequest {
        epoch: 7,
        seq: 12,
        secret: "s1".to_owned(),
    };
    assert_eq!(resume, Some(expected));
    conn.send(&extended_response(7, 15, "s2", Some("ok"))).await;
    for (from, seq) in [("bob", 13), ("alice", 14), ("alice", 15), ("alice", 16)] {
        conn.send(&broadcast(from, seq)).await;
    }
    let events = client.events();
    assert!(matches!(next(events).await, Event::Disconnected(_)));
    assert_eq!(next(events).await, Event::Reconnected);
    assert_eq!(next(events).await, Event::Resynced);
    for seq in [14, 15, 16] {
        assert_eq!(next(events).await, broadcast_event("alice", seq));
    }
    drop(conn);
    assert!(matches!(next(events).await, Event::Disconnected(_)));
    // Queued while disconnected, at seq 16 of epoch 7: the relay restarts before it is sent.
    client.send_snapshot(b"state at 16").unwrap();

    // The relay restarted: new epoch, resync, then the session's snapshot and what follows
    // it (bob's own update included: it is part of the state to rebuild).
    let mut conn = relay.accept().await;
    let (_, resume) = registration(&mut conn).await;
    assert_eq!(
        resume.map(|r| (r.epoch, r.seq, r.secret)),
        Some((7, 16, "s2".into()))
    );
    conn.send(&extended_response(9, 3, "s3", Some("resync_required")))
        .await;
    conn.send(&Message::SessionSnapshot {
        seq: 2,
        data: UpdateData::from_bin(b"state at 2"),
    })
    .await;
    conn.send(&broadcast("bob", 3)).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(next(client.events()).await);
    }
    let dropped = seen
        .iter()
        .position(|e| matches!(e, Event::Error(m) if m.contains("snapshot not sent")))
        .expect("the stale snapshot is reported");
    seen.remove(dropped);
    let snapshot = Event::Snapshot {
        seq: 2,
        data: b"state at 2".to_vec(),
    };
    assert_eq!(
        seen,
        [
            Event::Reconnected,
            Event::ResyncRequired,
            snapshot,
            broadcast_event("bob", 3)
        ]
    );
    client.send_snapshot(b"state at 3").unwrap();
    assert_eq!(
        conn.recv_skipping_pings().await,
        Message::SessionSnapshot {
            seq: 3,
            data: UpdateData::from_bin(b"state at 3")
        },
        "the stale snapshot was never sent"
    );
}

#[tokio::test]
async fn snapshots_need_the_capability() {
    let relay = ScriptedRelay::bind().await;
    let (client, _conn, _) = connected(&relay, config("alice").snapshots(true)).await;
    let err = client.send_snapshot(b"state").unwrap_err();
    assert!(
        matches!(err, ClientError::NotGranted("snapshot")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the relay did not grant the `snapshot` capability"
    );
}
