//! A real `nats-server -js` and relay nodes as real processes, each killed and reaped on
//! drop; HTTP probes of a node's port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sova_relay_protocol::{Message, ResumeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{register_message, TestClient};
use uuid::Uuid;

/// What a sender is told when NATS did not store one of its updates.
pub const UNRELAYED: &str = "Update not relayed: the cluster did not store it";
/// Longest wait for something that must happen (a process starting, a node reconnecting).
pub const WAIT: Duration = Duration::from_secs(30);
/// `--cluster-expiry` of every node: short, so a dead node is noticed within seconds.
pub const EXPIRY: Duration = Duration::from_secs(3);

/// The `nats-server` binary, or `None` after printing why the test skips. Under
/// `SOVA_REQUIRE_NATS=1` (as in `.ci/run`) a missing server fails the test instead.
pub fn nats_server_or_skip(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let reason = "nats-server not found on PATH or in /usr/sbin \
                      (bash scripts/install-test-deps.sh installs it)";
        assert!(
            std::env::var("SOVA_REQUIRE_NATS").as_deref() != Ok("1"),
            "SOVA_REQUIRE_NATS=1 but {reason}"
        );
        eprintln!("cluster test {test}: SKIPPED: {reason}");
    }
    found
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sova-relay-cluster-{label}-{}",
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every stderr line of `child`, read by a thread that drains the pipe to the end (a
/// writer whose stderr pipe closed could die of SIGPIPE, as Go programs do on fd 2).
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits for a line containing `needle`; panics with what was seen after `within`, or
/// as soon as the stream ends (the process exited).
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    who: &str,
    needle: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(err) => panic!(
                "{who} never logged {needle:?} ({err}); its stderr:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Sends `signal` (e.g. `TERM`) to `pid`.
/// For a `Drop`: SIGKILLs and reaps `child` if it still runs; while a test is failing,
/// prints what its stderr said that no wait consumed (the last `tail` lines).
pub fn reap(child: &mut Option<Child>, who: &str, lines: &mpsc::Receiver<String>, tail: usize) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if std::thread::panicking() {
        let log: Vec<String> = lines.try_iter().collect();
        let tail = &log[log.len().saturating_sub(tail)..];
        eprintln!(
            "--- {who} stderr (last {} lines) ---\n{}",
            tail.len(),
            tail.join("\n")
        );
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Reaps `child`, waiting at most `within`.
fn wait_exit(child: &mut Child, who: &str, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{who} did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `nats-server -js` on 127.0.0.1, its JetStream store in a directory of the caller's.
pub struct NatsServer {
    binary: PathBuf,
    store: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start(binary: PathBuf, store: PathBuf) -> Self {
        let mut nats = NatsServer {
            binary,
            store,
            port: free_port(),
            child: None,
        };
        nats.spawn();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let mut child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = stderr_lines(&mut child);
        self.child = Some(child);
        wait_for_line(&lines, "nats-server", "Server is ready", WAIT);
    }

    /// SIGTERM, and waits until the server has exited.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("nats-server is running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, "nats-server", WAIT);
    }

    /// Starts the server again on the same port, with the same JetStream store.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Starts the server again on the same port with an empty JetStream store (a new
    /// directory beside the old one): every stream and bucket it held is gone.
    pub fn restart_empty(&mut self) {
        self.store = self
            .store
            .with_file_name(format!("jetstream-{}", uuid::Uuid::new_v4().simple()));
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `sova-relay` node in cluster mode; SIGKILLed and reaped on drop.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

/// The relay binary with the environment its flags could be read from cleared, so only the
/// flags given here count.
pub fn relay_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sova-relay"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOVA_") {
            command.env_remove(key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The flags every node of these tests runs with, before any extra ones.
pub fn node_args(nats_url: &str, name: &str) -> Vec<String> {
    let expiry = format!("{}s", EXPIRY.as_secs());
    [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cluster-nats",
        nats_url,
        "--node-name",
        name,
        "--cluster-expiry",
        &expiry,
        // Tests send bursts of hundreds of updates, connect dozens of clients and poll HTTP
        // from one address: the per-instance and per-IP abuse limits are not what they are
        // about.
        "--rate-limit",
        "100000",
        "--max-connections-per-ip",
        "0",
        "--connection-rate-per-ip",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Node {
    /// Starts the node and waits until it listens and `/readyz` says 200.
    pub async fn start(nats_url: &str, name: &str, extra: &[&str]) -> Self {
        let node = Self::start_listening(nats_url, name, extra);
        node.wait_ready(200, WAIT).await;
        node
    }

    /// Waits for a log line of this node containing `needle` (lines read by earlier waits
    /// are not seen again).
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for_line(&self.lines, &self.name, needle, WAIT)
    }

    /// Starts the node and waits until it listens, whatever `/readyz` says.
    pub fn start_listening(nats_url: &str, name: &str, extra: &[&str]) -> Self {
        let mut child = relay_command()
            .args(node_args(nats_url, name))
            .args(extra)
            .spawn()
            .unwrap();
        let lines = stderr_lines(&mut child);
        // The guard first, so a node that fails to start is reaped too.
        let mut node = Node {
            name: name.to_owned(),
            addr: "127.0.0.1:0".parse().unwrap(),
            child: Some(child),
            lines,
        };
        let listening = wait_for_line(&node.lines, name, "Listening on ", WAIT);
        let addr = listening.rsplit("Listening on ").next().unwrap().trim();
        node.addr = addr.parse().unwrap();
        node
    }

    /// Waits until `/readyz` answers `status`; returns the body and how long it took.
    pub async fn wait_ready(&self, status: u16, within: Duration) -> (String, Duration) {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < within {
            match http_get(self.addr, "/readyz").await {
                Ok((code, body)) if code == status => return (body, started.elapsed()),
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{}: /readyz never answered {status} within {within:?}; last: {last:?}",
            self.name
        );
    }

    /// `/api/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.addr, "/api/status").await.unwrap();
        assert_eq!(code, 200, "{}: /api/status: {body}", self.name);
        serde_json::from_str(&body).unwrap()
    }

    /// Polls `/api/status` until `check` holds; returns the status that passed.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /api/status never showed {what}: {status}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (a graceful stop); returns when the signal was sent. `wait_exit` reaps.
    pub fn terminate(&self) -> Instant {
        let child = self.child.as_ref().expect("node is running");
        signal(child.id(), "TERM");
        Instant::now()
    }

    /// Waits until the process has exited (after `terminate`), at most `within`.
    /// Still running then: the assertion fails, and drop kills it.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("node is running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGSTOP (`frozen`) or SIGCONT: a node that is alive to the kernel but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("node is running");
        signal(child.id(), if frozen { "STOP" } else { "CONT" });
    }

    /// SIGKILL, then reaps the process. Returns when the kill was sent.
    pub fn kill(&mut self) -> Instant {
        let mut child = self.child.take().expect("node is running");
        child.kill().unwrap();
        let killed = Instant::now();
        let _ = child.wait();
        killed
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test shows everything each node logged.
        reap(&mut self.child, &self.name, &self.lines, usize::MAX);
    }
}

/// NATS and `size` nodes named `node-0`, `node-1`, …, sharing one JetStream store.
pub struct Cluster {
    // Dropped in this order: the nodes, then NATS, then the store.
    pub nodes: Vec<Node>,
    pub nats: NatsServer,
    _dir: TempDir,
}

impl Cluster {
    /// `None` (the test skips) when `nats-server` is missing.
    pub async fn start(test: &str, size: usize, extra: &[&str]) -> Option<Self> {
        let binary = nats_server_or_skip(test)?;
        let dir = TempDir::new(test);
        let nats = NatsServer::start(binary, dir.path().join("jetstream"));
        let mut nodes = Vec::new();
        for i in 0..size {
            nodes.push(Node::start(&nats.url(), &format!("node-{i}"), extra).await);
        }
        Some(Cluster {
            nodes,
            nats,
            _dir: dir,
        })
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }
}

/// `GET path` on the relay's port (HTTP shares it with the protocol): status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "").await
}

/// `method path` with `headers` (each line ending in CRLF): status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: relay\r\n{headers}Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP answer"))??;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Registers and expects success; returns the client and the response.
pub async fn join(
    cluster: &Cluster,
    node: usize,
    name: &str,
    token: &str,
    caps: &[&str],
) -> (TestClient, Message) {
    let caps = (!caps.is_empty()).then_some(caps);
    let (client, response) =
        TestClient::register_with(cluster.addr(node), name, Some(token), caps).await;
    assert!(
        matches!(
            response,
            Message::RegistrationResponse { success: true, .. }
        ),
        "{name} on node-{node}: {response:?}"
    );
    (client, response)
}

/// Registers `name` on `node` resuming from `seq` of `epoch` with `secret`; the client and
/// the response (not checked).
pub async fn resume(
    cluster: &Cluster,
    node: usize,
    name: &str,
    token: &str,
    from: ResumeRequest,
) -> (TestClient, Message) {
    let mut client = TestClient::connect(cluster.addr(node)).await;
    let Message::RegisterInstance {
        instance_name,
        version,
        session_token,
        capabilities,
        ..
    } = register_message(name, "0.1.0", Some(token), Some(&["resume"]))
    else {
        unreachable!()
    };
    let response = client
        .register_by(Message::RegisterInstance {
            instance_name,
            version,
            session_token,
            capabilities,
            resume: Some(from),
        })
        .await;
    (client, response)
}

/// Runs a node that must stop on its own (within `WAIT`); its exit status and stderr.
pub fn run_to_exit(args: &[String]) -> (ExitStatus, String) {
    let mut child = relay_command().args(args).spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sova-relay {args:?} kept running for {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Expects the very next message to be `InstanceConnected` of `name`; its id.
pub async fn next_is_connected(client: &mut TestClient, name: &str) -> Uuid {
    match client.recv().await {
        Message::InstanceConnected {
            instance_id,
            instance_name,
        } if instance_name == name => instance_id,
        other => panic!("{}: expected {name} to connect, got {other:?}", client.name),
    }
}

/// Expects the very next message to be `InstanceDisconnected` of `name`; its id.
pub async fn next_is_disconnected(client: &mut TestClient, name: &str) -> Uuid {
    match client.recv().await {
        Message::InstanceDisconnected {
            instance_id,
            instance_name,
        } if instance_name == name => instance_id,
        other => panic!("{}: expected {name} to leave, got {other:?}", client.name),
    }
}
