//! A few seconds of `soak` against the real relay binary (target/<profile>/sova-relay, which
//! `cargo test --workspace` builds): the machinery runs end to end and every invariant holds.

use std::time::{Duration, Instant};

use sova_relay_bench::soak::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_passes() {
    if soak::locate_relay().is_err() {
        eprintln!(
            "SKIPPED: no sova-relay binary in the target directory (cargo build -p sova-relay)"
        );
        return;
    }
    let started = Instant::now();
    let options = Options::smoke(Duration::from_secs(3), 7);
    let outcome = soak::run(&options).await.expect("the soak runs");
    assert!(
        outcome.passed,
        "{:?}\n{}",
        outcome.violations, outcome.report
    );
    assert!(
        outcome.report.contains("RESULT: PASS"),
        "{}",
        outcome.report
    );
    eprintln!("soak smoke run: {:?}", started.elapsed());
}
