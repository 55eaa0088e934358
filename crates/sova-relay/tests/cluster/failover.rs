//! A node SIGKILLed: the survivors notice within the expiry, tell its instances' peers once,
//! free the names; its client resumes on another node with nothing lost or repeated.

use std::time::{Duration, Instant};

use sova_relay_protocol::{Message, ResumeRequest};
use uuid::Uuid;

use crate::harness::{join, resume, Cluster, EXPIRY};
use crate::relaying::{payload, read_broadcasts};
use crate::support::TestClient;

/// How long after the kill the survivors may take to tell: the expiry, plus 3 s for the
/// check interval, the KV watch and a loaded machine.
const DEAD_NODE_BOUND: Duration = Duration::from_secs(EXPIRY.as_secs() + 3);

/// Waits for `InstanceConnected` of `name`, past those of others; its id.
async fn expect_connected(client: &mut TestClient, name: &str) -> Uuid {
    loop {
        match client.recv().await {
            Message::InstanceConnected {
                instance_id,
                instance_name,
            } if instance_name == name => return instance_id,
            Message::InstanceConnected { .. } => {}
            other => panic!("{}: expected {name} to connect, got {other:?}", client.name),
        }
    }
}

#[tokio::test]
async fn a_killed_nodes_instances_are_announced_gone_once_and_their_names_freed() {
    let Some(mut cluster) = Cluster::start("kill", 3, &[]).await else {
        return;
    };
    let token = "failover";
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence"]).await;
    let (mut c, _) = join(&cluster, 2, "c", token, &[]).await;
    let (mut a, _) = join(&cluster, 0, "a", token, &["resume"]).await;
    let a_id = a.id;
    // node-1 knows of `a` (presence), and updates flow from node-0 to both.
    assert_eq!(expect_connected(&mut b, "a").await, a_id);
    a.update(1, b"before the crash").await;
    crate::support::assert_broadcast(&b.recv().await, "a", 1, b"before the crash");
    crate::support::assert_broadcast(&c.recv().await, "a", 1, b"before the crash");

    let killed = cluster.nodes[0].kill();
    for peer in [&mut b, &mut c] {
        match peer.recv().await {
            Message::InstanceDisconnected {
                instance_id,
                instance_name,
            } => assert_eq!((instance_id, instance_name.as_str()), (a_id, "a")),
            other => panic!("{}: expected a to leave, got {other:?}", peer.name),
        }
        let after = killed.elapsed();
        eprintln!(
            "cluster: {} told of a's departure {after:?} after SIGKILL",
            peer.name
        );
        assert!(
            after < DEAD_NODE_BOUND,
            "{}: told after {after:?}",
            peer.name
        );
    }
    // Exactly once: the next thing each hears is the other's update, sent after that.
    c.update(2, b"sentinel from c").await;
    crate::support::assert_broadcast(&b.recv().await, "c", 2, b"sentinel from c");
    b.update(3, b"sentinel from b").await;
    crate::support::assert_broadcast(&c.recv().await, "b", 3, b"sentinel from b");

    // The name is free: a fresh `a` (no resume) registers on node-1 and plays.
    let (mut fresh, _) = join(&cluster, 1, "a", token, &[]).await;
    assert_ne!(fresh.id, a_id);
    assert_eq!(expect_connected(&mut b, "a").await, fresh.id);
    fresh.update(4, b"a again").await;
    crate::support::assert_broadcast(&b.recv().await, "a", 4, b"a again");
    crate::support::assert_broadcast(&c.recv().await, "a", 4, b"a again");
    assert!(b.sync().await.is_empty());
    assert!(c.sync().await.is_empty());
}

/// `a` (resume, node-0) hears 100 of `b`'s updates and sends 5 of its own; node-0 is
/// SIGKILLed while 50 more of `b`'s are on their way, and `b` sends 50 during the outage.
/// Then `a` resumes on `resume_node` (at once, or once the cluster declared node-0 dead)
/// and must get exactly `b`'s updates 100.. once, in order, then the live ones, and never
/// its own.
async fn resume_after_node_death(resume_node: usize, after_expiry: bool) {
    let label = if after_expiry {
        "resume-late"
    } else {
        "resume-now"
    };
    let Some(mut cluster) = Cluster::start(label, 3, &[]).await else {
        return;
    };
    let token = "resume";
    let (mut b, _) = join(&cluster, 1, "b", token, &["presence"]).await;
    let (mut a, response) = join(&cluster, 0, "a", token, &["resume"]).await;
    let Message::RegistrationResponse {
        epoch: Some(epoch),
        seq: Some(mut last_seq),
        resume_secret: Some(secret),
        ..
    } = response
    else {
        panic!("a: no resume fields: {response:?}");
    };
    let old_a = expect_connected(&mut b, "a").await;
    for n in 0..10 {
        a.update(n, &payload("a", n)).await;
    }
    read_broadcasts(&mut b, 10).await;

    for n in 0..150 {
        b.update(n, &payload("b", n)).await;
    }
    for (n, broadcast) in read_broadcasts(&mut a, 100).await.into_iter().enumerate() {
        assert_eq!(
            (broadcast.from.as_str(), broadcast.timestamp),
            ("b", n as u64)
        );
        last_seq = broadcast.seq.unwrap();
    }
    // Updates of a's after the point it resumes from: in the stream, never replayed to it.
    for n in 10..15 {
        a.update(n, &payload("a", n)).await;
    }
    let own = read_broadcasts(&mut b, 5).await;
    assert!(own.iter().all(|x| x.from == "a"), "{own:?}");
    let killed = cluster.nodes[0].kill();
    drop(a);
    for n in 150..200 {
        b.update(n, &payload("b", n)).await;
    }
    if after_expiry {
        let gone = wait_for_departure(&mut b, old_a).await;
        assert!(gone.duration_since(killed) < DEAD_NODE_BOUND);
    }

    let from = ResumeRequest {
        epoch,
        seq: last_seq,
        secret,
    };
    let (mut resumed, response) = resume(&cluster, resume_node, "a", token, from).await;
    match &response {
        Message::RegistrationResponse {
            success: true,
            resumed: Some(outcome),
            ..
        } => assert_eq!(outcome, "ok", "a on node-{resume_node}: {response:?}"),
        other => panic!("a could not resume on node-{resume_node}: {other:?}"),
    }
    let replayed = read_broadcasts(&mut resumed, 100).await;
    // The dead node is out of the cluster view, so whatever its expiry triggers has
    // happened before the live updates below.
    cluster.nodes[1]
        .wait_status("node-0 gone", |s| {
            s["cluster"]["nodes"]
                .as_array()
                .is_some_and(|nodes| !nodes.iter().any(|n| n == "node-0"))
        })
        .await;
    for n in 200..250 {
        b.update(n, &payload("b", n)).await;
    }
    let live = read_broadcasts(&mut resumed, 50).await;
    let mut previous = last_seq;
    for (broadcast, n) in replayed.iter().chain(&live).zip(100..250u64) {
        assert_eq!(
            (broadcast.from.as_str(), broadcast.timestamp),
            ("b", n),
            "a after resuming on node-{resume_node}"
        );
        assert_eq!(broadcast.data, payload("b", n));
        let seq = broadcast.seq.unwrap();
        assert!(seq > previous, "seq {seq} after {previous}");
        previous = seq;
    }
    resumed.update(15, &payload("a", 15)).await;
    // b heard of the old `a` leaving exactly once, and of nothing else but the resumed
    // `a` joining, before a's update sent after all that.
    let mut departures = usize::from(after_expiry);
    let mut arrivals = 0;
    loop {
        match b.recv().await {
            Message::StateBroadcast {
                source_instance_name,
                timestamp: 15,
                ..
            } if source_instance_name == "a" => break,
            Message::InstanceDisconnected { instance_id, .. } if instance_id == old_a => {
                departures += 1
            }
            Message::InstanceConnected { instance_name, .. } if instance_name == "a" => {
                arrivals += 1
            }
            other => panic!("b: unexpected {other:?}"),
        }
    }
    assert_eq!(departures, 1, "InstanceDisconnected for the old a");
    assert!(
        arrivals <= 1,
        "{arrivals} InstanceConnected for the resumed a"
    );
    assert!(resumed.sync().await.is_empty(), "a: nothing more");
}

/// Expects the next message to announce `id` gone; when it arrived.
async fn wait_for_departure(client: &mut TestClient, id: Uuid) -> Instant {
    match client.recv().await {
        Message::InstanceDisconnected { instance_id, .. } if instance_id == id => Instant::now(),
        other => panic!("{}: expected {id} to leave, got {other:?}", client.name),
    }
}

#[tokio::test]
async fn a_client_of_a_killed_node_resumes_at_once_on_another_node() {
    resume_after_node_death(1, false).await;
}

#[tokio::test]
async fn a_client_of_a_killed_node_resumes_after_the_expiry_on_a_third_node() {
    resume_after_node_death(2, true).await;
}
