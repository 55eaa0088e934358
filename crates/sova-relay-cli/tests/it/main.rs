//! The CLI as a script would run it: real processes, a real relay (in process, or the
//! `sova-relay` binary when it has to be killed and restarted).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is what we want

mod ping;
mod resume;
mod send;
mod tls;
mod watch;
mod websocket;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sova_relay::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The CLI, with a clean environment (no `SOVA_*` leaking in from the caller).
pub fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sova-relay-cli"));
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a CLI command to completion: status, stdout, stderr.
pub async fn run(command: &mut Command) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the CLI did not finish")
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status, text(output.stdout), text(output.stderr))
}

/// An in-process relay on a free port, stopped when dropped.
pub struct TestServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    /// Binds and runs a relay with `config`.
    pub async fn start(config: Config) -> Self {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }
}

/// Lines a child writes to one of its pipes, read as they come.
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    /// Reads `pipe` line by line in a background task.
    pub fn spawn(pipe: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    /// The next line; `None` at end of stream. Panics after `PATIENCE`.
    pub async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("no line in time")
    }

    /// Skips lines until one contains `needle`, returning it.
    pub async fn until(&mut self, needle: &str) -> String {
        loop {
            let line = self.next().await.expect("stream ended");
            if line.contains(needle) {
                return line;
            }
        }
    }
}

/// A running `watch`.
pub struct Watch {
    /// The process.
    pub child: Child,
    /// Its event lines.
    pub stdout: Lines,
    /// Its log lines.
    pub stderr: Lines,
}

impl Watch {
    /// Starts `watch --json` and waits until it is registered.
    pub async fn start(addr: &str, name: &str) -> Self {
        Self::start_with(&["--addr", addr, "--name", name]).await
    }

    /// Starts `watch --json` with these arguments and waits until it is registered.
    pub async fn start_with(args: &[&str]) -> Self {
        let mut child = cli().args(["watch", "--json"]).args(args).spawn().unwrap();
        let stdout = Lines::spawn(child.stdout.take().unwrap());
        let mut stderr = Lines::spawn(child.stderr.take().unwrap());
        stderr.until("watching").await;
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// The next event line, parsed.
    pub async fn event(&mut self) -> Value {
        let line = self.stdout.next().await.expect("watch ended");
        serde_json::from_str(&line).unwrap()
    }

    /// Skips events until one of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let event = self.event().await;
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// Sends SIGINT (Ctrl+C) and returns the exit status.
    pub async fn interrupt(mut self) -> ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("watch did not exit")
            .unwrap()
    }
}

/// The `sova-relay` binary, built if needed, next to this test's own target directory.
pub fn relay_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/it-<hash>
            let profile_dir = exe.parent().unwrap().parent().unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let mut build = std::process::Command::new(env!("CARGO"));
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "sova-relay",
                    "--bin",
                    "sova-relay",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            assert!(
                build.status().unwrap().success(),
                "building sova-relay failed"
            );
            profile_dir.join(format!("sova-relay{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

/// The relay binary, running on 127.0.0.1.
pub struct RelayProcess {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl RelayProcess {
    /// Starts the relay on `port` (0: any) and waits for its `Listening on` line.
    pub async fn start(port: u16) -> Self {
        let mut child = Command::new(relay_binary())
            .env_clear()
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--shutdown-timeout", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = Lines::spawn(child.stderr.take().unwrap());
        let line = stderr.until("Listening on 127.0.0.1:").await;
        let port = line
            .rsplit(':')
            .next()
            .and_then(|port| port.trim().parse().ok())
            .unwrap();
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while stderr.rx.recv().await.is_some() {} });
        Self { child, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to anyone, as in a crash.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}
