//! The cluster scenario: standard workloads against one relay, and against relay nodes
//! that share their sessions through one `nats-server -js` (the relay's `--cluster-nats`),
//! with the clients of each session spread round-robin over the nodes. CPU is the relay
//! nodes' summed, and nats-server's apart; everything runs on this one machine.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::proto::Target;
use crate::report::{Report, ServerUsage};
use crate::scenario::Scenario;
use crate::servers::{Binaries, ServerProcess};
use crate::suite::{self, SuiteOptions};
use crate::workload::{self, Watch};

/// The scenario's name on the suite's command line.
pub const NAME: &str = "cluster";

/// What the scenario shows (for `sova-relay-bench scenarios`).
pub const ABOUT: &str =
    "jam and burst on one relay vs relay nodes sharing sessions via nats-server -js";

/// How the relay is deployed for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One relay, no NATS (the default deployment).
    Single,
    /// This many relay nodes with `--cluster-nats` on one `nats-server -js`.
    Nodes(usize),
}

impl Layout {
    /// From a node count on the command line: 0 means one relay without NATS.
    pub fn from_count(nodes: usize) -> Layout {
        match nodes {
            0 => Layout::Single,
            n => Layout::Nodes(n),
        }
    }

    /// Name in tables and in the reports' scenario names.
    pub fn label(self) -> String {
        match self {
            Layout::Single => "single".to_owned(),
            Layout::Nodes(1) => "1 node + NATS".to_owned(),
            Layout::Nodes(n) => format!("{n} nodes + NATS"),
        }
    }

    fn tag(self) -> String {
        match self {
            Layout::Single => "single".to_owned(),
            Layout::Nodes(1) => "1-node".to_owned(),
            Layout::Nodes(n) => format!("{n}-nodes"),
        }
    }
}

/// What the cluster scenario runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Standard workloads to run in each layout.
    pub workloads: Vec<&'static Scenario>,
    /// Layouts, in table order.
    pub layouts: Vec<Layout>,
}

/// One run of the cluster scenario.
pub struct Outcome {
    /// The standard workload.
    pub workload: &'static str,
    /// How the relay was deployed.
    pub layout: Layout,
    /// The run (its scenario name is `<workload>@<layout>`).
    pub result: Result<Report, String>,
}

/// Runs every workload in every layout; prints a line per run as it goes.
pub async fn run(cluster: &ClusterOptions, suite: &SuiteOptions) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for &scenario in &cluster.workloads {
        for &layout in &cluster.layouts {
            let result = run_one(suite, scenario, layout).await;
            match &result {
                Ok(report) => eprintln!("{}", report.summary()),
                Err(err) => eprintln!("{:<14} {:<9} FAILED: {err}", scenario.name, layout.tag()),
            }
            outcomes.push(Outcome {
                workload: scenario.name,
                layout,
                result,
            });
        }
    }
    outcomes
}

async fn run_one(
    options: &SuiteOptions,
    scenario: &Scenario,
    layout: Layout,
) -> Result<Report, String> {
    let binaries = options.binaries.clone();
    let deployment = tokio::task::spawn_blocking(move || Deployment::start(layout, &binaries))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("{err:#}"))?;
    let addrs = deployment.addrs();
    let mut workload = suite::workload_for(scenario, Target::RelayTcp, addrs[0], options);
    workload.addrs = addrs;
    workload.scenario = format!("{}@{}", scenario.name, layout.tag());
    let report = workload::run_watching(&workload, &deployment.watch())
        .await
        .map_err(|err| format!("{err:#}"));
    let _ = tokio::task::spawn_blocking(move || deployment.stop()).await;
    report
}

/// The processes of one layout. Fields drop in order: relays, NATS, then the directory.
pub struct Deployment {
    relays: Vec<ServerProcess>,
    nats: Option<ServerProcess>,
    scratch: Option<Scratch>,
}

impl Deployment {
    /// Starts `layout`: NATS first (its store in a fresh temporary directory), then each
    /// node, each ready (`/readyz` 200) before the next starts.
    pub fn start(layout: Layout, binaries: &Binaries) -> anyhow::Result<Deployment> {
        let nodes = match layout {
            Layout::Single => {
                return Ok(Deployment {
                    relays: vec![ServerProcess::start(Target::RelayTcp, binaries)?],
                    nats: None,
                    scratch: None,
                })
            }
            Layout::Nodes(n) => n,
        };
        let scratch = Scratch::new()?;
        let nats = ServerProcess::start_jetstream(binaries, &scratch.0.join("jetstream"))
            .context("starting nats-server -js")?;
        let mut relays = Vec::with_capacity(nodes);
        for node in 0..nodes {
            let name = format!("bench-{node}");
            let log = scratch.0.join(format!("{name}.log"));
            relays.push(ServerProcess::start_relay_node(
                binaries, nats.addr, &name, &log,
            )?);
        }
        Ok(Deployment {
            relays,
            nats: Some(nats),
            scratch: Some(scratch),
        })
    }

    /// The relay nodes' addresses, in node order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.relays.iter().map(|relay| relay.addr).collect()
    }

    /// The relay nodes as the servers, nats-server as the broker.
    pub fn watch(&self) -> Watch {
        Watch {
            servers: self.relays.iter().map(|relay| relay.pid).collect(),
            broker: self.nats.iter().map(|nats| nats.pid).collect(),
        }
    }

    /// Stops the nodes, then NATS (SIGTERM, bounded wait, SIGKILL), then removes the store.
    pub fn stop(self) {
        for relay in self.relays {
            relay.stop();
        }
        if let Some(nats) = self.nats {
            nats.stop();
        }
        drop(self.scratch);
    }
}

/// A fresh temporary directory, removed on drop: the JetStream store and the nodes' logs.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let unique = format!(
            "sova-bench-cluster-{}-{}",
            std::process::id(),
            crate::clock::now_ns()
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_owned(),
    }
}

fn cpu_per_delivery(usage: Option<&ServerUsage>) -> Option<f64> {
    usage.and_then(|u| u.cpu_us_per_delivery)
}

/// The cluster table (Markdown): one row per workload and layout.
pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "### Cluster: one relay vs relay nodes sharing sessions through nats-server -js\n\n\
         | workload | relay | clients | deliveries/s | p50 µs | p99 µs | p99.9 µs | lost | relay CPU s | relay CPU µs/delivery | nats CPU s | nats CPU µs/delivery | total CPU µs/delivery |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for outcome in outcomes {
        let label = outcome.layout.label();
        let report = match &outcome.result {
            Ok(report) => report,
            Err(err) => {
                let err = err.replace('|', "/");
                let _ = writeln!(
                    out,
                    "| {} | {label} | failed: {err} |||||||||||",
                    outcome.workload
                );
                continue;
            }
        };
        let latency = report.latency_us;
        let (relay, nats) = (report.server.as_ref(), report.broker.as_ref());
        let total = match (cpu_per_delivery(relay), cpu_per_delivery(nats)) {
            (Some(a), Some(b)) => Some(a + b),
            (a, None) => a,
            (None, b) => b,
        };
        // A delivery the clients got twice would hide behind `lost`: show it.
        let lost = if report.delivered > report.expected {
            format!("+{} extra", report.delivered - report.expected)
        } else {
            report.lost.to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {label} | {} | {} | {} | {} | {} | {lost} | {} | {} | {} | {} | {} |",
            outcome.workload,
            report.clients,
            num(Some(report.deliveries_per_s), 0),
            num(latency.map(|l| l.p50), 0),
            num(latency.map(|l| l.p99), 0),
            num(latency.map(|l| l.p999), 0),
            num(relay.map(|u| u.cpu_s), 2),
            num(cpu_per_delivery(relay), 2),
            num(nats.map(|u| u.cpu_s), 2),
            num(cpu_per_delivery(nats), 2),
            num(total, 2),
        );
    }
    out
}
