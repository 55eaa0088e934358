//! Every kind of bad input has its defined outcome, and nobody else notices.

use sova_relay_protocol::{encode_frame, Message, UpdateData};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{assert_broadcast, register_message, TestClient, TestServer};

/// A jam that must carry on, untouched, whatever the test throws at the relay.
struct Bystanders {
    alice: TestClient,
    bob: TestClient,
    round: u64,
}

impl Bystanders {
    async fn join(relay: &TestServer) -> Self {
        Bystanders {
            alice: relay.client("alice").await,
            bob: relay.client("bob").await,
            round: 0,
        }
    }

    async fn still_jamming(&mut self) {
        self.round += 1;
        self.alice.update(self.round, b"still here").await;
        assert_broadcast(&self.bob.recv().await, "alice", self.round, b"still here");
        assert!(self.alice.sync().await.is_empty());
    }
}

fn body_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// `{variant: [[[…nil…]]]}` nested far beyond any real message.
fn deeply_nested(variant: &str) -> Vec<u8> {
    let mut body = vec![0x81];
    body.extend(msgpack_str(variant));
    body.extend(std::iter::repeat_n(0x91, 10_000));
    body.push(0xc0);
    body
}

impl Bystanders {
    /// Both bystanders hear that one instance left.
    async fn hear_departure(&mut self) {
        for peer in [&mut self.alice, &mut self.bob] {
            assert!(matches!(
                peer.recv().await,
                Message::InstanceDisconnected { .. }
            ));
        }
    }
}

fn msgpack_str(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend(s.as_bytes());
    out
}

#[tokio::test]
async fn garbage_before_registration_gets_an_error_and_a_close() {
    let relay = TestServer::start().await;
    let mut jam = Bystanders::join(&relay).await;
    let deep = deeply_nested("RegisterInstance");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "random bytes",
            b"\x00\x00\x00\x05\xc1\xff\x13\x37\x00".to_vec(),
            "Expected RegisterInstance message",
        ),
        (
            "invalid msgpack",
            body_frame(&[0x92, 0x01]),
            "Expected RegisterInstance message",
        ),
        (
            "deep nesting",
            body_frame(&deep),
            "Expected RegisterInstance message",
        ),
        (
            "unknown variant",
            body_frame(&[&[0x81][..], &msgpack_str("Teleport"), &[0x80]].concat()),
            "Expected RegisterInstance message",
        ),
        (
            "update first",
            encode_frame(&Message::Ping { timestamp: 1 }).to_vec(),
            "Expected RegisterInstance message",
        ),
        (
            "zero length",
            vec![0, 0, 0, 0],
            "Invalid frame: zero-length message",
        ),
        (
            "oversize",
            vec![0, 0x20, 0, 0],
            "Message too large: 2097152 bytes (max: 16384)",
        ),
    ];
    for (what, bytes, error) in cases {
        let mut bad = TestClient::connect(relay.addr).await;
        bad.name = what.to_owned();
        bad.send_raw(&bytes).await;
        bad.expect_error(error).await;
        assert!(
            bad.expect_closed().await.is_empty(),
            "{what}: more after the error"
        );
        jam.still_jamming().await;
    }
}

#[tokio::test]
async fn bytes_of_other_protocols_do_not_disturb_anyone() {
    let relay = TestServer::with(|c| c.http = false).await;
    let mut jam = Bystanders::join(&relay).await;
    let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &tls_hello,
        b"SSH-2.0-OpenSSH\r\n",
    ] {
        let mut bad = TestClient::connect(relay.addr).await;
        bad.send_raw(bytes).await;
        let seen = bad.expect_closed().await;
        assert!(
            matches!(seen.as_slice(), [Message::Error { .. }]),
            "{seen:?}"
        );
        jam.still_jamming().await;
    }
}

#[tokio::test]
async fn truncated_frames_and_abrupt_closes_are_harmless() {
    let relay = TestServer::start().await;
    let mut jam = Bystanders::join(&relay).await;
    let register = encode_frame(&register_message("trunc", "0.1.0", None, None));
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(&register[..register.len() / 2])
        .await
        .unwrap();
    drop(stream);
    jam.still_jamming().await;

    let mut registered = relay.client("half").await;
    let update = encode_frame(&Message::StateUpdate {
        source_instance_id: registered.id,
        timestamp: 1,
        update_data: UpdateData::from_array(&[1; 100]),
    });
    registered.send_raw(&update[..60]).await;
    drop(registered);
    jam.hear_departure().await;
    jam.still_jamming().await;
}

#[tokio::test]
async fn bad_messages_after_registration_get_an_error_and_the_connection_carries_on() {
    let relay = TestServer::start().await;
    let mut jam = Bystanders::join(&relay).await;
    let mut eve = relay.client_in("eve", "elsewhere").await;
    let deep = deeply_nested("Ping");
    let mut non_utf8 = vec![0x81];
    non_utf8.extend(msgpack_str("Ping"));
    non_utf8.extend([0x81, 0xa2, 0xff, 0xfe, 0x01]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid msgpack", body_frame(&[0xc1])),
        ("trailing bytes", body_frame(&[0xc0, 0xc0])),
        ("deep nesting", body_frame(&deep)),
        (
            "unknown variant",
            body_frame(&[&[0x81][..], &msgpack_str("Teleport"), &[0x80]].concat()),
        ),
        ("non-utf8 key", body_frame(&non_utf8)),
        (
            "wrong field type",
            body_frame(
                &[
                    &[0x81][..],
                    &msgpack_str("Ping"),
                    &[0x81],
                    &msgpack_str("timestamp"),
                    &msgpack_str("now"),
                ]
                .concat(),
            ),
        ),
    ];
    for (what, bytes) in cases {
        eve.send_raw(&bytes).await;
        match eve.recv().await {
            Message::Error { message } => {
                assert!(message.starts_with("Invalid message"), "{what}: {message}")
            }
            other => panic!("{what}: expected an Error, got {other:?}"),
        }
        jam.still_jamming().await;
    }
    eve.send(&register_message("eve", "0.1.0", None, None))
        .await;
    eve.expect_error("Already registered as 'eve'").await;
    eve.send(&Message::error("from a client")).await;
    eve.expect_error("Unexpected message: Error").await;
    assert!(eve.sync().await.is_empty(), "eve's connection still works");
    jam.still_jamming().await;
}

#[tokio::test]
async fn an_update_claiming_another_instances_id_is_dropped_with_an_error() {
    let relay = TestServer::start().await;
    let mut jam = Bystanders::join(&relay).await;
    let mut eve = relay.client("eve").await;
    let forged = Message::StateUpdate {
        source_instance_id: jam.alice.id,
        timestamp: 1,
        update_data: UpdateData::from_array(b"forged"),
    };
    eve.send(&forged).await;
    match eve.recv().await {
        Message::Error { message } => assert!(message.contains("source_instance_id"), "{message}"),
        other => panic!("expected an Error, got {other:?}"),
    }
    assert!(
        jam.bob.sync().await.is_empty(),
        "the forged update was relayed"
    );
    jam.still_jamming().await;
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let relay = TestServer::start().await;
    let long = "x".repeat(65);
    for (name, error) in [
        ("", "Invalid instance name: must not be empty"),
        (long.as_str(), "Invalid instance name: 65 bytes (max: 64)"),
        (
            "bell\u{7}",
            "Invalid instance name: control characters are not allowed",
        ),
        (
            "new\nline",
            "Invalid instance name: control characters are not allowed",
        ),
    ] {
        let (mut client, response) = TestClient::register_with(relay.addr, name, None, None).await;
        assert_eq!(response, Message::error(error));
        client.expect_closed().await;
    }
    let _max_length_is_fine = relay.client(&"y".repeat(64)).await;
}

#[tokio::test]
async fn an_oversize_frame_after_registration_gets_the_protocol_error_and_a_close() {
    let relay = TestServer::start().await;
    let mut jam = Bystanders::join(&relay).await;
    let mut big = relay.client("big").await;
    big.send_raw(&[0x00, 0x20, 0x00, 0x00, 1, 2, 3]).await;
    big.expect_error("Message too large: 2097152 bytes (max: 1048576)")
        .await;
    big.expect_closed().await;
    jam.hear_departure().await;
    jam.still_jamming().await;
}

#[tokio::test]
async fn a_frame_at_the_limit_is_relayed() {
    let relay = TestServer::with(|c| c.max_message_size = 64 * 1024).await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    // A bin payload sized so the whole StateUpdate body is exactly at the limit.
    let overhead = encode_frame(&Message::StateUpdate {
        source_instance_id: alice.id,
        timestamp: 1,
        update_data: UpdateData::from_bin(&[0; 1000]),
    })
    .len()
        - 4
        - 1000;
    let payload = vec![7u8; 64 * 1024 - overhead];
    alice
        .send(&Message::StateUpdate {
            source_instance_id: alice.id,
            timestamp: 1,
            update_data: UpdateData::from_bin(&payload),
        })
        .await;
    match bob.recv().await {
        Message::StateBroadcast { update_data, .. } => {
            assert_eq!(update_data.to_vec().unwrap(), payload)
        }
        other => panic!("expected the broadcast, got {other:?}"),
    }
}
