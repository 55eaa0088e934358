//! The cluster scenario's machinery end to end, briefly: `nats-server -js` and three relay
//! nodes (the real binary from the target directory), six clients of one session spread
//! over the nodes, every update delivered exactly once to each other member. Also a few
//! seconds of `soak --nodes 3`. Skipped when nats-server or a relay binary with
//! `--cluster-nats` is not there.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sova_relay_bench::cluster::{Deployment, Layout};
use sova_relay_bench::servers::Binaries;
use sova_relay_bench::{soak, workload, Mode, Target, Workload};

fn nats_server() -> Option<PathBuf> {
    let found = Command::new("nats-server").arg("--version").output();
    if found.is_ok_and(|out| out.status.success()) {
        return Some(PathBuf::from("nats-server"));
    }
    let packaged = PathBuf::from("/usr/sbin/nats-server");
    packaged.is_file().then_some(packaged)
}

fn relay_with_cluster_mode() -> Option<PathBuf> {
    let relay = soak::locate_relay().ok()?;
    let help = Command::new(&relay).arg("--help").output().ok()?;
    String::from_utf8_lossy(&help.stdout)
        .contains("--cluster-nats")
        .then_some(relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_update_once() {
    let (Some(nats), Some(relay)) = (nats_server(), relay_with_cluster_mode()) else {
        eprintln!("SKIPPED: needs nats-server and a sova-relay binary with --cluster-nats");
        return;
    };
    let binaries = Binaries {
        relay,
        nats,
        redis: PathBuf::from("redis-server"),
    };
    let deployment =
        tokio::task::spawn_blocking(move || Deployment::start(Layout::Nodes(3), &binaries))
            .await
            .unwrap()
            .expect("nats-server and three nodes start");
    let addrs = deployment.addrs();
    assert_eq!(addrs.len(), 3);
    let jam = Workload {
        scenario: "cluster-smoke".to_owned(),
        target: Target::RelayTcp,
        addrs,
        mode: Mode::Pubsub,
        groups: 1,
        members: 6,
        publishers: 6,
        rate: 50.0,
        size: 64,
        duration: Duration::from_secs(3),
        window: 8,
        max_messages: 20,
        churners: 0,
        churn_stay: Duration::from_millis(50),
        connect_concurrency: 6,
        drain_timeout: Duration::from_secs(5),
        sova_version: "0.1.0".to_owned(),
    };
    let report = workload::run_watching(&jam, &deployment.watch()).await;
    tokio::task::spawn_blocking(move || deployment.stop())
        .await
        .unwrap();
    let report = report.unwrap();
    // 6 publishers x 20 updates, each to the 5 other members, on whichever node.
    assert_eq!(report.sent, 120, "{report:?}");
    assert_eq!(report.delivered, 600, "{report:?}");
    assert_eq!(report.lost, 0);
    assert_eq!(
        report.server_errors + report.malformed + report.closed_early,
        0,
        "{report:?}"
    );
    assert!(report.server.is_some_and(|s| s.cpu_s > 0.0), "{report:?}");
    assert!(report.broker.is_some(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_cluster_soak_passes() {
    let (Some(nats), Some(relay)) = (nats_server(), relay_with_cluster_mode()) else {
        eprintln!("SKIPPED: needs nats-server and a sova-relay binary with --cluster-nats");
        return;
    };
    let started = Instant::now();
    let smoke = soak::Options::smoke(Duration::from_secs(3), 7);
    let options = soak::Options {
        relay_bin: Some(relay),
        sizes: soak::Sizes {
            sessions: 2,
            ..smoke.sizes
        },
        nodes: 3,
        // Sessions over several streams, as a large deployment runs.
        cluster_streams: 3,
        nats_bin: Some(nats),
        ..smoke
    };
    let outcome = soak::run(&options).await.expect("the cluster soak runs");
    assert!(
        outcome.passed,
        "{:?}\n{}",
        outcome.violations, outcome.report
    );
    assert!(
        outcome.report.contains("resumes on another node"),
        "{}",
        outcome.report
    );
    eprintln!("cluster soak smoke run: {:?}", started.elapsed());
}
