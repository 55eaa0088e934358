//! One run: connect the clients, publish for a while, wait for every delivery owed, and
//! measure. Three modes share the machinery: `pubsub` (groups of clients, some of which
//! publish), `idle` (registered, silent clients: memory per connection) and `churn`
//! (`pubsub` while extra clients join and leave all the time).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ns;
use crate::payload::{self, Stamp};
use crate::procfs::ProcSample;
use crate::proto::{self, ClientSpec, Reader, Sink, Target, Writer};
use crate::report::{Churn, Latency, Report, ServerUsage};

mod churn;
mod publish;

use publish::{publish, Plan};

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Groups of clients; the first `publishers` of each group publish, all receive.
    Pubsub,
    /// Clients connect, register or subscribe, and stay silent.
    Idle,
    /// `pubsub`, while `churners` extra clients keep joining and leaving the groups.
    Churn,
}

/// A complete description of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Scenario name, for the report.
    pub scenario: String,
    /// The server driven.
    pub target: Target,
    /// Its addresses (loopback): client `i` connects to `addrs[i % addrs.len()]`, so the
    /// clients of a cluster's nodes are spread round-robin over them; usually one.
    #[serde(skip)]
    pub addrs: Vec<SocketAddr>,
    /// What the clients do.
    pub mode: Mode,
    /// Independent groups (relay sessions, NATS subjects, Redis channels).
    pub groups: usize,
    /// Clients per group.
    pub members: usize,
    /// Publishing clients per group (the first ones).
    pub publishers: usize,
    /// Messages per second per publisher; 0: as fast as the window allows.
    pub rate: f64,
    /// Payload bytes per message (at least 16: the stamp).
    pub size: usize,
    /// How long publishers publish (idle: how long clients stay connected).
    pub duration: Duration,
    /// Flat-out mode: messages per publisher not yet received by all of its group.
    pub window: u64,
    /// Messages per publisher at most; 0: no bound but the duration.
    pub max_messages: u64,
    /// Churn mode: clients that keep joining and leaving.
    pub churners: usize,
    /// Churn mode: how long a churner stays before leaving.
    pub churn_stay: Duration,
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// Longest wait, after publishing stops, for deliveries still owed.
    pub drain_timeout: Duration,
    /// Version sent to the relay.
    pub sova_version: String,
}

impl Workload {
    /// The address client number `client` connects to (`run` checks there is one).
    pub fn addr_of(&self, client: usize) -> SocketAddr {
        self.addrs[client % self.addrs.len().max(1)]
    }

    /// Clients that stay connected for the whole run.
    pub fn clients(&self) -> usize {
        self.groups * self.members
    }

    fn publishers_per_group(&self) -> usize {
        match self.mode {
            Mode::Idle => 0,
            Mode::Pubsub | Mode::Churn => self.publishers.min(self.members),
        }
    }
}

/// Per-publisher counters, on their own cache line: receivers bump them from every core.
#[repr(align(64))]
struct PublisherState {
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Deliveries each message owes: the other members of the group.
    recipients: u64,
    /// Flat-out mode: the publisher waits for in-flight deliveries to fall to this.
    low_water: u64,
    waiting: AtomicBool,
    wake: Notify,
}

impl PublisherState {
    fn delivered_one(&self) {
        let delivered = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        if self.waiting.load(Ordering::SeqCst) {
            let owed = self.sent.load(Ordering::SeqCst) * self.recipients;
            if owed.saturating_sub(delivered) <= self.low_water {
                self.waiting.store(false, Ordering::SeqCst);
                self.wake.notify_one();
            }
        }
    }

    fn in_flight(&self) -> u64 {
        let owed = self.sent.load(Ordering::SeqCst) * self.recipients;
        owed.saturating_sub(self.delivered.load(Ordering::SeqCst))
    }
}

/// What every task of a run shares.
struct Shared {
    publishers: Vec<PublisherState>,
    latency: Mutex<Histogram<u64>>,
    /// Rate mode: how late each send was against its schedule (client overload shows here).
    send_lag: Mutex<Histogram<u64>>,
    payload_len: usize,
    server_errors: AtomicU64,
    malformed: AtomicU64,
    closed_early: AtomicU64,
    stalled: AtomicU64,
    notes: Mutex<Vec<String>>,
    /// Cancelled at the end: readers flush what they hold and stop.
    stop: CancellationToken,
}

/// Notes kept per run, at most.
const MAX_NOTES: usize = 8;
/// Latencies a reader buffers before taking the histogram's lock.
const LATENCY_BATCH: usize = 512;
/// A flat-out publisher whose window has not moved for this long gives up.
const STALL_LIMIT: Duration = Duration::from_secs(3);

impl Shared {
    fn note(&self, text: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < MAX_NOTES && !notes.contains(&text) {
            notes.push(text);
        }
    }

    fn record(&self, latencies: &mut Vec<u64>) {
        if latencies.is_empty() {
            return;
        }
        let mut histogram = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &ns in latencies.iter() {
            histogram.saturating_record(ns.max(1));
        }
        latencies.clear();
    }

    fn delivered(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.delivered.load(Ordering::SeqCst))
            .sum()
    }

    fn expected(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.sent.load(Ordering::SeqCst) * p.recipients)
            .sum()
    }
}

/// One client's receiving end: counts deliveries, collects latencies.
struct Receiver<'a> {
    shared: &'a Shared,
    /// This client's own publisher index: its own messages (Redis echoes them) are skipped.
    me: Option<u32>,
    /// Churners receive but do not count.
    counted: bool,
    latencies: Vec<u64>,
}

impl Sink for Receiver<'_> {
    fn payload(&mut self, payload: &[u8]) {
        let stamp = match Stamp::read(payload) {
            Some(stamp) if payload.len() == self.shared.payload_len => stamp,
            _ => return self.malformed(),
        };
        if !self.counted || Some(stamp.publisher) == self.me {
            return;
        }
        let Some(publisher) = self.shared.publishers.get(stamp.publisher as usize) else {
            return self.malformed();
        };
        self.latencies.push(now_ns().saturating_sub(stamp.sent_ns));
        publisher.delivered_one();
        if self.latencies.len() >= LATENCY_BATCH {
            self.shared.record(&mut self.latencies);
        }
    }

    fn server_error(&mut self, text: &str) {
        self.shared.server_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.note(format!("server error: {text}"));
    }

    fn malformed(&mut self) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn receive(mut reader: Reader, shared: Arc<Shared>, me: Option<u32>) {
    let mut receiver = Receiver {
        shared: &shared,
        me,
        counted: true,
        latencies: Vec::new(),
    };
    // One registration with the shared token for the reader's life, not one per read.
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => break,
            outcome = reader.read(&mut receiver) => outcome,
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                shared.closed_early.fetch_add(1, Ordering::Relaxed);
                shared.note("a connection was closed by the server".to_owned());
                break;
            }
            Err(err) => {
                shared.closed_early.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("read failed: {err}"));
                break;
            }
        }
    }
    shared.record(&mut receiver.latencies);
}

/// Connects every client of `workload`, at most `connect_concurrency` at a time.
async fn connect_all(
    workload: &Workload,
    payload: &Arc<Vec<u8>>,
) -> anyhow::Result<Vec<(Reader, Writer)>> {
    let limit = Arc::new(Semaphore::new(workload.connect_concurrency.max(1)));
    let publishers = workload.publishers_per_group();
    let mut tasks = JoinSet::new();
    for client in 0..workload.clients() {
        let (group, member) = (client / workload.members, client % workload.members);
        let limit = limit.clone();
        let payload = payload.clone();
        let (target, addr, version) = (
            workload.target,
            workload.addr_of(client),
            workload.sova_version.clone(),
        );
        // A broker client subscribes when somebody else in its group publishes (or, idle,
        // always); a lone publisher does not, so Redis does not echo to it.
        let subscribe = !(publishers == 1 && member == 0);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let spec = ClientSpec {
                name: &format!("g{group}-m{member}"),
                group: &format!("g{group}"),
                subscribe,
                payload: &payload,
                sova_version: &version,
            };
            let connected = proto::connect(target, addr, &spec).await;
            (
                client,
                connected.with_context(|| format!("client g{group}-m{member}")),
            )
        });
    }
    let mut clients: Vec<Option<(Reader, Writer)>> =
        (0..workload.clients()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (client, connected) = joined.context("connect task panicked")?;
        clients[client] = Some(connected?);
    }
    Ok(clients.into_iter().flatten().collect())
}

/// The processes whose CPU and memory a run reports: the servers the clients talk to
/// (summed: a cluster's relay nodes) and, apart, a broker behind them (a cluster's NATS).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Pids summed into [`Report::server`].
    pub servers: Vec<u32>,
    /// Pids summed into [`Report::broker`].
    pub broker: Vec<u32>,
}

/// Runs `workload`; `server_pid` adds the server's CPU and memory to the report.
pub async fn run(workload: &Workload, server_pid: Option<u32>) -> anyhow::Result<Report> {
    let watch = Watch {
        servers: server_pid.into_iter().collect(),
        broker: Vec::new(),
    };
    run_watching(workload, &watch).await
}

/// Runs `workload`, reading the CPU and memory of the processes in `watch`.
pub async fn run_watching(workload: &Workload, watch: &Watch) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !workload.addrs.is_empty(),
        "the workload has no server address"
    );
    let _ = now_ns();
    let payload = Arc::new(payload::template(workload.size));
    let per_group = workload.publishers_per_group();
    let recipients = workload.members.saturating_sub(1) as u64;
    let shared = Arc::new(Shared {
        publishers: (0..workload.groups * per_group)
            .map(|_| PublisherState {
                sent: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                recipients,
                low_water: workload.window.max(1) * recipients / 2,
                waiting: AtomicBool::new(false),
                wake: Notify::new(),
            })
            .collect(),
        latency: Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000_000, 3).context("latency histogram")?,
        ),
        send_lag: Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000_000, 3).context("send lag histogram")?,
        ),
        payload_len: payload.len(),
        server_errors: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        stalled: AtomicU64::new(0),
        notes: Mutex::new(Vec::new()),
        stop: CancellationToken::new(),
    });
    let sample = || -> std::io::Result<Sample> {
        Ok([
            ProcSample::read_sum(&watch.servers)?,
            ProcSample::read_sum(&watch.broker)?,
        ])
    };
    let baseline = sample().context("reading the server's /proc")?;
    let connect_started = Instant::now();
    let clients = connect_all(workload, &payload).await?;
    let connect_time = connect_started.elapsed();
    let mut readers = JoinSet::new();
    let mut writers = Vec::with_capacity(clients.len());
    for (client, (reader, writer)) in clients.into_iter().enumerate() {
        let (group, member) = (client / workload.members, client % workload.members);
        let me = (member < per_group).then(|| (group * per_group + member) as u32);
        readers.spawn(receive(reader, shared.clone(), me));
        writers.push(Some(writer));
    }
    if workload.mode == Mode::Idle {
        // Let the server finish what registration started before reading its memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let connected = sample()?;

    let start = Instant::now() + Duration::from_millis(50);
    let end = start + workload.duration;
    let plan = Plan {
        start,
        end,
        rate: workload.rate,
        window: workload.window,
        max_messages: workload.max_messages,
    };
    let mut publishing = JoinSet::new();
    for (client, writer) in writers.iter_mut().enumerate() {
        let (group, member) = (client / workload.members, client % workload.members);
        if member < per_group {
            if let Some(writer) = writer.take() {
                let index = (group * per_group + member) as u32;
                let shared = shared.clone();
                publishing
                    .spawn(async move { (client, publish(writer, index, shared, plan).await) });
            }
        }
    }
    let churn = if workload.mode == Mode::Churn {
        Some(churn::spawn_churners(workload, &payload, &shared, end))
    } else {
        None
    };
    if workload.mode == Mode::Idle {
        tokio::time::sleep_until(end).await;
    }
    while let Some(done) = publishing.join_next().await {
        let (client, writer) = done.context("publisher panicked")?;
        writers[client] = Some(writer);
    }
    let published = start
        .elapsed()
        .min(workload.duration.max(Duration::from_millis(1)));
    let churn = match churn {
        Some(churners) => Some(churners.finish(start).await),
        None => None,
    };
    // Wait for every delivery owed, or the drain timeout.
    let drain_until = Instant::now() + workload.drain_timeout;
    while shared.delivered() < shared.expected() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let finished = sample()?;

    shared.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    drop(writers);

    let measured = match workload.mode {
        Mode::Idle => (baseline, connected),
        Mode::Pubsub | Mode::Churn => (connected, finished),
    };
    Ok(build_report(
        workload,
        &shared,
        published,
        connect_time,
        (baseline, connected, measured.0, measured.1),
        churn,
    ))
}

/// One reading of the watched servers and of the broker.
type Sample = [Option<ProcSample>; 2];
/// Before the clients, with them connected, and the start and end of the measured span.
type Samples = (Sample, Sample, Sample, Sample);

fn build_report(
    workload: &Workload,
    shared: &Shared,
    published: Duration,
    connect_time: Duration,
    (baseline, connected, from, to): Samples,
    churn: Option<Churn>,
) -> Report {
    let delivered = shared.delivered();
    let expected = shared.expected();
    let sent = shared
        .publishers
        .iter()
        .map(|p| p.sent.load(Ordering::SeqCst))
        .sum();
    let latency_us = percentiles(&shared.latency.lock().unwrap_or_else(|p| p.into_inner()));
    let send_lag_us = percentiles(&shared.send_lag.lock().unwrap_or_else(|p| p.into_inner()));
    let clients = workload.clients();
    let usage = |i: usize| {
        ServerUsage::between(
            [baseline[i], connected[i], from[i], to[i]],
            delivered,
            clients,
        )
    };
    let mut notes = shared
        .notes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    notes.push(format!(
        "{clients} clients connected in {:.2}s",
        connect_time.as_secs_f64()
    ));
    Report {
        scenario: workload.scenario.clone(),
        target: workload.target,
        clients,
        publishers: workload.groups * workload.publishers_per_group(),
        rate: workload.rate,
        size: shared.payload_len,
        duration_s: published.as_secs_f64(),
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        deliveries_per_s: delivered as f64 / published.as_secs_f64().max(1e-9),
        latency_us,
        send_lag_us,
        server: usage(0),
        broker: usage(1),
        server_errors: shared.server_errors.load(Ordering::Relaxed),
        malformed: shared.malformed.load(Ordering::Relaxed),
        closed_early: shared.closed_early.load(Ordering::Relaxed),
        stalled_publishers: shared.stalled.load(Ordering::Relaxed),
        churn,
        notes,
    }
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
fn percentiles(histogram: &Histogram<u64>) -> Option<Latency> {
    let us = |ns: u64| ns as f64 / 1000.0;
    (!histogram.is_empty()).then(|| Latency {
        p50: us(histogram.value_at_quantile(0.50)),
        p90: us(histogram.value_at_quantile(0.90)),
        p99: us(histogram.value_at_quantile(0.99)),
        p999: us(histogram.value_at_quantile(0.999)),
        max: us(histogram.max()),
        mean: histogram.mean() / 1000.0,
    })
}
