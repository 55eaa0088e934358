//! Resource exhaustion against the real binary, on 127.0.0.1:
//!
//! - descriptors: under `ulimit -n 256`, a flood of 400 connections; registered instances
//!   keep exchanging updates, `accept()` failures back off instead of spinning, and once
//!   the flood is gone a new instance registers;
//! - memory: 1 MiB messages fanned out to readers that never read stay within
//!   `--max-pending-bytes` per recipient (peak RSS from `/proc/PID/status`).

#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sova_relay_protocol::{decode_body, encode_frame, FrameCodec, Message, UpdateData};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::FramedRead;
use uuid::Uuid;

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

// Multi-threaded: the flood's connects go on while the test waits on the relay's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_backs_off_keeps_instances_served_and_recovers() {
    // Per-IP caps off: they would refuse this flood from one address long before the
    // descriptors ran out (a flood from many addresses gets past them).
    let mut relay = Relay::start(
        &[
            "--handshake-timeout",
            "60s",
            "--rate-limit",
            "1000000",
            "--max-connections-per-ip",
            "0",
            "--connection-rate-per-ip",
            "0",
        ],
        Some(256),
    );
    let mut alice = Client::register(relay.addr, "alice").await;
    let mut bob = Client::register(relay.addr, "bob").await;

    // More connections than the relay has descriptors; none sends a byte, so the ones it
    // accepts hold their descriptor for the whole (60 s) handshake timeout. Once the
    // listen backlog is full too, the last connects wait in SYN retries: they run as tasks.
    let addr = relay.addr;
    let flood: Vec<_> = (0..400)
        .map(|_| tokio::spawn(async move { TcpStream::connect(addr).await.ok() }))
        .collect();
    let exhausted = relay.wait_for("Accepting a connection failed").at;
    let descriptors = relay.open_descriptors();

    // Meanwhile the registered instances are served as before.
    let mut exchanged = 0;
    while exhausted.elapsed() < Duration::from_secs(3) {
        alice.update(exchanged, b"during the flood").await;
        bob.expect_broadcast("alice", exchanged, b"during the flood")
            .await;
        bob.update(exchanged, b"still here").await;
        alice
            .expect_broadcast("bob", exchanged, b"still here")
            .await;
        exchanged += 1;
    }
    let window = exhausted.elapsed();
    let failures = relay.count("Accepting a connection failed");
    report(&format!(
        "fd exhaustion: {descriptors} descriptors open (limit 256); {failures} accept \
         failures logged in {window:?}; {exchanged} update round trips meanwhile"
    ));
    // Backoff 10 ms doubling to 1 s: 7 failures in the first 1.3 s, then one a second.
    // A spinning accept loop would log thousands.
    assert!(exchanged > 0);
    assert!(
        failures <= 15,
        "{failures} accept failures in {window:?}: no backoff"
    );

    // Recovery: once the flood is gone, a new instance registers.
    for connect in &flood {
        connect.abort();
    }
    drop(flood);
    let recovering = Instant::now();
    let mut carol = Client::register(relay.addr, "carol").await;
    let recovered = recovering.elapsed();
    carol.update(1, b"back").await;
    alice.expect_broadcast("carol", 1, b"back").await;
    bob.expect_broadcast("carol", 1, b"back").await;
    report(&format!(
        "fd exhaustion: a new instance registered {recovered:?} after the flood closed"
    ));
    assert!(relay.is_running());
}

#[tokio::test]
async fn one_mib_messages_to_readers_that_never_read_stay_within_the_pending_bound() {
    const MAX_PENDING: usize = 4 * MIB;
    const STALLED: usize = 4;
    const MESSAGES: u64 = 32;
    let relay = Relay::start(
        &[
            "--max-message-size",
            &(2 * MIB).to_string(),
            "--max-pending-bytes",
            &MAX_PENDING.to_string(),
            "--rate-limit",
            "1000000",
        ],
        None,
    );
    let mut alice = Client::register(relay.addr, "alice").await;
    let mut bob = Client::register(relay.addr, "bob").await;
    let mut stalled = Vec::new();
    for n in 0..STALLED {
        stalled.push(Client::register_never_reading(relay.addr, &format!("stalled-{n}")).await);
    }
    let baseline_kib = relay.memory_kib("VmHWM");

    // Bob reads each message before the next is sent, so only the stalled readers fall
    // behind.
    let payload = |n: u64| vec![n as u8; MIB];
    for n in 0..MESSAGES {
        alice.update(n, &payload(n)).await;
        loop {
            match bob.recv().await {
                Message::StateBroadcast {
                    timestamp,
                    update_data,
                    ..
                } => {
                    assert_eq!(timestamp, n);
                    assert!(update_data.to_vec().unwrap() == payload(n));
                    break;
                }
                Message::InstanceDisconnected { instance_name, .. } => {
                    assert!(instance_name.starts_with("stalled-"), "{instance_name}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    for n in 0..STALLED {
        let line = relay.wait_for(&format!("Instance 'stalled-{n}' disconnected"));
        assert!(line.text.contains("Slow consumer"), "{}", line.text);
    }
    let peak_kib = relay.memory_kib("VmHWM");
    let growth = (peak_kib - baseline_kib) as usize * 1024;
    let bound = MAX_PENDING * (STALLED + 1);
    report(&format!(
        "memory: {MESSAGES} × 1 MiB to bob and {STALLED} stalled readers: peak RSS \
         {peak_kib} KiB, {:.1} MiB above the {baseline_kib} KiB baseline \
         (bound: max-pending × {} recipients = {} MiB)",
        growth as f64 / MIB as f64,
        STALLED + 1,
        bound / MIB
    ));
    assert!(growth <= bound, "peak RSS grew by {growth} bytes");
    drop(stalled);
}

/// Prints past the test harness's capture, so results show in `cargo test` output.
fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "exhaustion: {text}");
}

/// A log line of the relay and when it arrived.
struct Line {
    text: String,
    at: Instant,
}

/// The `sova-relay` binary on 127.0.0.1, optionally under `ulimit -n`; killed on drop.
struct Relay {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<Line>,
    seen: RefCell<Vec<Line>>,
}

impl Relay {
    fn start(args: &[&str], max_descriptors: Option<u32>) -> Relay {
        let relay = env!("CARGO_BIN_EXE_sova-relay");
        let mut command = match max_descriptors {
            // No `unsafe` for setrlimit in pre_exec: the shell lowers the limit, then
            // becomes the relay.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), relay]);
                sh
            }
            None => Command::new(relay),
        };
        let mut child = command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx
                    .send(Line {
                        text,
                        at: Instant::now(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut relay = Relay {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            seen: RefCell::default(),
        };
        let listening = relay.wait_for("Listening on ").text;
        relay.addr = listening
            .rsplit("Listening on ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        relay
    }

    fn take_new_lines(&self) {
        let mut seen = self.seen.borrow_mut();
        seen.extend(self.lines.try_iter());
    }

    /// The first log line containing `needle`, already logged or still to come.
    fn wait_for(&self, needle: &str) -> Line {
        let deadline = Instant::now() + WAIT;
        loop {
            self.take_new_lines();
            if let Some(line) = self.seen.borrow().iter().find(|l| l.text.contains(needle)) {
                return Line {
                    text: line.text.clone(),
                    at: line.at,
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.borrow_mut().push(line),
                Err(_) => panic!("the relay never logged {needle:?}"),
            }
        }
    }

    /// How many log lines so far contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.take_new_lines();
        self.seen
            .borrow()
            .iter()
            .filter(|l| l.text.contains(needle))
            .count()
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A memory figure of `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB.
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol client.
struct Client {
    id: Uuid,
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn register(addr: SocketAddr, name: &str) -> Client {
        Client::handshake(TcpStream::connect(addr).await.unwrap(), name).await
    }

    /// Registers with a tiny receive buffer, then is never read from: its window closes.
    async fn register_never_reading(addr: SocketAddr, name: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Client::handshake(socket.connect(addr).await.unwrap(), name).await
    }

    async fn handshake(stream: TcpStream, name: &str) -> Client {
        stream.set_nodelay(true).unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(&register_frame(name)).await.unwrap();
        let mut client = Client {
            id: Uuid::nil(),
            frames: FramedRead::new(read, FrameCodec::new(16 * MIB)),
            write,
        };
        match client.recv().await {
            Message::RegistrationResponse {
                success: true,
                assigned_id: Some(id),
                ..
            } => client.id = id,
            other => panic!("{name} could not register: {other:?}"),
        }
        client
    }

    async fn update(&mut self, timestamp: u64, payload: &[u8]) {
        let update = Message::StateUpdate {
            source_instance_id: self.id,
            timestamp,
            update_data: UpdateData::from_bin(payload),
        };
        self.write.write_all(&encode_frame(&update)).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        let frame = tokio::time::timeout(WAIT, self.frames.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .unwrap();
        decode_body(frame).unwrap()
    }

    async fn expect_broadcast(&mut self, from: &str, timestamp: u64, payload: &[u8]) {
        match self.recv().await {
            Message::StateBroadcast {
                source_instance_name,
                timestamp: t,
                update_data,
                ..
            } => {
                assert_eq!((source_instance_name.as_str(), t), (from, timestamp));
                assert_eq!(update_data.to_vec().unwrap(), payload);
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }
}

/// `RegisterInstance` as an instance in the field sends it (written out by hand, so the
/// message type can grow fields without touching this).
fn register_frame(name: &str) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.push(0xa0 | u8::try_from(s.len()).unwrap());
        out.extend(s.as_bytes());
    }
    let mut body = vec![0x81];
    put_str(&mut body, "RegisterInstance");
    body.push(0x82);
    for (key, value) in [("instance_name", name), ("version", "0.1.0")] {
        put_str(&mut body, key);
        put_str(&mut body, value);
    }
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend(body);
    frame
}
