//! `sova-relay-bench soak`: the real relay binary under hours-in-minutes of life. Well-
//! behaved instances in several sessions check that, while sender and receiver are both
//! connected, every update arrives exactly once and in per-source order (and across
//! resumes, every broadcast by `seq`); meanwhile instances churn, bad input arrives,
//! consumers stall, abusers flood, operators kick. At the end the relay's memory must have
//! stayed flat and its `/metrics` must agree with what the clients counted. The run is
//! driven by one seeded RNG; the report says which invariants held, and how often.
//! With `nodes` (`--nodes N`), the relay is N cluster nodes on one `nats-server -js`, which
//! the well-behaved clients and churners join round-robin and resume on another node of.

mod abuse;
mod bad;
mod bad_frames;
mod bad_http;
mod bad_session;
mod cast;
mod checks;
mod churn;
mod client;
mod ctx;
mod expect;
mod http;
mod kick;
mod ledger;
mod member;
mod receiver;
mod relay;
mod report;
mod resume;
mod rss;
mod slow;
mod tls;
mod update;
mod verdict;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

pub use cast::Sizes;
use ctx::{Ack, Ctx, Phase, Settings, Summary};
use ledger::get;
use relay::Relay;

use crate::servers::{Binaries, ServerProcess};
pub use verdict::Inv;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of the disturbed part of the run.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// The relay binary (default: beside this program).
    pub relay_bin: Option<PathBuf>,
    /// How many of each participant.
    pub sizes: Sizes,
    /// The relay's log (default: a file in the temporary directory).
    pub relay_log: Option<PathBuf>,
    /// RSS may grow by at most this percentage between the second and last quarter...
    pub rss_max_growth_pct: f64,
    /// ...and at most this many MiB.
    pub rss_max_growth_mib: u64,
    /// 0: one relay. Otherwise this many relay nodes (`--cluster-nats`) on one
    /// `nats-server -js`, which clients join round-robin and resume on another node of;
    /// churn and kicks (sent to the first node, so mostly of other nodes' instances) are
    /// the only disturbances, `seq`s are checked to increase (not to be contiguous), and
    /// `/metrics` is not compared with the clients' counts.
    pub nodes: usize,
    /// `--cluster-streams` of every node (with `nodes`).
    pub cluster_streams: u8,
    /// Share (0 to 1) of the well-behaved clients' connections (members, churners,
    /// resumes) made over WebSocket instead of framed TCP.
    pub websocket_share: f64,
    /// Share (0 to 1) of the same connections made inside TLS (framed or WebSocket).
    pub tls_share: f64,
    /// `nats-server` for a cluster (default: on the PATH, else /usr/sbin/nats-server).
    pub nats_bin: Option<PathBuf>,
}

impl Options {
    /// A smoke run of a few seconds, as `cargo test` makes: one jam session, one churn slot,
    /// no abusers or slow consumers, a generous memory bound (a short run has no steady
    /// state), the relay beside this program, one relay.
    pub fn smoke(duration: Duration, seed: u64) -> Options {
        Options {
            duration,
            seed,
            relay_bin: None,
            sizes: Sizes {
                sessions: 1,
                churners: 1,
                abusers: 0,
                slow_consumers: 0,
            },
            relay_log: None,
            rss_max_growth_pct: 100.0,
            rss_max_growth_mib: 64,
            nodes: 0,
            cluster_streams: 1,
            websocket_share: 0.3,
            tls_share: 0.3,
            nats_bin: None,
        }
    }
}

/// The result: whether every invariant held, and the report.
pub struct Outcome {
    /// No violation.
    pub passed: bool,
    /// Violations per invariant (those with any).
    pub violations: Vec<(Inv, u64)>,
    /// The human-readable report.
    pub report: String,
}

/// The relay binary `run` uses when none is given.
pub fn locate_relay() -> anyhow::Result<PathBuf> {
    relay::locate()
}

/// How long each end-of-run step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a soak.
pub async fn run(options: &Options) -> anyhow::Result<Outcome> {
    let bin = match &options.relay_bin {
        Some(bin) => bin.clone(),
        None => relay::locate()?,
    };
    // The relay serves TLS beside plaintext on its one port; the PKI's files live until
    // the end of the run.
    let (pki, tls) = tls::set_up()?;
    let settings = Settings {
        rate_limit: 600,
        max_pending_bytes: 256 * 1024,
        max_message_size: 1 << 20,
        handshake_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(5),
        history_max_updates: 10_000,
        history_max_age: Duration::from_secs(10),
        admin_token: format!("soak-admin-{:016x}", options.seed),
        tls: Some((pki.cert.clone(), pki.key.clone())),
    };
    let log = options.relay_log.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sova-relay-soak-{}.log", std::process::id()))
    });
    let (relays, logs, nats, header) = if options.nodes == 0 {
        let relay = Relay::start(&bin, &settings, &log).await?;
        let header = format!(
            "relay {} (pid {}) on {}, log {} (by default kept only if the run fails)",
            bin.display(),
            relay.pid,
            relay.addr,
            log.display()
        );
        (vec![relay], vec![log], None, header)
    } else {
        start_cluster(options, &bin, &settings, &log).await?
    };
    let (phase_tx, phase) = watch::channel(Phase::Run);
    let (acks, acks_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        addr: relays[0].addr,
        nodes: if options.nodes == 0 {
            Vec::new()
        } else {
            relays.iter().map(|r| r.addr).collect()
        },
        next_node: Default::default(),
        settings,
        books: Default::default(),
        phase,
        acks,
        kickable: Default::default(),
        started: Instant::now(),
        websocket_share: options.websocket_share,
        tls_share: options.tls_share,
        tls: Some(tls),
    });
    let mut options = options.clone();
    if ctx.cluster() {
        // Their members (witnesses, the flood's feeder) come with disturbances not run.
        options.sizes.abusers = 0;
        options.sizes.slow_consumers = 0;
    }
    let conducted = conduct(&ctx, &options, relays, &phase_tx, acks_rx).await;
    let report = report::render(&ctx, &options, &header, &conducted);
    if let Some((server, store)) = nats {
        tokio::task::spawn_blocking(move || server.stop()).await?;
        let _ = std::fs::remove_dir_all(store);
    }
    if violations_none(&ctx) && options.relay_log.is_none() {
        // The default logs are kept only when they have a failure to explain.
        for log in &logs {
            let _ = std::fs::remove_file(log);
        }
    }
    let violations = verdict::ALL
        .iter()
        .map(|&inv| (inv, ctx.books.verdicts.counts(inv).1))
        .filter(|&(_, failed)| failed > 0)
        .collect();
    Ok(Outcome {
        passed: ctx.books.verdicts.total_failed() == 0,
        violations,
        report,
    })
}

/// What a cluster run starts: the nodes, their logs, nats-server and its store, a header.
type Cluster = (
    Vec<Relay>,
    Vec<PathBuf>,
    Option<(ServerProcess, PathBuf)>,
    String,
);

/// Starts `nats-server -js` (store in a fresh temporary directory) and `options.nodes`
/// relay nodes on it, each with the soak's settings; node `i`'s log is `log` with `-node{i}`.
async fn start_cluster(
    options: &Options,
    bin: &Path,
    settings: &Settings,
    log: &Path,
) -> anyhow::Result<Cluster> {
    let binaries = Binaries {
        relay: bin.to_owned(),
        nats: match &options.nats_bin {
            Some(nats) => nats.clone(),
            None => locate_nats(),
        },
        redis: PathBuf::from("redis-server"),
    };
    let store = std::env::temp_dir().join(format!(
        "sova-relay-soak-js-{}-{}",
        std::process::id(),
        options.seed
    ));
    std::fs::create_dir_all(&store)?;
    let nats_store = store.clone();
    let nats_bin = binaries.nats.clone();
    let server =
        tokio::task::spawn_blocking(move || ServerProcess::start_jetstream(&binaries, &nats_store))
            .await?
            .map_err(|err| anyhow::anyhow!("nats-server -js ({}): {err:#}", nats_bin.display()))?;
    let mut relays = Vec::new();
    let mut logs = Vec::new();
    let stem = log.with_extension("");
    for i in 0..options.nodes {
        let node_log = PathBuf::from(format!("{}-node{i}.log", stem.display()));
        let name = format!("soak-node-{i}");
        let node = Relay::start_node(
            bin,
            settings,
            &node_log,
            server.addr,
            &name,
            options.cluster_streams,
        )
        .await?;
        relays.push(node);
        logs.push(node_log);
    }
    let nodes: Vec<String> = relays
        .iter()
        .zip(&logs)
        .map(|(r, log)| format!("pid {} on {} (log {})", r.pid, r.addr, log.display()))
        .collect();
    let header = format!(
        "cluster: {} relay nodes of {} on nats-server -js (pid {}) at {}, {} update stream(s): {}; logs kept only if the run fails\n\
         cluster mode: clients join the nodes round-robin and resume on the next node; churn and kicks (through node 0) are the only disturbances; \
         seq checked to increase (a cluster's seqs are not contiguous) and the seq span accounting skipped; \
         RSS and CPU are node 0's; /metrics not compared with the clients' counts (one process per node)",
        options.nodes,
        bin.display(),
        server.pid,
        server.addr,
        options.cluster_streams,
        nodes.join(", ")
    );
    Ok((relays, logs, Some((server, store)), header))
}

/// `nats-server` on the PATH, else Debian's.
fn locate_nats() -> PathBuf {
    let on_path = std::process::Command::new("nats-server")
        .arg("--version")
        .output();
    if on_path.is_ok_and(|out| out.status.success()) {
        return PathBuf::from("nats-server");
    }
    PathBuf::from("/usr/sbin/nats-server")
}

fn violations_none(ctx: &Ctx) -> bool {
    ctx.books.verdicts.total_failed() == 0
}

/// What the conductor gathered for the report.
pub(crate) struct Conducted {
    rss: Option<rss::Judgement>,
    rows: Vec<expect::Row>,
    exit: Result<std::process::ExitStatus, String>,
    elapsed: Duration,
    /// How long each end-of-run step took.
    steps: Vec<(&'static str, Duration)>,
}

async fn conduct(
    ctx: &Arc<Ctx>,
    options: &Options,
    mut relays: Vec<Relay>,
    phase: &watch::Sender<Phase>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) -> Conducted {
    let mut seeds = fastrand::Rng::with_seed(options.seed);
    let plans = cast::members(options.sizes);
    let mut members = cast::spawn_members(ctx, &plans, &mut seeds);
    // Disturbances start once every member is registered (bad input borrows their names).
    let registered = async {
        while get(&ctx.books.tally.registrations) < plans.len() as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), registered).await;
    let (stop_rss, rss_stopped) = oneshot::channel::<()>();
    let sampler = tokio::spawn(rss::Series::sample(relays[0].pid, ctx.started, async {
        let _ = rss_stopped.await;
    }));
    let mut disturbances = cast::spawn_disturbances(ctx, options.sizes, &mut seeds);
    let deadline = Instant::now() + options.duration;
    while Instant::now() < deadline && relays.iter_mut().all(Relay::alive) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alive = relays.iter_mut().all(Relay::alive);
    ctx.books.verdicts.check(Inv::Process, alive, || {
        "the relay exited during the run".to_owned()
    });
    let mut steps = Steps::starting_now();
    let _ = phase.send(Phase::Wind);
    let wound = async { while disturbances.join_next().await.is_some() {} };
    if tokio::time::timeout(STEP_TIMEOUT, wound).await.is_err() {
        ctx.books.verdicts.fail(Inv::Process, || {
            "disturbances did not wind down within 60 s".to_owned()
        });
        disturbances.abort_all();
    }
    let _ = stop_rss.send(());
    let (series, _) = sampler.await.unwrap_or_default();
    steps.mark("wind down disturbances");
    let n = plans.len();
    let _ = phase.send(Phase::Quiesce);
    gather(ctx, &mut acks, n, "quiesce", |ack| {
        matches!(ack, Ack::Quiesced).then_some(())
    })
    .await;
    // Connections that left by a reset may still be registered for a moment: the barrier
    // needs their departure notices queued before the members' last Pongs.
    let quiet = if ctx.cluster() {
        settle_cluster(ctx, n as u64).await
    } else {
        settle(ctx, n as u64).await
    };
    steps.mark("quiesce senders");
    let _ = phase.send(Phase::Barrier);
    let summaries: Vec<Summary> = gather(ctx, &mut acks, n, "barrier", |ack| match ack {
        Ack::Final(summary) => Some(*summary),
        _ => None,
    })
    .await;
    steps.mark("barrier");
    checks::sessions(&summaries, &ctx.books, !ctx.cluster());
    checks::abusers(&ctx.books, &ctx.settings);
    let live = expect::Live {
        instances: n as u64,
        sessions: cast::sessions(options.sizes),
    };
    let rows = match quiet {
        Some(metrics) if alive && !ctx.cluster() => compare_metrics(ctx, live, &metrics).await,
        _ => Vec::new(),
    };
    steps.mark("metrics");
    let _ = phase.send(Phase::Shutdown);
    let within = ctx.settings.shutdown_timeout + Duration::from_secs(5);
    let exits =
        futures_util::future::join_all(relays.into_iter().map(|relay| relay.terminate(within)))
            .await;
    for exit in &exits {
        ctx.books.verdicts.check(
            Inv::Process,
            exit.as_ref().is_ok_and(|s| s.success()),
            || format!("relay exit after SIGTERM: {exit:?}"),
        );
    }
    let exit = exits
        .iter()
        .find(|exit| !exit.as_ref().is_ok_and(|s| s.success()))
        .unwrap_or(&exits[0])
        .clone();
    gather(ctx, &mut acks, n, "shutdown", |ack| {
        matches!(ack, Ack::Closed).then_some(())
    })
    .await;
    steps.mark("shutdown");
    members.abort_all();
    let rss = series.judge(
        options.rss_max_growth_pct,
        options.rss_max_growth_mib * 1024,
    );
    // Fewer than 8 samples (a run that short) say nothing about memory: not judged.
    if let Some(judged) = &rss {
        ctx.books.verdicts.check(Inv::Rss, judged.flat, || {
            format!(
                "RSS grew from {} KiB to {} KiB (allowed +{} KiB)",
                judged.early, judged.late, judged.allowed_kib
            )
        });
    }
    Conducted {
        rss,
        rows,
        exit,
        elapsed: ctx.started.elapsed(),
        steps: steps.done,
    }
}

/// Durations of consecutive steps.
struct Steps {
    since: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn starting_now() -> Self {
        Steps {
            since: Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step `step` ends now.
    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, now - self.since));
        self.since = now;
    }
}

/// Collects `n` acks that `pick` accepts (others are dropped), within the step timeout.
async fn gather<T>(
    ctx: &Ctx,
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    n: usize,
    step: &str,
    pick: impl Fn(Ack) -> Option<T>,
) -> Vec<T> {
    let mut got = Vec::new();
    let collecting = async {
        while got.len() < n {
            match acks.recv().await {
                Some(ack) => got.extend(pick(ack)),
                None => return,
            }
        }
    };
    if tokio::time::timeout(STEP_TIMEOUT, collecting)
        .await
        .is_err()
    {
        ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!(
                "{step}: only {} of {n} members reported within 60 s",
                got.len()
            )
        });
    }
    got
}

/// Waits until the relay has seen every departure (only the `n` long-lived members left);
/// returns the metrics that said so.
async fn settle(ctx: &Ctx, n: u64) -> Option<http::Metrics> {
    let started = Instant::now();
    loop {
        let scraped = http::scrape(ctx).await;
        match scraped {
            Ok(m) if m.get("sova_relay_instances") as u64 == n => return Some(m),
            _ if started.elapsed() > Duration::from_secs(15) => {
                ctx.books.verdicts.fail(Inv::Metrics, || {
                    format!("the relay did not settle at {n} instances within 15 s: {scraped:?}")
                });
                return None;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// In a cluster: waits until every node counts the `n` long-lived members, its own
/// (`sova_relay_instances`) plus the others' (`sova_cluster_remote_instances`), so that
/// every departure has reached every node; returns node 0's metrics.
async fn settle_cluster(ctx: &Ctx, n: u64) -> Option<http::Metrics> {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        let mut first = None;
        for &addr in &ctx.nodes {
            let scraped = http::scrape_at(ctx, addr).await;
            seen.push(scraped.as_ref().ok().map(|m| {
                (m.get("sova_relay_instances") + m.get("sova_cluster_remote_instances")) as u64
            }));
            if let Ok(m) = scraped {
                first.get_or_insert(m);
            }
        }
        if seen.iter().all(|&c| c == Some(n)) {
            return first;
        }
        if started.elapsed() > Duration::from_secs(15) {
            ctx.books.verdicts.fail(Inv::Metrics, || {
                format!("the nodes did not each count {n} instances within 15 s: {seen:?}")
            });
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Compares the metrics (scraped again, now that the barrier's pings are in) with the books.
async fn compare_metrics(
    ctx: &Ctx,
    live: expect::Live,
    settled: &http::Metrics,
) -> Vec<expect::Row> {
    let verdicts = &ctx.books.verdicts;
    let metrics = match http::scrape(ctx).await {
        Ok(metrics) => metrics,
        Err(err) => {
            verdicts.fail(Inv::Metrics, || format!("GET /metrics: {err}"));
            return Vec::new();
        }
    };
    let decreased = metrics.decreased_since(settled);
    verdicts.check(Inv::Http, decreased.is_empty(), || {
        format!("counters decreased: {}", decreased.join(", "))
    });
    let rows = expect::compare(&metrics, &ctx.books, live);
    for row in &rows {
        verdicts.check(Inv::Metrics, row.ok(), || {
            format!(
                "{}: relay {} vs clients {}",
                row.series, row.relay, row.clients
            )
        });
    }
    rows
}
