//! Rate limit, slow consumers, handshake timeout.

use std::time::Duration;

use sova_relay_protocol::{FrameCodec, Message};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::{assert_broadcast, relay_in_steps, TestClient, TestServer, WAIT};

#[tokio::test]
async fn messages_over_the_rate_limit_are_not_relayed_and_the_sender_is_told_once() {
    let relay = TestServer::with(|c| c.rate_limit = 10).await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    for i in 0..15u64 {
        alice.update(i, b"x").await;
    }
    for i in 0..10u64 {
        assert_broadcast(&bob.recv().await, "alice", i, b"x");
    }
    alice
        .expect_error("Rate limit exceeded for instance alice")
        .await;
    // The sync ping is over the limit too: dropped without another Error within the second.
    alice.send(&Message::Ping { timestamp: 1 }).await;
    assert!(alice.try_recv(Duration::from_millis(300)).await.is_none());
    assert!(
        bob.sync().await.is_empty(),
        "an over-limit update was relayed"
    );
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_dropped_and_nobody_waits_for_it() {
    let relay = TestServer::with(|c| {
        c.max_pending_bytes = 256 * 1024;
        c.rate_limit = 1_000_000;
    })
    .await;
    let mut alice = relay.client("alice").await;
    let mut bob = relay.client("bob").await;
    let stalled = relay.client("stalled").await;
    let departed = relay_in_steps(&mut alice, &mut bob, 100, &[0xab; 1024]).await;
    assert_eq!(
        departed,
        ["stalled"],
        "the stalled instance was dropped, only it"
    );
    let seen = alice.sync().await;
    assert_eq!(
        seen,
        [Message::InstanceDisconnected {
            instance_id: stalled.id,
            instance_name: "stalled".into()
        }]
    );
}

#[tokio::test]
async fn a_silent_probe_is_closed_quietly_at_the_handshake_timeout() {
    let relay = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    let mut probe = TestClient::connect(relay.addr).await;
    assert!(
        probe.expect_closed().await.is_empty(),
        "a silent probe got a message"
    );
}

#[tokio::test]
async fn a_registration_that_never_completes_is_told_and_closed() {
    let relay = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    let mut slow = TestClient::connect(relay.addr).await;
    slow.send_raw(&[0, 0, 0, 40, 0x81]).await;
    slow.expect_error("Handshake timeout: RegisterInstance not received")
        .await;
    slow.expect_closed().await;
}

#[tokio::test]
async fn a_stalled_writer_is_cut_at_the_write_timeout() {
    let relay = TestServer::with(|c| {
        c.write_timeout = Duration::from_millis(300);
        c.max_pending_bytes = 64 << 20;
        c.rate_limit = 1_000_000;
    })
    .await;
    let mut alice = relay.client("alice").await;
    // Registered by hand with a tiny receive buffer, then never read from.
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let socket = socket2::SockRef::from(&stream);
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = tokio_util::codec::FramedRead::new(stream, FrameCodec::new(1 << 20));
    let register = sova_relay_protocol::encode_frame(&crate::support::register_message(
        "stalled", "0.1.0", None, None,
    ));
    tokio::io::AsyncWriteExt::write_all(stalled.get_mut(), &register)
        .await
        .unwrap();
    let payload = vec![1u8; 16 * 1024];
    let departure = async {
        let mut i = 0;
        loop {
            alice.update(i, &payload).await;
            i += 1;
            if let Some(Message::InstanceDisconnected { instance_name, .. }) =
                alice.try_recv(Duration::from_millis(1)).await
            {
                return instance_name;
            }
        }
    };
    let name = tokio::time::timeout(WAIT, departure)
        .await
        .expect("dropped");
    assert_eq!(name, "stalled");
    // It was told why, if its socket had room for the farewell; either way it is closed.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stalled.get_mut().read_to_end(&mut rest)).await;
}
