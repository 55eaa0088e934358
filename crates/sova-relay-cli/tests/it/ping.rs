//! `ping`: round-trip summary.

use crate::{cli, run, TestServer};

#[tokio::test]
async fn ping_prints_min_median_max() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let (status, stdout, stderr) =
        run(cli().args(["ping", "--addr", &server.addr, "--count", "3"])).await;
    assert!(status.success(), "{stderr}");
    let summary = stdout.lines().next().unwrap();
    assert!(summary.starts_with("rtt min/median/max = "), "{summary}");
    assert!(summary.ends_with(" ms (3 pings)"), "{summary}");
    assert_eq!(stderr.matches("pong").count(), 3, "{stderr}");

    let (status, _, stderr) =
        run(cli().args(["ping", "--addr", &server.addr, "--count", "0"])).await;
    assert!(!status.success(), "{stderr}");
}
