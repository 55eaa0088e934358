//! Cluster mode (`--cluster-nats`) end to end: a real `nats-server -js` on a free port of
//! 127.0.0.1 and relay nodes as real processes (`node-0`, `node-1`, …, `--cluster-expiry
//! 3s`), with raw protocol clients on each node:
//!
//! - instances on different nodes exchange updates per-source in order, exactly once, in
//!   one global order (`seq` the same everywhere); cluster-wide presence;
//! - 30 racing registrations of one name across three nodes: exactly one wins; a
//!   cluster-wide `--max-instances` under a race;
//! - a node SIGKILLed: its instances' names free within the expiry, the others told
//!   `InstanceDisconnected` once; its client resumes on another node with every update
//!   exactly once;
//! - NATS restarted mid-test: `/readyz` 503 meanwhile, nodes recover without a restart;
//!   an update NATS refuses is reported to its sender;
//! - a late joiner on another node gets the session's snapshot;
//! - sessions spread over several update streams (`--cluster-streams`) keep their order and
//!   resume anywhere; a node spreading them another way stops with a one-line error;
//! - an operator kicks an instance through any node;
//! - partition repair: a live instance whose entry another node deleted claims its name
//!   again (or is closed if the name was taken meanwhile); NATS back without its memory
//!   streams closes every instance to reconnect; a node stopped with SIGTERM frees its
//!   names at once; a resume with a foreign epoch gets `resync_required`;
//! - a three-server NATS cluster (R3) losing the server that leads the update stream: the
//!   updates between nodes stop only briefly (the interruption is printed), none is
//!   duplicated or reordered, no instance is closed.
//!
//! Needs `nats-server` (Debian's package; `scripts/install-test-deps.sh`). Without it each
//! test prints `SKIPPED: nats-server not found …` and passes, unless `SOVA_REQUIRE_NATS=1`
//! (as in `.ci/run`), where it fails.

#![allow(clippy::unwrap_used, missing_docs)] // a test that unwraps fails loudly, as it should

#[path = "cluster/admin.rs"]
mod admin;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/ha.rs"]
mod ha;
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/nats_cluster.rs"]
mod nats_cluster;
#[path = "cluster/outage.rs"]
mod outage;
#[path = "cluster/recovery.rs"]
mod recovery;
#[path = "cluster/registry.rs"]
mod registry;
#[path = "cluster/relaying.rs"]
mod relaying;
#[path = "cluster/streams.rs"]
mod streams;
// The raw protocol client of the `it` tests; this binary uses only part of that module.
#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use harness::{relay_command, Cluster, Node, WAIT};

#[test]
fn help_documents_the_cluster_flags() {
    let output = relay_command()
        .arg("--help")
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--cluster-nats",
        "--node-name",
        "--cluster-expiry",
        "--cluster-nats-creds",
        "--cluster-nats-ca",
        "--cluster-history-max-bytes",
        "--cluster-storage",
        "--cluster-streams",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    for env in ["SOVA_CLUSTER_NATS", "SOVA_NODE_NAME"] {
        assert!(help.contains(env), "--help does not mention {env}:\n{help}");
    }
}

#[tokio::test]
async fn replicas_nats_cannot_hold_keep_the_node_unready_and_the_log_says_why() {
    let Some(cluster) = Cluster::start("replicas", 0, &[]).await else {
        return;
    };
    // One NATS server cannot keep three replicas of a stream.
    let node = Node::start_listening(&cluster.nats.url(), "node-r3", &["--cluster-replicas", "3"]);
    let line = node.wait_for_log("setting up the streams and buckets failed");
    assert!(line.contains("replicas"), "{line}");
    let (body, _) = node.wait_ready(503, WAIT).await;
    assert_eq!(
        body,
        "cluster: streams and buckets not set up yet (the log says why)\n"
    );
}

#[tokio::test]
async fn a_node_name_held_by_a_live_node_is_refused_with_a_one_line_error() {
    let Some(cluster) = Cluster::start("duplicate-name", 1, &[]).await else {
        return;
    };
    let (status, stderr) = harness::run_to_exit(&harness::node_args(&cluster.nats.url(), "node-0"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("sova-relay: "), "{stderr}");
    assert!(last.contains("node-0"), "{stderr}");
    // The live node-0 is unaffected.
    cluster.nodes[0].wait_ready(200, WAIT).await;
}
