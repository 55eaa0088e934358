//! The client against the real relay, in process.

use std::net::SocketAddr;

use sova_relay_client::{ClientConfig, ClientError, Event, RelayClient, UpdateForm};

use crate::scripted::PATIENCE;
use crate::server::{relay_config, Proxy, TestServer};
use crate::{config, next, until};

pub fn is_broadcast(event: &Event) -> bool {
    matches!(event, Event::Broadcast { .. })
}

#[tokio::test]
async fn updates_and_presence_arrive_in_order() {
    let server = TestServer::start(relay_config()).await;
    let mut alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    let mut bin = config("bob");
    bin.update_form = UpdateForm::Bin;
    let mut bob = RelayClient::connect(&server.addr(), bin).await.unwrap();
    let bob_id = bob.instance_id().unwrap();
    assert_eq!(
        next(alice.events()).await,
        Event::Joined {
            id: bob_id,
            name: "bob".to_owned()
        }
    );
    assert_eq!(bob.peers()[0].name, "alice");

    for i in 0..300u32 {
        alice.send_update_at(i.to_be_bytes(), u64::from(i)).unwrap();
    }
    for i in 0..300u32 {
        let expected = Event::Broadcast {
            from: "alice".to_owned(),
            timestamp: u64::from(i),
            data: i.to_be_bytes().to_vec(),
        };
        assert_eq!(next(bob.events()).await, expected);
    }
    bob.send_update([0xff, 0]).unwrap();
    let Event::Broadcast { from, data, .. } = next(alice.events()).await else {
        panic!("expected bob's update");
    };
    assert_eq!((from.as_str(), data.as_slice()), ("bob", &[0xff, 0][..]));

    bob.close().await;
    assert_eq!(
        next(alice.events()).await,
        Event::Left {
            id: bob_id,
            name: "bob".to_owned()
        }
    );
    assert!(alice.peers().is_empty());
}

#[tokio::test]
async fn rejections_are_typed_with_the_relay_text() {
    let mut small = relay_config();
    small.max_instances = 1;
    let server = TestServer::start(small).await;
    let _alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();

    let err = RelayClient::connect(&server.addr(), config("bob").sova_version("9.9.9"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::VersionMismatch(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Version mismatch: expected 0.1.0, got 9.9.9"
    );

    let err = RelayClient::connect(&server.addr(), config("bob"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Full(_)), "{err:?}");
    assert_eq!(err.to_string(), "Maximum instances (1) reached");

    let other = TestServer::start(relay_config()).await;
    let _alice = RelayClient::connect(&other.addr(), config("alice"))
        .await
        .unwrap();
    let err = RelayClient::connect(&other.addr(), config("alice"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NameTaken(_)), "{err:?}");
    assert_eq!(err.to_string(), "Instance name 'alice' already in use");
}

#[tokio::test]
async fn ping_measures_and_relay_pings_give_the_clock_offset() {
    let server = TestServer::start(relay_config()).await;
    let client = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    assert!(client
        .capabilities()
        .iter()
        .any(|capability| capability == "pong"));
    let rtt = client.ping().await.unwrap();
    assert!(rtt < PATIENCE);
    // The relay pings every 50 ms; each of our pings is a chance to see its effect. Three
    // of its pings give the estimate three chances of one that was not held up.
    // Our pings are paced: they count against the relay's rate limit like any message, and
    // a tight loop on a slow machine would spend it before three relay pings arrived.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(25));
    let offset = tokio::time::timeout(PATIENCE, async {
        loop {
            pace.tick().await;
            client.ping().await.unwrap();
            if let Some(offset) = client.clock_offset().filter(|o| o.samples >= 3) {
                return offset;
            }
        }
    })
    .await
    .expect("no relay ping");
    // Same machine, same clock: the true offset is zero. The estimate errs high by at most
    // `error_bound` (+1 ms for whole-millisecond timestamps). It errs low by the time the
    // least delayed relay ping waited beyond our fastest round trip: on a loaded machine, a
    // task can wait tens of milliseconds to be scheduled, so that side gets 100 ms.
    let bound_ms = offset.error_bound.as_secs_f64() * 1000.0;
    assert!(
        -100.0 <= offset.offset_ms && offset.offset_ms <= bound_ms + 1.0,
        "{offset:?}"
    );
}

#[tokio::test]
async fn queued_updates_are_sent_in_order_after_the_relay_restarts() {
    let reason = queued_updates_survive_a_restart(|addr| addr.to_string()).await;
    assert_eq!(reason, "relay closed the connection");
}

/// Alice reaches the relay at `address(proxy)` through a gate, bob directly over TCP; the
/// relay restarts on its port while alice queues updates. Returns alice's `Disconnected`
/// reason.
pub async fn queued_updates_survive_a_restart(address: impl Fn(SocketAddr) -> String) -> String {
    queued_updates_survive_a_restart_of(relay_config, address, config("alice")).await
}

/// As [`queued_updates_survive_a_restart`], with a relay made by `relay` (e.g. with TLS) and
/// alice configured as `alice_config`.
pub async fn queued_updates_survive_a_restart_of(
    relay: impl Fn() -> sova_relay::Config,
    address: impl Fn(SocketAddr) -> String,
    alice_config: ClientConfig,
) -> String {
    let server = TestServer::start(relay()).await;
    let addr = server.addr;
    let proxy = Proxy::start(addr).await;
    let mut alice = RelayClient::connect(&address(proxy.addr), alice_config)
        .await
        .unwrap();
    let mut bob = RelayClient::connect(&server.addr(), config("bob"))
        .await
        .unwrap();
    alice.send_update(b"before").unwrap();
    let event = until(bob.events(), is_broadcast).await;
    assert!(matches!(event, Event::Broadcast { data, .. } if data == b"before"));

    // Alice may come back only once bob has: she must not send to an empty session.
    proxy.set_open(false);
    server.stop().await;
    let Event::Disconnected(reason) =
        until(alice.events(), |e| matches!(e, Event::Disconnected(_))).await
    else {
        unreachable!("until returns a match");
    };
    for i in 0..5u8 {
        alice.send_update([i]).unwrap();
    }
    let _server = TestServer::start_at(addr, relay()).await;
    until(bob.events(), |e| *e == Event::Reconnected).await;
    proxy.set_open(true);
    until(alice.events(), |e| *e == Event::Reconnected).await;
    until(
        bob.events(),
        |e| matches!(e, Event::Joined { name, .. } if name == "alice"),
    )
    .await;
    for i in 0..5u8 {
        let event = next(bob.events()).await;
        assert!(
            matches!(&event, Event::Broadcast { from, data, .. } if from == "alice" && *data == [i]),
            "{event:?}"
        );
    }
    alice.flush().await.unwrap();
    reason
}

/// Without `resume` (or after losing its secret), a client cannot take over its own stale
/// registration: it retries until the relay lets the name go.
#[tokio::test]
async fn a_stale_registration_of_our_name_is_waited_out() {
    let server = TestServer::start(relay_config()).await;
    let proxy = Proxy::start(server.addr).await;
    let mut alice = RelayClient::connect(&proxy.addr(), config("alice").resume(false))
        .await
        .unwrap();
    let mut bob = RelayClient::connect(&server.addr(), config("bob"))
        .await
        .unwrap();
    let old_id = alice.instance_id().unwrap();

    // Alice's side of the link dies; the relay still holds her old registration.
    proxy.sever();
    until(alice.events(), |e| matches!(e, Event::Disconnected(_))).await;
    let before = proxy.accepted();
    // Two attempts: the first was refused ("name in use"), or there would be no second.
    proxy.wait_accepted(before + 2).await;
    proxy.release();
    assert_eq!(
        until(bob.events(), |e| matches!(e, Event::Left { .. })).await,
        Event::Left {
            id: old_id,
            name: "alice".to_owned()
        }
    );
    until(alice.events(), |e| *e == Event::Reconnected).await;
    assert_ne!(alice.instance_id(), Some(old_id));
    alice.send_update(b"back").unwrap();
    let event = until(bob.events(), is_broadcast).await;
    assert!(matches!(event, Event::Broadcast { data, .. } if data == b"back"));
}

#[tokio::test]
async fn no_retry_when_the_restarted_relay_wants_another_version() {
    let server = TestServer::start(relay_config()).await;
    let addr = server.addr;
    let mut alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    server.stop().await;
    let mut newer = relay_config();
    newer.sova_version = "0.2.0".to_owned();
    let _server = TestServer::start_at(addr, newer).await;
    let event = until(
        alice.events(),
        |e| matches!(e, Event::Error(message) if message.starts_with("Version")),
    )
    .await;
    assert_eq!(
        event,
        Event::Error("Version mismatch: expected 0.2.0, got 0.1.0".to_owned())
    );
    let end = tokio::time::timeout(PATIENCE, alice.next_event())
        .await
        .unwrap();
    assert_eq!(end, None);
    assert!(matches!(alice.send_update([1]), Err(ClientError::Closed)));
}

#[tokio::test]
async fn a_full_relay_after_restart_is_retried() {
    let server = TestServer::start(relay_config()).await;
    let addr = server.addr;
    let proxy = Proxy::start(addr).await;
    let mut alice = RelayClient::connect(&proxy.addr(), config("alice"))
        .await
        .unwrap();
    proxy.set_open(false);
    server.stop().await;
    let mut one = relay_config();
    one.max_instances = 1;
    let _server = TestServer::start_at(addr, one).await;
    let squatter = RelayClient::connect(&addr.to_string(), config("squatter"))
        .await
        .unwrap();
    proxy.set_open(true);
    let before = proxy.accepted();
    // Two attempts through the open gate: the first was refused ("Maximum instances").
    proxy.wait_accepted(before + 2).await;
    squatter.close().await;
    until(alice.events(), |e| *e == Event::Reconnected).await;
}
