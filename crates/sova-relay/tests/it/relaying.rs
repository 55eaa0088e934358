//! Fan-out: who receives what, verbatim, in order, and when.

use std::time::Duration;

use sova_relay_protocol::{decode_body, encode_frame, Message, UpdateData};

use crate::support::{assert_broadcast, TestClient, TestServer};

#[tokio::test]
async fn an_update_reaches_every_other_instance_and_never_its_sender() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    let mut carol = relay.client("carol").await;
    alice.update(1_705_314_615_000, &[1, 2, 3]).await;
    for peer in [&mut bob, &mut carol] {
        assert_broadcast(&peer.recv().await, "alice", 1_705_314_615_000, &[1, 2, 3]);
    }
    assert!(
        alice.sync().await.is_empty(),
        "the sender got its own update back"
    );
}

#[tokio::test]
async fn update_data_is_forwarded_byte_for_byte_in_the_form_it_arrived() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    let payload: Vec<u8> = (0..=255).collect();
    for data in [
        UpdateData::from_array(&payload),
        UpdateData::from_bin(&payload),
    ] {
        let update = Message::StateUpdate {
            source_instance_id: alice.id,
            timestamp: 7,
            update_data: data.clone(),
        };
        alice.send(&update).await;
        let body = bob.recv_raw().await;
        let raw = &data.raw()[..];
        assert!(
            body.windows(raw.len()).any(|w| w == raw),
            "update_data was re-encoded"
        );
        let Message::StateBroadcast { update_data, .. } = decode_body(body).unwrap() else {
            panic!("not a broadcast");
        };
        assert_eq!(update_data, data);
    }
}

#[tokio::test]
async fn the_protocol_vector_relays_to_the_protocol_vector() {
    let relay = TestServer::start().await;
    let mut bob = relay.client("bob").await;
    let mut alice = relay.client("alice").await;
    // PROTOCOL.md's StateUpdate vector, with bob's real id in place of the example id.
    let update = format!(
        "0000005681ab537461746555706461746583b2736f757263655f696e7374616e63655f6964c410{}a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203",
        hex::encode(bob.id.as_bytes())
    );
    bob.send_raw(&hex::decode(update).unwrap()).await;
    let body = alice.recv_raw().await;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    // PROTOCOL.md's StateBroadcast vector, plus the `seq` every broadcast carries
    // (docs/PROTOCOL.md: an extra field, which instances in the field ignore).
    assert_eq!(
        hex::encode(frame),
        "0000005281ae537461746542726f61646361737484b4736f757263655f696e7374616e63655f6e616d65a3626f62a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203a373657101"
    );
}

#[tokio::test]
async fn sessions_keep_broadcasts_and_departures_to_themselves() {
    let relay = TestServer::start().await;
    let mut jam_a = relay.client_in("a", "jam").await;
    let mut jam_b = relay.client_in("b", "jam").await;
    let mut other = relay.client_in("c", "other").await;
    let mut default = relay.client("d").await;
    jam_a.update(1, b"jam only").await;
    assert_broadcast(&jam_b.recv().await, "a", 1, b"jam only");
    drop(jam_a);
    assert!(matches!(
        jam_b.recv().await,
        Message::InstanceDisconnected { .. }
    ));
    assert!(other.sync().await.is_empty());
    assert!(default.sync().await.is_empty());
}

#[tokio::test]
async fn updates_from_one_source_arrive_in_order() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    for i in 0..1000u64 {
        alice.update(i, &i.to_be_bytes()).await;
    }
    for i in 0..1000u64 {
        assert_broadcast(&bob.recv().await, "alice", i, &i.to_be_bytes());
    }
}

#[tokio::test]
async fn an_instance_receives_every_update_sent_after_its_registration_response() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    for round in 0..50u64 {
        let mut joiner = TestClient::connect(relay.addr).await;
        let register = crate::support::register_message(&format!("j{round}"), "0.1.0", None, None);
        // Alice sends as soon as the joiner holds its response; nothing may be lost.
        joiner.send(&register).await;
        let response = joiner.recv().await;
        assert!(matches!(
            response,
            Message::RegistrationResponse { success: true, .. }
        ));
        alice.update(round, b"x").await;
        assert_broadcast(&joiner.recv().await, "alice", round, b"x");
    }
}

#[tokio::test]
async fn departures_are_announced_exactly_once() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let bob = relay.client("bob").await;
    let bob_id = bob.id;
    drop(bob);
    let seen = loop {
        let before = alice.sync().await;
        if !before.is_empty() {
            break before;
        }
    };
    assert_eq!(
        seen,
        [Message::InstanceDisconnected {
            instance_id: bob_id,
            instance_name: "bob".into()
        }]
    );
    assert!(alice.try_recv(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn presence_clients_hear_of_joins_and_others_never_see_the_variant() {
    let relay = TestServer::start().await;
    let (mut modern, _) =
        TestClient::register_with(relay.addr, "modern", None, Some(&["presence"])).await;
    let mut field = relay.client("field").await;
    let joiner = relay.client("joiner").await;
    assert_eq!(
        modern.recv().await,
        Message::InstanceConnected {
            instance_id: field.id,
            instance_name: "field".into()
        }
    );
    assert_eq!(
        modern.recv().await,
        Message::InstanceConnected {
            instance_id: joiner.id,
            instance_name: "joiner".into()
        }
    );
    drop(joiner);
    let seen = field.expect_messages_until_disconnect("joiner").await;
    assert!(seen
        .iter()
        .all(|m| !matches!(m, Message::InstanceConnected { .. })));
}

#[tokio::test]
async fn ping_is_answered_with_the_same_timestamp() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    alice.send(&Message::Ping { timestamp: 42 }).await;
    assert_eq!(alice.recv().await, Message::Pong { timestamp: 42 });
    // Byte for byte, as in PROTOCOL.md.
    let pong = encode_frame(&Message::Pong { timestamp: 42 });
    assert_eq!(
        hex::encode(pong),
        "0000001281a4506f6e6781a974696d657374616d702a"
    );
}

impl TestClient {
    /// Messages received up to and including `name`'s departure.
    async fn expect_messages_until_disconnect(&mut self, name: &str) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            let message = self.recv().await;
            let done = matches!(&message, Message::InstanceDisconnected { instance_name, .. } if instance_name == name);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}
