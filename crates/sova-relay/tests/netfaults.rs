//! Network faults on a real link. Each test makes two network namespaces of its own joined
//! by a veth pair, `relay` (192.0.2.1, TEST-NET-1) and `client` (192.0.2.2), with no other
//! interface and no route anywhere else: nothing these tests send can leave the machine.
//! The relay binary runs in the relay namespace; clients are this test binary re-run as a
//! helper process (`helper_process`) inside either namespace.
//!
//! - a link cut without FIN or RST (every packet dropped): the relay finds the dead peers within the keepalive and
//!   `TCP_USER_TIMEOUT` bounds, tells their sessions, and the names are free again;
//! - 150 ms delay and 2 % loss in each direction: 500 updates arrive complete and in order;
//! - a peer whose receive window stays closed is dropped as a slow consumer, while another
//!   instance on the same link keeps receiving everything.
//!
//! Delay and loss come from an NFQUEUE helper (a netfilter queue fed by an `iptables`
//! rule), since `tc netem` is missing from many kernels (this workplace's included).
//!
//! Needs root (CAP_NET_ADMIN), iproute2 and iptables (`scripts/install-test-deps.sh`).
//! Without them each test prints `SKIPPED: network namespaces unavailable: <reason>` and
//! passes, unless `SOVA_REQUIRE_NETNS=1` (as in `.ci/run`), where it fails.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The relay's address on the link, and the client's.
const RELAY_IP: &str = "192.0.2.1";
const CLIENT_IP: &str = "192.0.2.2";
const PORT: u16 = 9090;
/// Longest wait for something that must happen; tests finish in seconds.
const WAIT: Duration = Duration::from_secs(30);
/// Set (to the mode) in a helper process's environment.
const HELPER_ENV: &str = "SOVA_NETFAULTS_HELPER";

/// The relay's liveness flags in these tests: dead peers found within about 3 s.
const KEEPALIVE_FLAGS: [&str; 8] = [
    "--tcp-keepalive",
    "1s",
    "--tcp-keepalive-interval",
    "1s",
    "--tcp-keepalive-retries",
    "2",
    "--tcp-user-timeout",
    "3s",
];

#[test]
fn a_cut_link_is_detected_and_the_names_are_freed() {
    let Some(link) = Link::create_or_skip("cut") else {
        return;
    };
    let relay = Relay::start(&link, &KEEPALIVE_FLAGS);
    // Across the link: `busy` shares a session with `observer`, so the relay has data in
    // flight to it after the cut (TCP_USER_TIMEOUT finds it); `idle` is alone in its
    // session with `watcher`, so only keepalive probes can find it.
    let observer = Helper::client(&link.relay, "observer", &[]);
    let watcher = Helper::client(&link.relay, "watcher", &[("SOVA_NF_TOKEN", "quiet")]);
    let busy = Helper::client(&link.client, "busy", &[]);
    let idle = Helper::client(&link.client, "idle", &[("SOVA_NF_TOKEN", "quiet")]);
    for helper in [&observer, &watcher, &busy, &idle] {
        helper.wait_for("registered");
    }

    // Every packet to or from the client's end vanishes (like `netem loss 100%`): no FIN,
    // no RST, and the relay's own interface stays up, as when a laptop's Wi-Fi dies.
    let cut = Instant::now();
    link.client.drop_everything("vc").unwrap();
    observer.command("send 0 5");
    observer.wait_for("sent 5");
    let busy_gone = observer.wait_for("left busy");
    let idle_gone = watcher.wait_for("left idle");
    let (busy_after, idle_after) = (busy_gone.at - cut, idle_gone.at - cut);
    // Keepalive: probes after 1 s idle, 2 unanswered 1 s apart; TCP_USER_TIMEOUT 3 s caps
    // unacknowledged data and, once probes are out, keepalive too. So 3 s, and 1.5 s for
    // the retransmission timer's granularity and scheduling.
    let bound = Duration::from_millis(3000 + 1500);
    report(&format!(
        "cut link: busy peer dropped after {busy_after:?}, idle peer after {idle_after:?} \
         (bound {bound:?})"
    ));
    assert!(busy_after <= bound, "busy peer found after {busy_after:?}");
    assert!(idle_after <= bound, "idle peer found after {idle_after:?}");
    relay.wait_for("Instance 'busy' disconnected");
    relay.wait_for("Instance 'idle' disconnected");

    // The names are free at once: new instances take them (from the relay's side).
    let busy2 = Helper::client(&link.relay, "busy", &[]);
    let idle2 = Helper::client(&link.relay, "idle", &[("SOVA_NF_TOKEN", "quiet")]);
    busy2.wait_for("registered");
    idle2.wait_for("registered");
    // Each session was told exactly once: the next thing its members see is new traffic.
    busy2.command("send 0 1");
    assert_eq!(observer.next_event().text, "broadcast busy 0 ok");
    idle2.command("send 0 1");
    assert_eq!(watcher.next_event().text, "broadcast idle 0 ok");
}

#[test]
fn updates_arrive_complete_and_in_order_over_delay_and_loss() {
    let Some(link) = Link::create_or_skip("lossy") else {
        return;
    };
    let relay = Relay::start(&link, &["--rate-limit", "100000"]);
    // Each end delays and drops what arrives over the link: both directions impaired.
    let delays = [(&link.client, "vc"), (&link.relay, "vr")].map(|(ns, dev)| {
        let env = [("SOVA_NF_DELAY_MS", "150"), ("SOVA_NF_LOSS_PERCENT", "2")];
        let delay = Helper::spawn(ns, "delay", &env);
        delay.wait_for("ready");
        ns.queue_arrivals(dev).unwrap();
        delay
    });

    let alice = Helper::client(&link.client, "alice", &[]);
    let bob = Helper::client(&link.client, "bob", &[]);
    alice.wait_for("registered");
    bob.wait_for("registered");
    let started = Instant::now();
    alice.command("send 0 500");
    for expected in 0..500 {
        let event = bob.next_event();
        assert_eq!(event.text, format!("broadcast alice {expected} ok"));
    }
    let took = started.elapsed();
    drop(alice);
    drop(bob);
    let [to_client, to_relay] = delays.map(|delay| delay.finish("stats"));
    report(&format!(
        "delay 150 ms + 2 % loss each way: 500 updates in order after {took:?} \
         (towards the client: {to_client}; towards the relay: {to_relay})"
    ));
    drop(relay);
}

#[test]
fn a_closed_receive_window_is_a_slow_consumer_and_others_keep_receiving() {
    let Some(link) = Link::create_or_skip("stall") else {
        return;
    };
    let relay = Relay::start(
        &link,
        &["--rate-limit", "1000000", "--max-pending-bytes", "1048576"],
    );
    // Registers, then never reads: its receive window closes and stays closed.
    let stalled = Helper::client(&link.client, "stalled", &[("SOVA_NF_STALL", "1")]);
    let bob = Helper::client(&link.client, "bob", &[("SOVA_NF_PAYLOAD", "4096")]);
    let alice = Helper::client(&link.relay, "alice", &[("SOVA_NF_PAYLOAD", "4096")]);
    for helper in [&stalled, &bob, &alice] {
        helper.wait_for("registered");
    }
    // In batches that bob reads before the next is sent: bob keeps up by construction,
    // while the stalled peer's queue only grows.
    let started = Instant::now();
    let mut stalled_left = None;
    for batch in 0..50 {
        alice.command(&format!("send {} 20", batch * 20));
        let mut next = batch * 20;
        while next < (batch + 1) * 20 {
            let event = bob.next_event();
            if event.text == "left stalled" {
                stalled_left = Some(event.at - started);
                continue;
            }
            if event.text != format!("broadcast alice {next} ok") {
                panic!(
                    "bob got {:?}; relay: {:#?}",
                    event.text,
                    relay.lines_with("bob")
                );
            }
            next += 1;
        }
    }
    let took = started.elapsed();
    let line = relay.wait_for("Instance 'stalled' disconnected");
    assert!(line.text.contains("Slow consumer"), "{}", line.text);
    let stalled_left = stalled_left.unwrap_or_else(|| bob.wait_for("left stalled").at - started);
    report(&format!(
        "closed window: 1000 × 4 KiB updates to bob in {took:?} (50 lockstep batches); \
         stalled peer dropped after {stalled_left:?}"
    ));
}

/// Not a test: the body of helper processes (clients and the delay queue) when run with
/// `SOVA_NETFAULTS_HELPER` set; does nothing otherwise.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    match mode.as_str() {
        "client" => helper::client(),
        "delay" => nfqueue::delay(),
        other => panic!("unknown helper mode {other}"),
    }
    std::process::exit(0);
}

/// Prints past the test harness's capture, so results show in `cargo test` output.
fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "netfaults: {text}");
}

fn skip(reason: &str) {
    if std::env::var("SOVA_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("SOVA_REQUIRE_NETNS=1 but network namespaces are unavailable: {reason}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: network namespaces unavailable: {reason}"
    );
}

/// Runs a command; its stderr (or the spawn error) on failure.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{command:?}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{command:?}: {}", stderr.trim()))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// A network namespace made by this test; deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(name: String) -> Result<Self, String> {
        ip(&["netns", "add", &name])?;
        Ok(Namespace { name })
    }

    /// A command run inside this namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sends every packet arriving on `dev` through NFQUEUE 0, where a `delay` helper in
    /// this namespace holds or drops it. Arriving, not leaving: a packet held on its way out
    /// still counts against its socket's TCP Small Queues budget, which would throttle the
    /// sender far below what the delay alone does.
    fn queue_arrivals(&self, dev: &str) -> Result<(), String> {
        run(self.command("iptables").args([
            "-A",
            "INPUT",
            "-i",
            dev,
            "-j",
            "NFQUEUE",
            "--queue-num",
            "0",
        ]))
    }

    /// Drops every packet to or from `dev`.
    fn drop_everything(&self, dev: &str) -> Result<(), String> {
        for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run(self
                .command("iptables")
                .args(["-A", chain, direction, dev, "-j", "DROP"]))?;
        }
        Ok(())
    }

    /// Where a client in this namespace reaches the relay.
    fn relay_addr(&self) -> String {
        let host = if self.name.ends_with("-relay") {
            "127.0.0.1"
        } else {
            RELAY_IP
        };
        format!("{host}:{PORT}")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "delete", &self.name]) {
            report(&format!("could not delete namespace {}: {err}", self.name));
        }
    }
}

/// Two namespaces and the veth pair between them (`vr` in `relay`, `vc` in `client`).
struct Link {
    relay: Namespace,
    client: Namespace,
}

impl Link {
    /// The link, or `None` after saying why the test is skipped.
    fn create_or_skip(tag: &str) -> Option<Link> {
        if let Err(reason) = run(Command::new("iptables").arg("--version")) {
            skip(&format!(
                "iptables is needed to cut and impair links: {reason}"
            ));
            return None;
        }
        match Link::create(tag) {
            Ok(link) => Some(link),
            Err(reason) => {
                skip(&reason);
                None
            }
        }
    }

    fn create(tag: &str) -> Result<Link, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "sova-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let relay = Namespace::create(format!("{unique}-relay"))?;
        let client = Namespace::create(format!("{unique}-client"))?;
        let (r, c) = (relay.name.as_str(), client.name.as_str());
        ip(&[
            "-n", r, "link", "add", "vr", "type", "veth", "peer", "name", "vc", "netns", c,
        ])?;
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{RELAY_IP}/24"),
            "dev",
            "vr",
        ])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "vc",
        ])?;
        for (ns, dev) in [(r, "lo"), (r, "vr"), (c, "lo"), (c, "vc")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(Link { relay, client })
    }
}

/// A line a child process printed, and when it arrived.
struct Line {
    text: String,
    at: Instant,
}

/// Reads `stream` line by line on a thread; lines starting with `prefix` (stripped) go
/// to the receiver.
fn lines_of(
    stream: impl std::io::Read + Send + 'static,
    prefix: &'static str,
) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for text in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(text) = text.strip_prefix(prefix) {
                let line = Line {
                    text: text.to_owned(),
                    at: Instant::now(),
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

fn wait_for(lines: &mpsc::Receiver<Line>, needle: &str, what: &str) -> Line {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.text.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("{what} never printed {needle:?}"),
        }
    }
}

/// The relay binary inside the relay namespace; killed on drop.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<Line>,
    /// Every log line so far, so lines can be waited for in any order.
    seen: std::cell::RefCell<Vec<Line>>,
}

impl Relay {
    fn start(link: &Link, args: &[&str]) -> Relay {
        let mut child = link
            .relay
            .command(env!("CARGO_BIN_EXE_sova-relay"))
            .args(["--host", "0.0.0.0", "--port", &PORT.to_string()])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stderr.take().unwrap(), "");
        let relay = Relay {
            child,
            lines,
            seen: Default::default(),
        };
        relay.wait_for("Listening on");
        relay
    }

    /// Every line logged so far that contains `needle` (for failure messages).
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let mut seen = self.seen.borrow_mut();
        seen.extend(self.lines.try_iter());
        seen.iter()
            .filter(|line| line.text.contains(needle))
            .map(|line| line.text.clone())
            .collect()
    }

    /// The first log line containing `needle`, whether already logged or still to come.
    fn wait_for(&self, needle: &str) -> Line {
        let mut seen = self.seen.borrow_mut();
        if let Some(line) = seen.iter().find(|line| line.text.contains(needle)) {
            return Line {
                text: line.text.clone(),
                at: line.at,
            };
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("the relay never logged {needle:?}");
            };
            let found = line.text.contains(needle).then(|| Line {
                text: line.text.clone(),
                at: line.at,
            });
            seen.push(line);
            if let Some(found) = found {
                return found;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary re-run inside a namespace as a client or the delay queue; it prints
/// `EVENT …` lines and takes commands on stdin. Killed on drop.
struct Helper {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Line>,
}

impl Helper {
    fn spawn(ns: &Namespace, mode: &str, env: &[(&str, &str)]) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut child = ns
            .command(exe.to_str().unwrap())
            .args([
                "helper_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(HELPER_ENV, mode)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let events = lines_of(child.stdout.take().unwrap(), "EVENT ");
        let name = env
            .iter()
            .find(|(key, _)| *key == "SOVA_NF_NAME")
            .map_or(mode, |(_, name)| name)
            .to_owned();
        Helper {
            name,
            stdin: child.stdin.take(),
            child,
            events,
        }
    }

    /// A client registering as `name`, from inside `ns`.
    fn client(ns: &Namespace, name: &str, env: &[(&str, &str)]) -> Helper {
        let addr = ns.relay_addr();
        let mut all = vec![("SOVA_NF_ADDR", addr.as_str()), ("SOVA_NF_NAME", name)];
        all.extend_from_slice(env);
        Helper::spawn(ns, "client", &all)
    }

    fn command(&self, line: &str) {
        let mut stdin = self.stdin.as_ref().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn next_event(&self) -> Line {
        self.events
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{} printed nothing within {WAIT:?}", self.name))
    }

    fn wait_for(&self, needle: &str) -> Line {
        wait_for(&self.events, needle, &self.name)
    }

    /// Closes stdin (the helper's signal to stop) and returns its last `needle` line.
    fn finish(mut self, needle: &str) -> String {
        drop(self.stdin.take());
        self.wait_for(needle).text
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "netfaults/helper.rs"]
mod helper;

#[path = "netfaults/nfqueue.rs"]
mod nfqueue;
