//! Starting and stopping the servers under test: each on a free loopback port, a fresh
//! process per scenario (so its peak memory is that scenario's), stopped by pid.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
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

impl ServerProcess {
    /// Starts the server `target` needs on a free port and waits until it accepts.
    pub fn start(target: Target, binaries: &Binaries) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let port = port.to_string();
        let mut command = match target {
            Target::RelayTcp | Target::RelayWs => {
                let mut command = Command::new(&binaries.relay);
                command.args(["--host", "127.0.0.1", "--port", &port]);
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
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

/// A port nothing listens on right now (the OS's pick for port 0).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
