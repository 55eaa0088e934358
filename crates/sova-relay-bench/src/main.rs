//! `sova-relay-bench`: drives the relay, NATS and Redis with the same workload and
//! compares latency, throughput, losses, CPU and memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sova_relay_bench::cluster::{self, ClusterOptions, Layout};
use sova_relay_bench::scenario::{self, Scenario};
use sova_relay_bench::servers::Binaries;
use sova_relay_bench::suite::{self, SuiteOptions};
use sova_relay_bench::{workload, Mode, Target, Workload};

#[derive(Parser)]
#[command(
    name = "sova-relay-bench",
    version,
    about = "Load generator: the Sova relay against NATS and Redis"
)]
struct Cli {
    /// Worker threads of the client runtime (the servers share the machine's cores).
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One workload against one running server.
    Run(RunArgs),
    /// Every scenario against every server, each started on a free loopback port; prints
    /// the comparison tables (Markdown).
    Suite(SuiteArgs),
    /// Lists the standard scenarios.
    Scenarios,
    /// Soak test: the real relay binary under well-behaved sessions, resumes, churn, bad
    /// input, slow consumers, rate-limit abusers and kicks; checks delivery invariants, RSS
    /// and /metrics, and exits non-zero on any violation.
    Soak(SoakArgs),
}

#[derive(Args)]
struct SoakArgs {
    /// Length of the disturbed part of the run, in seconds (winding down adds ~10 s).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The relay binary (default: `sova-relay` beside this program, or in
    /// target/{release,debug}).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Jam sessions (5 long-lived members each).
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Churn slots in each of the first two jam sessions.
    #[arg(long, default_value_t = 3)]
    churners: usize,
    /// Abuse sessions (one abuser at a time, and a witness, each).
    #[arg(long, default_value_t = 2)]
    abusers: usize,
    /// Slow consumers at a time (each registers, never reads, and must be dropped).
    #[arg(long, default_value_t = 1)]
    slow_consumers: usize,
    /// Where the relay's log goes (default: a file in the temporary directory).
    #[arg(long)]
    relay_log: Option<PathBuf>,
    /// Largest RSS growth allowed from the second to the last quarter, percent.
    #[arg(long, default_value_t = 20.0)]
    rss_max_growth_pct: f64,
    /// Largest RSS growth allowed from the second to the last quarter, MiB.
    #[arg(long, default_value_t = 16)]
    rss_max_growth_mib: u64,
    /// 0: one relay. N: N relay nodes (`--cluster-nats`) on one `nats-server -js`; clients
    /// join them round-robin and resume on another node; churn and kicks (sent to the first
    /// node) are the only disturbances, and `/metrics` is not compared with the clients'
    /// counts.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Share (0 to 1) of the well-behaved clients' connections (long-lived members,
    /// churners, resumes, and slow consumers) made over WebSocket (`GET /ws`) instead of
    /// framed TCP; abusers and bad input stay on TCP.
    #[arg(long, default_value_t = 0.3)]
    websocket_share: f64,
    /// Share (0 to 1) of the same connections made inside TLS (framed or WebSocket: the
    /// relay serves both on its one port, with a test certificate made for the run).
    #[arg(long, default_value_t = 0.3)]
    tls_share: f64,
    /// With --nodes: the nodes' --cluster-streams (sessions spread over this many streams).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    cluster_streams: u8,
    /// The nats-server binary for --nodes (default: on the PATH, else /usr/sbin/nats-server).
    #[arg(long)]
    nats_bin: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// What the server at --addr is.
    #[arg(long, value_enum, default_value = "relay-tcp")]
    target: Target,
    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:9090")]
    addr: SocketAddr,
    /// Pid of the server process, for its CPU and memory (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Standard scenario to start from (see `scenarios`); the flags below override it.
    #[arg(long, default_value = "jam")]
    scenario: String,
    /// Client behaviour.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Independent groups (sessions, subjects, channels).
    #[arg(long)]
    groups: Option<usize>,
    /// Clients per group.
    #[arg(long)]
    members: Option<usize>,
    /// Publishers per group.
    #[arg(long)]
    publishers: Option<usize>,
    /// Messages per second per publisher; 0: flat out with a bounded window.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes per message (at least 16).
    #[arg(long)]
    size: Option<usize>,
    /// Churn mode: clients joining and leaving.
    #[arg(long)]
    churners: Option<usize>,
    /// Churn mode: how long each churner stays (e.g. 200ms).
    #[arg(long, value_parser = parse_duration)]
    churn_stay: Option<Duration>,
    /// Messages per publisher at most (0: only the duration bounds it).
    #[arg(long, default_value_t = 0)]
    max_messages: u64,
    /// Print the report as JSON instead of one line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SuiteArgs {
    /// Servers, in column order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "relay-tcp,relay-ws,nats,redis"
    )]
    targets: Vec<Target>,
    /// Scenarios, in order. `cluster` (its own table, after the others) runs the
    /// --cluster-workloads on one relay and on relay nodes sharing one nats-server -js.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "jam,burst,fanout,large,idle,many-sessions,churn,cluster"
    )]
    scenarios: Vec<String>,
    /// The cluster scenario: standard workloads it runs (relay-tcp, whatever --targets).
    #[arg(long, value_delimiter = ',', default_value = "jam,burst")]
    cluster_workloads: Vec<String>,
    /// The cluster scenario: relay layouts as node counts (0: one relay without NATS).
    #[arg(long, value_delimiter = ',', default_value = "0,1,3")]
    cluster_nodes: Vec<usize>,
    /// The relay binary (default: `sova-relay` beside this program).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The NATS server binary.
    #[arg(long, default_value = "nats-server")]
    nats_bin: PathBuf,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_bin: PathBuf,
    /// Also write every report as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// Publishing time per run (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Flat-out mode: messages per publisher in flight (sent, not yet received by all).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Version sent to the relay in RegisterInstance.
    #[arg(long, default_value = "0.1.0")]
    sova_version: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string());
    }
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Suite(args) => runtime.block_on(run_suite(args)),
        Command::Soak(args) => {
            let passed = runtime.block_on(soak(args))?;
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Scenarios => {
            for scenario in scenario::SCENARIOS {
                println!("{:<14} {}", scenario.name, scenario.about);
            }
            println!("{:<14} {} (suite only)", cluster::NAME, cluster::ABOUT);
            Ok(())
        }
    }
}

fn scenario(name: &str) -> anyhow::Result<&'static Scenario> {
    scenario::find(name)
        .with_context(|| format!("unknown scenario '{name}' (known: {})", scenario::names()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.addr.ip().is_loopback() {
        bail!(
            "the bench only drives servers on loopback addresses, not {}",
            args.addr
        );
    }
    let base = scenario(&args.scenario)?;
    let workload = Workload {
        scenario: args.scenario.clone(),
        target: args.target,
        addrs: vec![args.addr],
        mode: args.mode.unwrap_or(base.mode),
        groups: args.groups.unwrap_or(base.groups).max(1),
        members: args.members.unwrap_or(base.members).max(1),
        publishers: args.publishers.unwrap_or(base.publishers),
        rate: args.rate.unwrap_or(base.rate).max(0.0),
        size: args.size.unwrap_or(base.size),
        duration: base
            .duration
            .filter(|_| args.common.duration == Duration::from_secs(10))
            .unwrap_or(args.common.duration),
        window: args.common.window,
        max_messages: args.max_messages,
        churners: args.churners.unwrap_or(base.churners),
        churn_stay: args.churn_stay.unwrap_or(base.churn_stay),
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(5),
        sova_version: args.common.sova_version,
    };
    let report = workload::run(&workload, args.server_pid).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
        for note in &report.notes {
            println!("  note: {note}");
        }
    }
    Ok(())
}

async fn soak(args: SoakArgs) -> anyhow::Result<bool> {
    let options = sova_relay_bench::soak::Options {
        duration: Duration::from_secs(args.seconds),
        seed: args.seed,
        relay_bin: args.relay_bin,
        sizes: sova_relay_bench::soak::Sizes {
            sessions: args.sessions.max(1),
            churners: args.churners,
            abusers: args.abusers,
            slow_consumers: args.slow_consumers,
        },
        relay_log: args.relay_log,
        rss_max_growth_pct: args.rss_max_growth_pct,
        rss_max_growth_mib: args.rss_max_growth_mib,
        nodes: args.nodes,
        cluster_streams: args.cluster_streams,
        websocket_share: args.websocket_share.clamp(0.0, 1.0),
        tls_share: args.tls_share.clamp(0.0, 1.0),
        nats_bin: args.nats_bin,
    };
    let outcome = sova_relay_bench::soak::run(&options).await?;
    println!("{}", outcome.report);
    Ok(outcome.passed)
}

async fn run_suite(args: SuiteArgs) -> anyhow::Result<()> {
    let scenarios = args
        .scenarios
        .iter()
        .filter(|name| *name != cluster::NAME)
        .map(|name| scenario(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cluster = ClusterOptions {
        workloads: args
            .cluster_workloads
            .iter()
            .map(|name| scenario(name))
            .collect::<anyhow::Result<Vec<_>>>()?,
        layouts: args
            .cluster_nodes
            .iter()
            .map(|&n| Layout::from_count(n))
            .collect(),
    };
    let with_cluster = args.scenarios.iter().any(|name| name == cluster::NAME);
    let relay = match args.relay_bin {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("sova-relay"),
    };
    let options = SuiteOptions {
        targets: args.targets,
        scenarios,
        duration: args.common.duration,
        window: args.common.window,
        binaries: Binaries {
            relay,
            nats: args.nats_bin,
            redis: args.redis_bin,
        },
        sova_version: args.common.sova_version,
    };
    let outcomes = suite::run(&options).await;
    let clustered = if with_cluster {
        cluster::run(&cluster, &options).await
    } else {
        Vec::new()
    };
    if let Some(path) = &args.json_out {
        let reports: Vec<_> = outcomes
            .iter()
            .map(|o| &o.result)
            .chain(clustered.iter().map(|o| &o.result))
            .filter_map(|result| result.as_ref().ok())
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !options.scenarios.is_empty() {
        println!("{}", suite::markdown(&outcomes, &options));
    }
    if with_cluster {
        println!("{}", cluster::markdown(&clustered));
    }
    Ok(())
}
