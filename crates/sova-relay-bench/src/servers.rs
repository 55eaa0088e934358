//! Starting and stopping the servers under test: each on a free loopback port, a fresh
//! process per scenario (so its peak memory is that scenario's), stopped by pid. Also the
//! pieces of a cluster: `nats-server -js` and relay nodes that use it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::proto::Target;

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `sova-relay`.
    pub relay: PathBuf,
    /// `nats-server`.
    pub nats: PathBuf,
    /// `redis-server`.
    pub redis: PathBuf,
}

/// A running server.
pub struct ServerProcess {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// Its pid, for `/proc`.
    pub pid: u32,
}

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a cluster node may take to report ready (connected to NATS, streams created).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The relay with the bench's flags, listening on `port`.
fn relay_command(binaries: &Binaries, port: &str) -> Command {
    let mut command = Command::new(&binaries.relay);
    command.args(["--host", "127.0.0.1", "--port", port]);
    command.args(["--max-instances", "20000", "--rate-limit", "1000000"]);
    // Every bench client comes from 127.0.0.1: lift the per-IP guards.
    command.args([
        "--max-connections",
        "30000",
        "--max-connections-per-ip",
        "0",
    ]);
    command.args(["--connection-rate-per-ip", "0"]);
    // Per-connection info lines cost CPU that NATS and Redis do not spend.
    command.args(["--log-level", "warn"]);
    command
}

impl ServerProcess {
    /// Starts the server `target` needs on a free port and waits until it accepts.
    pub fn start(target: Target, binaries: &Binaries) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let port = port.to_string();
        let command = match target {
            Target::RelayTcp | Target::RelayWs => relay_command(binaries, &port),
            Target::Nats => {
                let mut command = Command::new(&binaries.nats);
                command.args(["-a", "127.0.0.1", "-p", &port]);
                command
            }
            Target::Redis => {
                let mut command = Command::new(&binaries.redis);
                command.args(["--port", &port, "--bind", "127.0.0.1"]);
                command.args(["--save", "", "--appendonly", "no"]);
                command.args(["--protected-mode", "no", "--daemonize", "no"]);
                command.args(["--maxclients", "15000", "--loglevel", "warning"]);
                command
            }
        };
        ServerProcess::spawn(command, addr, Stdio::null())
    }

    /// Starts `nats-server` with JetStream on a free port, its store in `store` (a fresh
    /// directory the caller removes), and waits until it accepts.
    pub fn start_jetstream(binaries: &Binaries, store: &Path) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(&binaries.nats);
        command.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]);
        command.arg(store);
        ServerProcess::spawn(command, addr, Stdio::null())
    }

    /// Starts a relay node of the cluster whose NATS is at `nats`, named `name`, with the
    /// bench's flags; its log goes to `log`. Waits until its `/readyz` answers 200 (NATS
    /// connected, streams and buckets in place).
    pub fn start_relay_node(
        binaries: &Binaries,
        nats: SocketAddr,
        name: &str,
        log: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = relay_command(binaries, &port.to_string());
        command.args([
            "--cluster-nats",
            &format!("nats://{nats}"),
            "--node-name",
            name,
        ]);
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut server = ServerProcess::spawn(command, addr, Stdio::from(log_file))
            .with_context(|| format!("relay node {name}: {}", log_tail(log)))?;
        let started = Instant::now();
        while http_status(addr, "/readyz") != Some(200) {
            if let Some(status) = server.child.try_wait()? {
                bail!("relay node {name} exited ({status}): {}", log_tail(log));
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "relay node {name}: /readyz not 200 within {READY_TIMEOUT:?}: {}",
                    log_tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn spawn(mut command: Command, addr: SocketAddr, stderr: Stdio) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let mut server = ServerProcess {
            pid: child.id(),
            child,
            addr,
        };
        server.wait_until_accepting()?;
        Ok(server)
    }

    fn wait_until_accepting(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                bail!("server exited at start-up: {status}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                // Let it finish starting (and forget the probe) before measuring.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("server did not accept connections within {START_TIMEOUT:?}")
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, on one line (for an error message).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(error) = lines.iter().find(|l| l.to_lowercase().contains("error")) {
        return (*error).to_owned();
    }
    match lines.len() {
        0 => "nothing in its log".to_owned(),
        n => lines[n.saturating_sub(3)..].join(" / "),
    }
}

/// The status code of `GET path` on `addr`, if an HTTP answer came within a second.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// A port nothing listens on right now (the OS's pick for port 0).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
