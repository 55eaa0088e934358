//! One NATS server of three lost: a real three-server NATS cluster with JetStream (`n0`,
//! `n1`, `n2`, every stream and bucket R3) under two relay nodes (`--cluster-nats` listing
//! the three, `--cluster-replicas 3`, `--cluster-expiry 3s`). Members `a` on node-0 and `b`
//! on node-1 each send an update every 25 ms; `c`, beside `a` on node-0, only listens. The
//! server that leads `SOVA_UPDATES` is SIGKILLed; before that, the leadership is moved
//! (stream leader step-downs) onto a server a relay node is connected to, so the kill costs
//! both a stream leader election and a relay reconnect: the worst a single server's loss can
//! do to a session's traffic.
//!
//! Checked: updates sent after the kill get through on every pair within `RECOVERY_BOUND`;
//! none is duplicated or reordered (`seq` strictly increasing); only those sent around the
//! outage may be missing, every one sent after the recovery arrives; no instance is closed
//! and none is announced gone or back; `/readyz` returns to 200 on both nodes. The
//! interruption (kill → first update sent after the kill delivered), the new leader, what
//! was lost and the nodes' counters are printed on lines starting `cluster ha:`:
//! `cargo test -p sova-relay --test cluster ha:: -- --ignored --nocapture`.
//!
//! Ignored in CI: bound by NATS's leader election (see the `ignore` reason). Takes 10-27 s,
//! up to 35 s when the updates do not come back within 30 s.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sova_relay_protocol::Message;
use tokio::task::JoinHandle;

use crate::harness::{http_get, nats_server_or_skip, Node, TempDir, UNRELAYED, WAIT};
use crate::nats_cluster::{NatsCluster, UPDATES_STREAM};
use crate::relaying::{as_broadcast, payload};
use crate::support::TestClient;

/// One update per sending member this often.
const PERIOD: Duration = Duration::from_millis(25);
/// Longest the updates may stop after the kill (a loaded 2-core machine included).
const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// Updates sent this long before the kill may be lost too: NATS may have taken them
/// without having replicated them yet.
const LOSS_MARGIN: Duration = Duration::from_secs(1);
/// Updates each sender sends after the recovery, every one of which must arrive.
const AFTER_RECOVERY: usize = 80;

/// A broadcast as a member received it, and when.
struct Arrival {
    from: String,
    n: u64,
    data: Vec<u8>,
    seq: Option<u64>,
    at: Instant,
}

/// What one member sent and received.
#[derive(Default)]
struct Traffic {
    /// When update `n` was handed to the socket, by `n`.
    sent: Vec<Instant>,
    arrivals: Vec<Arrival>,
    /// Every other message, with when it came.
    events: Vec<(Instant, Message)>,
}

impl Traffic {
    fn record(&mut self, message: Message) {
        let at = Instant::now();
        match as_broadcast(&message) {
            Some(broadcast) => self.arrivals.push(Arrival {
                from: broadcast.from,
                n: broadcast.timestamp,
                data: broadcast.data,
                seq: broadcast.seq,
                at,
            }),
            None => self.events.push((at, message)),
        }
    }

    /// When the first update of `from` that it sent after `since` arrived here.
    fn first_sent_after(&self, from: &str, sender: &Traffic, since: Instant) -> Option<Instant> {
        self.arrivals
            .iter()
            .filter(|a| a.from == from)
            .find(|a| sender.sent.get(a.n as usize).is_some_and(|at| *at > since))
            .map(|a| a.at)
    }
}

/// The session's members: name, node, whether it sends. `c` only listens, beside `a`.
const MEMBERS: [(&str, usize, bool); 3] = [("a", 0, true), ("b", 1, true), ("c", 0, false)];
/// Who hears whom (sender, receiver), by index in `MEMBERS`.
const PAIRS: [(usize, usize); 4] = [(0, 1), (1, 0), (0, 2), (1, 2)];

/// A member sending update `n` (payload `name#n`) every `PERIOD` if `sends`, and recording
/// all it receives, until `stop`; gives its client back. Panics if the connection ends.
fn play(
    mut client: TestClient,
    sends: bool,
    traffic: Arc<Mutex<Traffic>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<TestClient> {
    tokio::spawn(async move {
        let mut n = 0;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if sends && Instant::now() >= next {
                traffic.lock().unwrap().sent.push(Instant::now());
                client.update(n, &payload(&client.name, n)).await;
                n += 1;
                next += PERIOD;
            }
            let wait = if sends {
                next.saturating_duration_since(Instant::now())
            } else {
                PERIOD
            };
            if let Some(message) = client.try_recv(wait).await {
                traffic.lock().unwrap().record(message);
            }
        }
        client
    })
}

/// What `to` got from `from` (whose traffic is `sender`), checked: each update at most
/// once, in order, intact; `seq` on each unless both are on one node (local fan-out while
/// NATS is unreachable has none); missing ones only among those sent in `lossy`. Returns
/// the missing numbers and how many came without `seq`.
fn check_pair(
    (from, sender): (&str, &Traffic),
    (to, received): (&str, &Traffic),
    same_node: bool,
    killed: Instant,
    lossy: (Instant, Instant),
) -> (Vec<u64>, usize) {
    let mut last = None;
    let mut got = HashSet::new();
    let mut unsequenced = 0;
    for arrival in received.arrivals.iter().filter(|a| a.from == from) {
        if let Some(n) = last {
            assert!(
                arrival.n > n,
                "{to}: {from}'s update {} after {n} (duplicated or reordered)",
                arrival.n
            );
        }
        assert_eq!(
            arrival.data,
            payload(from, arrival.n),
            "{to}: {from}'s {}",
            arrival.n
        );
        if arrival.seq.is_none() {
            assert!(same_node, "{to}: {from}'s update {} without seq", arrival.n);
            unsequenced += 1;
        }
        last = Some(arrival.n);
        got.insert(arrival.n);
    }
    let missing: Vec<u64> = (0..sender.sent.len() as u64)
        .filter(|n| !got.contains(n))
        .collect();
    for &n in &missing {
        let sent = sender.sent[n as usize];
        assert!(
            sent >= lossy.0 && sent < lossy.1,
            "{to}: {from}'s update {n}, sent {} ms after the kill, never arrived; all \
             missing: {missing:?}",
            signed_ms(sent, killed)
        );
    }
    (missing, unsequenced)
}

/// `at - origin` in milliseconds, negative when `at` is earlier.
fn signed_ms(at: Instant, origin: Instant) -> i128 {
    match at.checked_duration_since(origin) {
        Some(after) => after.as_millis() as i128,
        None => -((origin - at).as_millis() as i128),
    }
}

/// Reads `client` until each `(from, last)` update arrived, then proves with a ping that
/// nothing else was on its way; records everything in `traffic`.
async fn drain(client: &mut TestClient, traffic: &Mutex<Traffic>, lasts: &[(&str, u64)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let done = {
            let traffic = traffic.lock().unwrap();
            lasts.iter().all(|(from, last)| {
                traffic
                    .arrivals
                    .iter()
                    .any(|a| a.from == *from && a.n == *last)
            })
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the last updates {lasts:?} never all arrived",
            client.name
        );
        let message = client.recv().await;
        traffic.lock().unwrap().record(message);
    }
    for message in client.sync().await {
        traffic.lock().unwrap().record(message);
    }
}

// 12-27 s (the NATS cluster, the leader move, an outage of 4-20 s, 2 s of traffic after
// it); up to 35 s when the updates do not come back within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-bound on NATS 2.9's leader election (4-8 s here): recovery took 4.0-18.5 s \
            in 20 runs (median 8.2 s), past the test's 15 s bound in 3; with the 3 s expiry a \
            node was once declared dead during the election; 10-30 s long; run with --ignored \
            (docs/SCALING.md quotes its numbers)"]
async fn updates_flow_again_when_the_nats_server_leading_the_stream_is_killed() {
    let Some(binary) = nats_server_or_skip("ha") else {
        return;
    };
    let dir = TempDir::new("ha");
    // Dropped in reverse order: the members' clients, the nodes, NATS, then the directory.
    let mut nats = NatsCluster::start(&binary, dir.path());
    let urls = nats.urls();
    let replicas = ["--cluster-replicas", "3"];
    let nodes = [
        Node::start(&urls, "node-0", &replicas).await,
        Node::start(&urls, "node-1", &replicas).await,
    ];
    let (victim, moved) = nats.lead_from_a_relay_nodes_server().await;
    let carried = nats.members[victim].relay_nodes().await.unwrap_or_default();
    let meta = nats.members[victim].meta_leader().await.unwrap_or_default();
    let role = format!(
        "{}: leader of {UPDATES_STREAM}, carrying {carried:?}, meta leader {meta}",
        nats.members[victim].name
    );
    if !moved {
        eprintln!("cluster ha: could not move the stream leader onto a relay node's server");
    }

    let token = Some("ha");
    let caps: Option<&[&str]> = Some(&["resume"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (name, node, _) in MEMBERS {
        let node = &nodes[node];
        let (client, response) = TestClient::register_with(node.addr, name, token, caps).await;
        assert!(
            matches!(
                response,
                Message::RegistrationResponse { success: true, .. }
            ),
            "{name} on {}: {response:?}",
            node.name
        );
        clients.push(client);
    }
    let traffic: Vec<Arc<Mutex<Traffic>>> = MEMBERS
        .iter()
        .map(|_| Arc::new(Mutex::new(Traffic::default())))
        .collect();
    let members: Vec<JoinHandle<TestClient>> = clients
        .into_iter()
        .zip(MEMBERS)
        .zip(&traffic)
        .map(|((client, (_, _, sends)), record)| play(client, sends, record.clone(), stop.clone()))
        .collect();
    let check_members = |members: &[JoinHandle<TestClient>]| {
        for member in members {
            assert!(
                !member.is_finished(),
                "a member stopped: see its panic above"
            );
        }
    };
    // A first arrival of `from`'s updates at `to` sent after `since`, by pair.
    let through_since = |since: Instant| -> Vec<Option<Duration>> {
        PAIRS
            .iter()
            .map(|&(from, to)| {
                let sender = traffic[from].lock().unwrap();
                let receiver = traffic[to].lock().unwrap();
                receiver
                    .first_sent_after(MEMBERS[from].0, &sender, since)
                    .map(|at| at - since)
            })
            .collect()
    };

    // Steady traffic before the kill: 20 updates each way.
    let deadline = Instant::now() + WAIT;
    loop {
        check_members(&members);
        let counts: Vec<usize> = PAIRS
            .iter()
            .map(|&(from, to)| {
                let receiver = traffic[to].lock().unwrap();
                let from = MEMBERS[from].0;
                receiver.arrivals.iter().filter(|a| a.from == from).count()
            })
            .collect();
        if counts.iter().all(|&count| count >= 20) {
            break;
        }
        assert!(Instant::now() < deadline, "no steady traffic: {counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let feeds = nats.feed_consumers().await;
    let killed = nats.members[victim].kill();
    let survivor = (victim + 1) % 3;
    // Until updates sent after the kill get through on every pair, the survivors agree on a
    // new leader, and both nodes are ready.
    let mut through = vec![None; PAIRS.len()];
    let mut new_leader: Option<(String, Duration)> = None;
    let mut unready: [Option<(Duration, Duration)>; 2] = [None, None];
    let mut ready: [Option<Duration>; 2] = [None, None];
    let deadline = killed + WAIT;
    loop {
        check_members(&members);
        through = through_since(killed);
        if new_leader.is_none() {
            if let Some(leader) = nats.members[survivor].stream_leader().await {
                if leader != nats.members[victim].name {
                    new_leader = Some((leader, killed.elapsed()));
                }
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            let code = http_get(node.addr, "/readyz").await.map(|(code, _)| code);
            let now = killed.elapsed();
            if let Ok(200) = code {
                ready[i] = ready[i].or(Some(now));
            } else {
                ready[i] = None;
                let first = unready[i].map_or(now, |(first, _)| first);
                unready[i] = Some((first, now));
            }
        }
        if through.iter().all(Option::is_some)
            && ready.iter().all(Option::is_some)
            && new_leader.is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within {WAIT:?} of killing {role}; session feeds were {feeds:?}; \
             first update after the kill through (a→b, b→a, a→c, b→c): {through:?}, new \
             leader {new_leader:?}, /readyz 200 since {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = Instant::now();

    // Traffic after the recovery, all of which must arrive.
    let deadline = recovered + WAIT;
    let sent_since = |t: &Mutex<Traffic>| {
        let t = t.lock().unwrap();
        t.sent.iter().filter(|at| **at > recovered).count()
    };
    while sent_since(&traffic[0]) < AFTER_RECOVERY || sent_since(&traffic[1]) < AFTER_RECOVERY {
        check_members(&members);
        assert!(
            Instant::now() < deadline,
            "members stalled after the recovery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for member in members {
        clients.push(member.await.unwrap());
    }
    let last = |t: &Mutex<Traffic>| t.lock().unwrap().sent.len() as u64 - 1;
    let (last_a, last_b) = (last(&traffic[0]), last(&traffic[1]));
    drain(&mut clients[0], &traffic[0], &[("b", last_b)]).await;
    drain(&mut clients[1], &traffic[1], &[("a", last_a)]).await;
    drain(
        &mut clients[2],
        &traffic[2],
        &[("a", last_a), ("b", last_b)],
    )
    .await;

    let lossy = (killed - LOSS_MARGIN, recovered);
    let records: Vec<_> = traffic.iter().map(|t| t.lock().unwrap()).collect();
    let mut outcomes = Vec::new();
    for &(from, to) in &PAIRS {
        let (from_name, from_node, _) = MEMBERS[from];
        let (to_name, to_node, _) = MEMBERS[to];
        outcomes.push(check_pair(
            (from_name, &records[from]),
            (to_name, &records[to]),
            from_node == to_node,
            killed,
            lossy,
        ));
    }
    // One order for everyone: `seq` strictly increasing at each member.
    for (i, record) in records.iter().enumerate() {
        let seqs: Vec<u64> = record.arrivals.iter().filter_map(|a| a.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: seq not strictly increasing",
            MEMBERS[i].0
        );
    }
    let ms = |d: Duration| d.as_millis();
    eprintln!("cluster ha: killed {role}; session feeds before: {feeds:?}");
    let through: Vec<u128> = through.iter().map(|d| ms(d.unwrap())).collect();
    eprintln!(
        "cluster ha: interruption (kill → first update sent after it delivered), ms: \
         a on node-0 → b on node-1 {}, b → a {}, a → c (on node-0) {}, b → c {}",
        through[0], through[1], through[2], through[3]
    );
    let (leader, elected) = new_leader.unwrap();
    eprintln!(
        "cluster ha: new {UPDATES_STREAM} leader {leader} known after {} ms; /readyz 503 seen \
         (first, last; ms after the kill): node-0 {:?}, node-1 {:?}; all recovered after {} ms",
        ms(elected),
        unready[0].map(|(f, l)| (ms(f), ms(l))),
        unready[1].map(|(f, l)| (ms(f), ms(l))),
        ms(recovered - killed),
    );
    for (&(from, to), (missing, unsequenced)) in PAIRS.iter().zip(&outcomes) {
        let sender = &records[from];
        let span = match (missing.first(), missing.last()) {
            (Some(&first), Some(&last)) => format!(
                " (numbers {first}..={last}, sent {} to {} ms after the kill)",
                signed_ms(sender.sent[first as usize], killed),
                signed_ms(sender.sent[last as usize], killed),
            ),
            _ => String::new(),
        };
        eprintln!(
            "cluster ha: {} → {}: lost {} of {}{span}; {unsequenced} without seq",
            MEMBERS[from].0,
            MEMBERS[to].0,
            missing.len(),
            sender.sent.len(),
        );
    }
    // No instance closed: no error, nothing but presence events; and no presence event
    // either, as every instance stayed connected throughout.
    let mut presence = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let name = MEMBERS[i].0;
        // A sender whose updates NATS did not store is told, at most once a second.
        let mut last_told: Option<Instant> = None;
        let mut told = 0;
        for (at, event) in &record.events {
            let offset = signed_ms(*at, killed);
            if *at < killed {
                // Those who registered after it, before the kill.
                assert!(
                    matches!(event, Message::InstanceConnected { .. }),
                    "{name}: unexpected at {offset} ms after the kill: {event:?}"
                );
                continue;
            }
            match event {
                Message::InstanceConnected { instance_name, .. } => {
                    presence.push(format!("{name} at {offset} ms: {instance_name} connected"))
                }
                Message::InstanceDisconnected { instance_name, .. } => presence.push(format!(
                    "{name} at {offset} ms: {instance_name} disconnected"
                )),
                Message::Error { message } if message == UNRELAYED => {
                    if let Some(last) = last_told {
                        let gap = at.duration_since(last);
                        assert!(
                            gap >= Duration::from_millis(900),
                            "{name}: told again after {gap:?} (at most once a second)"
                        );
                    }
                    last_told = Some(*at);
                    told += 1;
                }
                other => panic!("{name}: unexpected at {offset} ms after the kill: {other:?}"),
            }
        }
        if told > 0 {
            eprintln!("cluster ha: {name} was told {told}× that updates were not relayed");
        }
    }
    if !presence.is_empty() {
        eprintln!(
            "cluster ha: {} presence events although every instance stayed connected:\n  {}",
            presence.len(),
            presence.join("\n  ")
        );
    }
    drop(records);
    for node in &nodes {
        let (_, metrics) = http_get(node.addr, "/metrics").await.unwrap();
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("sova_cluster_publish_failures_total")
                    || l.starts_with("sova_cluster_dead_nodes_total")
            })
            .collect();
        eprintln!("cluster ha: {}: {}", node.name, counters.join(", "));
    }
    let longest = *through.iter().max().unwrap();
    assert!(
        longest <= RECOVERY_BOUND.as_millis(),
        "updates stopped for longer than {RECOVERY_BOUND:?}: {through:?} ms"
    );
    // Every instance still registered where it was, both nodes in the cluster.
    for (node, local) in nodes.iter().zip([2, 1]) {
        node.wait_status("its instances and both nodes", |s| {
            s["instances"] == local
                && s["cluster"]["nodes"] == serde_json::json!(["node-0", "node-1"])
        })
        .await;
    }
    assert!(
        presence.is_empty(),
        "live instances announced gone or back (see the presence events above)"
    );
}
