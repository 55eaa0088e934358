//! The relay under test: the real binary, on a free loopback port, with the soak's limits;
//! its log goes to a file; stopped with SIGTERM, whose exit code is part of the verdict.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctx::Settings;

/// A running relay.
pub struct Relay {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// The relay binary beside this program, or in a sibling profile directory of the same
/// target directory (`target/{release,debug}/sova-relay`).
pub fn locate() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let dir = exe.parent().context("this program has no directory")?;
    let mut candidates = vec![dir.join("sova-relay")];
    // Test binaries live in target/<profile>/deps.
    if let Some(profile) = dir.parent() {
        candidates.push(profile.join("sova-relay"));
        if let Some(target) = profile.parent() {
            candidates.push(target.join("release/sova-relay"));
            candidates.push(target.join("debug/sova-relay"));
        }
    }
    if let Some(target) = dir.parent() {
        candidates.push(target.join("release/sova-relay"));
        candidates.push(target.join("debug/sova-relay"));
    }
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .context("no sova-relay binary beside this program: build it (cargo build -p sova-relay) or pass --relay-bin")
}

/// The relay's flags for `settings` on `port`.
pub fn args(settings: &Settings, port: u16) -> Vec<String> {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    [
        ("--host", "127.0.0.1".to_owned()),
        ("--port", port.to_string()),
        ("--admin-token", settings.admin_token.clone()),
        ("--rate-limit", settings.rate_limit.to_string()),
        (
            "--max-pending-bytes",
            settings.max_pending_bytes.to_string(),
        ),
        ("--max-message-size", settings.max_message_size.to_string()),
        ("--write-timeout", "3s".to_owned()),
        ("--handshake-timeout", secs(settings.handshake_timeout)),
        ("--shutdown-timeout", secs(settings.shutdown_timeout)),
        (
            "--history-max-updates",
            settings.history_max_updates.to_string(),
        ),
        ("--history-max-bytes", (16u64 << 20).to_string()),
        ("--history-max-age", secs(settings.history_max_age)),
        // Every client comes from 127.0.0.1, and bad input fails registrations on purpose.
        ("--max-instances", "10000".to_owned()),
        ("--max-connections-per-ip", "0".to_owned()),
        ("--connection-rate-per-ip", "0".to_owned()),
        ("--max-failed-registrations", "0".to_owned()),
        ("--log-level", "warn".to_owned()),
    ]
    .into_iter()
    .chain(settings.tls.iter().flat_map(|(cert, key)| {
        [
            ("--tls-cert", cert.display().to_string()),
            ("--tls-key", key.display().to_string()),
        ]
    }))
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

impl Relay {
    /// Starts `bin` and waits until `/healthz` answers.
    pub async fn start(bin: &Path, settings: &Settings, log: &Path) -> anyhow::Result<Relay> {
        Relay::spawn(bin, settings, log, &[], "/healthz").await
    }

    /// Starts `bin` as cluster node `name` on the `nats-server -js` at `nats`, and waits
    /// until `/readyz` answers (NATS connected, streams and buckets in place).
    pub async fn start_node(
        bin: &Path,
        settings: &Settings,
        log: &Path,
        nats: SocketAddr,
        name: &str,
        streams: u8,
    ) -> anyhow::Result<Relay> {
        let cluster = [
            "--cluster-nats".to_owned(),
            format!("nats://{nats}"),
            "--node-name".to_owned(),
            name.to_owned(),
            "--cluster-streams".to_owned(),
            streams.to_string(),
        ];
        Relay::spawn(bin, settings, log, &cluster, "/readyz").await
    }

    async fn spawn(
        bin: &Path,
        settings: &Settings,
        log: &Path,
        extra: &[String],
        ready: &str,
    ) -> anyhow::Result<Relay> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(args(settings, port))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut relay = Relay {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = relay.child.try_wait()? {
                bail!(
                    "the relay exited at start-up ({status}); see {}",
                    log.display()
                );
            }
            if healthy(relay.addr, ready).await {
                return Ok(relay);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the relay did not answer {ready} within 20 s; see {}",
            log.display()
        )
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `within` for the exit; SIGKILL after that.
    pub async fn terminate(mut self, within: Duration) -> Result<ExitStatus, String> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if !sent.as_ref().is_ok_and(|s| s.success()) {
            return Err(format!("could not send SIGTERM: {sent:?}"));
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        Err(format!("still running {within:?} after SIGTERM; killed"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET {path}` answers 200.
async fn healthy(addr: SocketAddr, path: &str) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), exchange).await,
        Ok(Ok(reply)) if reply.starts_with(b"HTTP/1.1 200")
    )
}
