//! The comparison suite: every scenario against every server, a fresh server process per
//! run, then one table of results, one of ratios and one of targets.

use std::fmt::Write as _;
use std::time::Duration;

use crate::proto::Target;
use crate::report::Report;
use crate::scenario::Scenario;
use crate::servers::{Binaries, ServerProcess};
use crate::workload::{self, Workload};

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Servers to drive, in column order; the first relay target is "ours" in ratios.
    pub targets: Vec<Target>,
    /// Scenarios to run, in order.
    pub scenarios: Vec<&'static Scenario>,
    /// Publishing time per scenario.
    pub duration: Duration,
    /// Flat-out window per publisher.
    pub window: u64,
    /// Server binaries.
    pub binaries: Binaries,
    /// Version sent to the relay.
    pub sova_version: String,
}

/// One cell of the suite: a report, or why the run failed.
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Server.
    pub target: Target,
    /// The run.
    pub result: Result<Report, String>,
}

/// Runs every scenario against every target; prints a line per run as it goes.
pub async fn run(options: &SuiteOptions) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for scenario in &options.scenarios {
        for &target in &options.targets {
            let result = run_one(options, scenario, target).await;
            match &result {
                Ok(report) => eprintln!("{}", report.summary()),
                Err(err) => eprintln!("{:<14} {:<9} FAILED: {err}", scenario.name, target.label()),
            }
            outcomes.push(Outcome {
                scenario: scenario.name,
                target,
                result,
            });
        }
    }
    outcomes
}

async fn run_one(
    options: &SuiteOptions,
    scenario: &Scenario,
    target: Target,
) -> Result<Report, String> {
    let binaries = options.binaries.clone();
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(target, &binaries))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("{err:#}"))?;
    let workload = workload_for(scenario, target, server.addr, options);
    let report = workload::run(&workload, Some(server.pid))
        .await
        .map_err(|err| format!("{err:#}"));
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;
    report
}

/// The workload of a standard scenario against `target` at `addr`.
pub fn workload_for(
    scenario: &Scenario,
    target: Target,
    addr: std::net::SocketAddr,
    options: &SuiteOptions,
) -> Workload {
    Workload {
        scenario: scenario.name.to_owned(),
        target,
        addrs: vec![addr],
        mode: scenario.mode,
        groups: scenario.groups,
        members: scenario.members,
        publishers: scenario.publishers,
        rate: scenario.rate,
        size: scenario.size,
        duration: scenario.duration.unwrap_or(options.duration),
        window: options.window,
        max_messages: 0,
        churners: scenario.churners,
        churn_stay: scenario.churn_stay,
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(5),
        sova_version: options.sova_version.clone(),
    }
}

fn find<'a>(outcomes: &'a [Outcome], scenario: &str, target: Target) -> Option<&'a Report> {
    outcomes
        .iter()
        .find(|o| o.scenario == scenario && o.target == target)
        .and_then(|o| o.result.as_ref().ok())
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_owned(),
    }
}

/// Results, ratios and targets as Markdown.
pub fn markdown(outcomes: &[Outcome], options: &SuiteOptions) -> String {
    let mut out = String::new();
    out += "### Results\n\n";
    out += "| scenario | server | clients | deliveries/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | lost | server CPU s | CPU µs/delivery | peak RSS MiB | KiB/conn |\n";
    out += "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for outcome in outcomes {
        let label = outcome.target.label();
        let report = match &outcome.result {
            Ok(report) => report,
            Err(err) => {
                let _ = writeln!(
                    out,
                    "| {} | {label} | failed: {} |||||||||||",
                    outcome.scenario,
                    err.replace('|', "/")
                );
                continue;
            }
        };
        let l = report.latency_us;
        let s = report.server;
        let _ = writeln!(
            out,
            "| {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            outcome.scenario,
            report.clients,
            num(Some(report.deliveries_per_s), 0),
            num(l.map(|l| l.p50), 0),
            num(l.map(|l| l.p90), 0),
            num(l.map(|l| l.p99), 0),
            num(l.map(|l| l.p999), 0),
            num(l.map(|l| l.max), 0),
            report.lost,
            num(s.map(|s| s.cpu_s), 2),
            num(s.and_then(|s| s.cpu_us_per_delivery), 2),
            num(s.map(|s| s.peak_rss_kib as f64 / 1024.0), 1),
            num(s.map(|s| s.per_connection_kib), 1),
        );
    }
    out += &ratios(outcomes, options);
    out += &targets(outcomes);
    out
}

/// The headline metrics of each scenario: lower is better for all of them.
const HEADLINES: &[(&str, &str)] = &[
    ("jam", "p99"),
    ("burst", "cpu"),
    ("fanout", "cpu"),
    ("large", "p99"),
    ("large", "cpu"),
    ("idle", "mem"),
    ("many-sessions", "p99"),
    ("many-sessions", "cpu"),
    ("churn", "p99"),
    ("churn", "cpu"),
];

fn metric(report: &Report, metric: &str) -> Option<f64> {
    match metric {
        "p99" => report.latency_us.map(|l| l.p99),
        "cpu" => report.server.and_then(|s| s.cpu_us_per_delivery),
        "mem" => report.server.map(|s| s.per_connection_kib),
        _ => None,
    }
}

fn metric_name(metric: &str) -> &'static str {
    match metric {
        "p99" => "p99 latency µs",
        "cpu" => "server CPU µs/delivery",
        _ => "server KiB/connection",
    }
}

fn ratios(outcomes: &[Outcome], options: &SuiteOptions) -> String {
    let Some(ours) = options.targets.iter().copied().find(|t| t.is_relay()) else {
        return String::new();
    };
    let others: Vec<Target> = options
        .targets
        .iter()
        .copied()
        .filter(|t| !t.is_relay())
        .collect();
    let mut out = format!(
        "\n### Ratios ({} / other; below 1 means the relay uses less, i.e. leads)\n\n| scenario | metric |",
        ours.label()
    );
    for target in &options.targets {
        let _ = write!(out, " {} |", target.label());
    }
    for other in &others {
        let _ = write!(out, " {} / {} |", ours.label(), other.label());
    }
    out += "\n|---|---|";
    out += &"--:|".repeat(options.targets.len() + others.len());
    out += "\n";
    for &(scenario, name) in HEADLINES {
        if !options.scenarios.iter().any(|s| s.name == scenario) {
            continue;
        }
        let value = |target| find(outcomes, scenario, target).and_then(|r| metric(r, name));
        let _ = write!(out, "| {scenario} | {} |", metric_name(name));
        for &target in &options.targets {
            let _ = write!(out, " {} |", num(value(target), 2));
        }
        for &other in &others {
            let ratio = value(ours).zip(value(other)).map(|(a, b)| a / b);
            let _ = write!(out, " **{}** |", num(ratio, 2));
        }
        out += "\n";
    }
    out
}

fn targets(outcomes: &[Outcome]) -> String {
    let ours = Target::RelayTcp;
    let mut out =
        String::from("\n### Targets (relay-tcp)\n\n| target | measured | met |\n|---|---|---|\n");
    let mut row = |what: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(out, "| {what} | {measured} | {met} |");
    };
    let get = |scenario, target| find(outcomes, scenario, target);
    let p99 = |r: &Report| r.latency_us.map(|l| l.p99);
    let cpu = |r: &Report| r.server.and_then(|s| s.cpu_us_per_delivery);
    if let (Some(a), Some(b)) = (get("jam", ours), get("jam", Target::Nats)) {
        let (x, y) = (p99(a), p99(b));
        row(
            "jam p99 ≤ NATS p99",
            format!("{} µs vs {} µs", num(x, 0), num(y, 0)),
            x.zip(y).map(|(x, y)| x <= y),
        );
    }
    for scenario in ["burst", "fanout"] {
        if let (Some(a), Some(b)) = (get(scenario, ours), get(scenario, Target::Redis)) {
            let (x, y) = (cpu(a), cpu(b));
            row(
                &format!("{scenario}: CPU/delivery ≤ Redis, zero lost"),
                format!("{} µs vs {} µs, lost {}", num(x, 2), num(y, 2), a.lost),
                x.zip(y).map(|(x, y)| x <= y && a.lost == 0),
            );
        }
    }
    if let Some(a) = get("idle", ours) {
        let kib = a.server.map(|s| s.per_connection_kib);
        row(
            "idle: ≤ 6 KiB per registered instance",
            format!("{} KiB", num(kib, 1)),
            kib.map(|k| k <= 6.0),
        );
    }
    if let Some(a) = get("many-sessions", ours) {
        let x = p99(a);
        row(
            "many-sessions (10,000 instances): p99 < 2 ms, zero lost",
            format!("{} µs, lost {}", num(x, 0), a.lost),
            x.map(|x| x < 2000.0 && a.lost == 0),
        );
    }
    out
}
