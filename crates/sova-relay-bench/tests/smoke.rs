//! Smoke run of the load generator against an in-process relay: a few hundred messages
//! over TCP and WebSocket, every one delivered to every other client.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sova_relay::{Config, Server};
use sova_relay_bench::{workload, Mode, Target, Workload};
use tokio::sync::oneshot;

async fn relay() -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let config = Config {
        max_instances: 100,
        rate_limit: 1_000_000,
        max_connections_per_ip: 0,
        connection_rate_per_ip: 0,
        shutdown_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn workload(target: Target, addr: std::net::SocketAddr, mode: Mode, rate: f64) -> Workload {
    Workload {
        scenario: "smoke".to_owned(),
        target,
        addrs: vec![addr],
        mode,
        groups: 2,
        members: 4,
        publishers: 3,
        rate,
        size: 64,
        duration: Duration::from_secs(3),
        window: 8,
        max_messages: 50,
        churners: 2,
        churn_stay: Duration::from_millis(50),
        connect_concurrency: 8,
        drain_timeout: Duration::from_secs(3),
        sova_version: "0.1.0".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_out_over_tcp_and_websocket_loses_nothing() {
    let (addr, _stop) = relay().await;
    for target in [Target::RelayTcp, Target::RelayWs] {
        let report = workload::run(&workload(target, addr, Mode::Pubsub, 0.0), None)
            .await
            .unwrap();
        // 2 groups x 3 publishers x 50 messages, each to the 3 other members.
        assert_eq!(report.sent, 300, "{target:?}: {report:?}");
        assert_eq!(report.expected, 900);
        assert_eq!(report.delivered, 900, "{target:?}: {report:?}");
        assert_eq!(report.lost, 0);
        assert_eq!(
            report.server_errors + report.malformed + report.closed_early,
            0
        );
        assert!(report.latency_us.is_some_and(|l| l.p50 > 0.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_at_a_rate_loses_nothing_among_the_stable_clients() {
    let (addr, _stop) = relay().await;
    let mut churn = workload(Target::RelayTcp, addr, Mode::Churn, 100.0);
    churn.duration = Duration::from_millis(600);
    let report = workload::run(&churn, None).await.unwrap();
    assert!(report.sent > 0);
    assert_eq!(report.lost, 0, "{report:?}");
    let churned = report.churn.unwrap();
    assert!(churned.joins >= 2 && churned.failed == 0, "{churned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_connect_and_stay() {
    let (addr, _stop) = relay().await;
    let mut idle = workload(Target::RelayTcp, addr, Mode::Idle, 0.0);
    idle.duration = Duration::from_millis(100);
    let report = workload::run(&idle, Some(std::process::id()))
        .await
        .unwrap();
    assert_eq!(report.clients, 8);
    assert_eq!(report.sent, 0);
    assert!(report.server.is_some_and(|s| s.peak_rss_kib > 0));
}
