//! Resume and snapshots against the real relay: a connection cut mid-stream, a gap beyond
//! the relay's history, a relay restart, a late joiner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sova_relay_client::{Event, Events, RelayClient};

use crate::relay::is_broadcast;
use crate::server::{relay_config, Proxy, TestServer};
use crate::{config, next, until};

/// A relay that lets a test send as fast as it likes.
fn unlimited() -> sova_relay::Config {
    sova_relay::Config {
        rate_limit: 1_000_000,
        ..relay_config()
    }
}

/// The number in a numbered update.
fn number(data: &[u8]) -> u32 {
    u32::from_be_bytes(data.try_into().expect("a numbered update"))
}

#[tokio::test]
async fn a_client_cut_mid_stream_resumes_with_every_update_exactly_once() {
    let server = TestServer::start(unlimited()).await;
    let proxy = Proxy::start(server.addr).await;
    let mut bob = RelayClient::connect(&proxy.addr(), config("bob"))
        .await
        .unwrap();
    let mut alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    let sender = alice.sender();
    let send = |range: std::ops::Range<u32>| {
        for i in range {
            sender.send_update(i.to_be_bytes()).unwrap();
        }
    };
    let mut seen = Vec::new();
    send(0..300);
    while seen.len() < 300 {
        if let Event::Broadcast { data, .. } = next(bob.events()).await {
            seen.push(number(&data));
        }
    }
    // Bob's own updates, after the last broadcast he received: the relay replays them with
    // the rest of the gap, and they must not come back to him.
    for text in ["bob 1", "bob 2"] {
        bob.send_update(text).unwrap();
    }
    for text in ["bob 1", "bob 2"] {
        let event = until(alice.events(), is_broadcast).await;
        assert!(matches!(event, Event::Broadcast { data, .. } if data == text.as_bytes()));
    }

    // Bob's side of the link dies while the stream goes on; the relay still holds his
    // registration (half-open, never released here), so only a takeover with his resume
    // secret can let him back in.
    proxy.set_open(false);
    proxy.sever();
    send(300..700);
    assert!(matches!(next(bob.events()).await, Event::Disconnected(_)));
    // Queued while disconnected: written once registered again.
    bob.send_update("bob 3").unwrap();
    proxy.set_open(true);
    send(700..1000);
    let mut lifecycle = Vec::new();
    while seen.len() < 1000 {
        match next(bob.events()).await {
            Event::Broadcast { from, data, .. } => {
                assert_eq!(from, "alice", "only alice's updates come back");
                seen.push(number(&data));
            }
            other => lifecycle.push(other),
        }
    }
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    assert_eq!(lifecycle, [Event::Reconnected, Event::Resynced]);
    let event = until(alice.events(), is_broadcast).await;
    assert!(matches!(event, Event::Broadcast { data, .. } if data == b"bob 3"));
    assert_no_broadcast(bob.events()).await;
}

/// Nothing more arrives for a moment (no duplicate after the last expected update).
async fn assert_no_broadcast(events: &mut Events) {
    let quiet = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            if let Some(event @ Event::Broadcast { .. }) = events.recv().await {
                return event;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "unexpected {quiet:?}");
}

/// A session bob was kept out of for a while (the relay and the proxy live as long as it).
struct Gap {
    _server: TestServer,
    _proxy: Proxy,
    alice: RelayClient,
    bob: RelayClient,
}

/// Cuts bob's link and keeps him out while alice sends `count` updates (carol, there all
/// along, confirms the relay has broadcast them), then lets him back.
async fn gap_of(count: u32, server: sova_relay::Config) -> Gap {
    let server = TestServer::start(server).await;
    let proxy = Proxy::start(server.addr).await;
    let mut bob = RelayClient::connect(&proxy.addr(), config("bob"))
        .await
        .unwrap();
    let alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    let mut carol = RelayClient::connect(&server.addr(), config("carol"))
        .await
        .unwrap();
    proxy.set_open(false);
    proxy.sever();
    until(bob.events(), |e| matches!(e, Event::Disconnected(_))).await;
    for i in 0..count {
        alice.send_update(i.to_be_bytes()).unwrap();
    }
    for i in 0..count {
        let event = until(carol.events(), is_broadcast).await;
        assert!(matches!(event, Event::Broadcast { data, .. } if number(&data) == i));
    }
    proxy.set_open(true);
    until(bob.events(), |e| *e == Event::Reconnected).await;
    Gap {
        _server: server,
        _proxy: proxy,
        alice,
        bob,
    }
}

#[tokio::test]
async fn a_gap_beyond_the_relay_history_requires_a_resync() {
    let small_history = sova_relay::Config {
        history_max_updates: 10,
        ..unlimited()
    };
    let mut gap = gap_of(100, small_history).await;
    let (alice, bob) = (&gap.alice, &mut gap.bob);
    assert_eq!(next(bob.events()).await, Event::ResyncRequired);
    alice.send_update(b"live").unwrap();
    let event = until(bob.events(), is_broadcast).await;
    assert!(
        matches!(&event, Event::Broadcast { data, .. } if data == b"live"),
        "nothing of the gap is replayed: {event:?}"
    );
}

#[tokio::test]
async fn a_gap_within_the_relay_history_is_replayed() {
    let mut gap = gap_of(100, unlimited()).await;
    let (alice, bob) = (&gap.alice, &mut gap.bob);
    assert_eq!(next(bob.events()).await, Event::Resynced);
    for i in 0..100 {
        let event = until(bob.events(), is_broadcast).await;
        assert!(matches!(event, Event::Broadcast { data, .. } if number(&data) == i));
    }
    alice.send_update(b"live").unwrap();
    let event = until(bob.events(), is_broadcast).await;
    assert!(matches!(&event, Event::Broadcast { data, .. } if data == b"live"));
}

#[tokio::test]
async fn a_relay_restart_means_a_new_epoch_and_a_resync() {
    let server = TestServer::start(relay_config()).await;
    let addr = server.addr;
    let mut bob = RelayClient::connect(&server.addr(), config("bob").snapshots(true))
        .await
        .unwrap();
    server.stop().await;
    until(bob.events(), |e| matches!(e, Event::Disconnected(_))).await;
    let _server = TestServer::start_at(addr, relay_config()).await;
    assert_eq!(next(bob.events()).await, Event::Reconnected);
    assert_eq!(next(bob.events()).await, Event::ResyncRequired);
    // The new relay has no snapshot of the session to offer.
    let alice = RelayClient::connect(&addr.to_string(), config("alice"))
        .await
        .unwrap();
    alice.send_update(b"after").unwrap();
    let event = until(bob.events(), |e| !matches!(e, Event::Joined { .. })).await;
    assert!(
        matches!(&event, Event::Broadcast { data, .. } if data == b"after"),
        "{event:?}"
    );
}

/// A session's state: `key=value` updates written into a map. Every update is distinct, so
/// one applied twice is caught.
#[derive(Default, Debug)]
struct Model {
    map: BTreeMap<String, String>,
    applied: BTreeSet<String>,
}

impl Model {
    fn apply(&mut self, update: &[u8]) {
        let text = String::from_utf8(update.to_vec()).unwrap();
        assert!(self.applied.insert(text.clone()), "{text} applied twice");
        let (key, value) = text.split_once('=').unwrap();
        self.map.insert(key.to_owned(), value.to_owned());
    }

    fn encode(&self) -> Vec<u8> {
        let lines: Vec<String> = self.map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.join("\n").into_bytes()
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut model = Self::default();
        for line in std::str::from_utf8(bytes).unwrap().lines() {
            model.apply(line.as_bytes());
        }
        model
    }

    /// Sends an update and applies it locally, as an instance does with its own edits.
    fn send(&mut self, client: &RelayClient, update: String) {
        client.send_update(&update).unwrap();
        self.apply(update.as_bytes());
    }

    /// Applies the next `count` broadcasts of `events`.
    async fn receive(&mut self, events: &mut Events, count: usize) {
        for _ in 0..count {
            if let Event::Broadcast { data, .. } = until(events, is_broadcast).await {
                self.apply(&data);
            }
        }
    }
}

/// Alice and bob each make `count` edits at once, then take in each other's.
async fn jam(
    alice: &mut (RelayClient, Model),
    bob: &mut (RelayClient, Model),
    round: std::ops::Range<u32>,
) {
    for i in round.clone() {
        alice.1.send(&alice.0, format!("a{}={i}", i % 7));
        bob.1.send(&bob.0, format!("b{}={i}", i % 5));
    }
    let count = round.len();
    alice.1.receive(alice.0.events(), count).await;
    bob.1.receive(bob.0.events(), count).await;
}

#[tokio::test]
async fn a_late_joiner_starts_from_the_snapshot_and_ends_in_sync() {
    let server = TestServer::start(unlimited()).await;
    let connect = |name: &'static str| {
        let addr = server.addr();
        async move {
            let client = RelayClient::connect(&addr, config(name).snapshots(true))
                .await
                .unwrap();
            (client, Model::default())
        }
    };
    let mut alice = connect("alice").await;
    let mut bob = connect("bob").await;
    jam(&mut alice, &mut bob, 0..40).await;
    // Alice publishes her state, with her last updates that nobody has echoed to her.
    alice.1.send(&alice.0, "late=1".to_owned());
    alice.0.send_snapshot(alice.1.encode()).unwrap();
    bob.1.receive(bob.0.events(), 1).await;
    jam(&mut alice, &mut bob, 40..70).await;
    assert_eq!(alice.1.map, bob.1.map);

    let (mut carol, _) = connect("carol").await;
    let Event::Snapshot { data, .. } = next(carol.events()).await else {
        panic!("no snapshot for the late joiner");
    };
    let mut carol_model = Model::decode(&data);
    carol_model.receive(carol.events(), 60).await;
    assert_eq!(
        carol_model.map, bob.1.map,
        "the same state as one there from the start"
    );
    assert_no_broadcast(carol.events()).await;
}
