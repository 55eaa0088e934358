//! The real binary: start-up, signals, exit codes, memory under a slow consumer.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sova_relay_protocol::Message;
use tokio::net::TcpStream;

use crate::support::{
    assert_broadcast, relay_in_steps, wait_for_file_containing, TestClient, WAIT,
};

/// A `sova-relay` process; killed if the test ends early.
struct RelayProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl RelayProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = relay_command(args).spawn().unwrap();
        let lines = stderr_lines(&mut child);
        let mut relay = RelayProcess {
            child,
            lines,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let listening = relay.wait_for_line("Listening on ");
        let addr = listening.rsplit("Listening on ").next().unwrap().trim();
        relay.addr = addr.parse().unwrap();
        relay
    }

    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the relay never logged {needle:?}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory of the relay, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sova-relay"));
    command
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test]
async fn sigterm_tells_instances_flushes_and_exits_zero() {
    let mut relay = RelayProcess::start(&[]);
    let mut alice = TestClient::register(relay.addr, "alice", None).await;
    let mut bob = TestClient::register(relay.addr, "bob", None).await;
    alice.update(1, b"last edit").await;
    assert_broadcast(&bob.recv().await, "alice", 1, b"last edit");
    relay.signal("TERM");
    for client in [&mut alice, &mut bob] {
        let seen = client.expect_closed().await;
        assert_eq!(
            seen.last(),
            Some(&Message::error("Relay shutting down")),
            "{seen:?}"
        );
    }
    let status = relay.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigint_works_like_sigterm() {
    let mut relay = RelayProcess::start(&[]);
    relay.signal("INT");
    assert_eq!(relay.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut relay = RelayProcess::start(&["--shutdown-timeout", "60s", "--write-timeout", "60s"]);
    let mut alice = TestClient::register(relay.addr, "alice", None).await;
    // An instance that never reads keeps the graceful shutdown waiting on its writer.
    let _stalled = TestClient::register(relay.addr, "stalled", None).await;
    let payload = vec![0u8; 32 * 1024];
    for i in 0..200 {
        alice.update(i, &payload).await;
    }
    assert!(alice.sync().await.is_empty());
    relay.signal("TERM");
    relay.wait_for_line("Received SIGTERM");
    relay.signal("TERM");
    let status = relay.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn a_port_in_use_is_a_one_line_error_and_a_failure_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_sova-relay"))
        .args(["--host", "127.0.0.1", "--port", &port])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("sova-relay: cannot listen on 127.0.0.1:"),
        "{stderr}"
    );
    assert!(last.contains("in use"), "{stderr}");
}

#[test]
fn a_missing_certificate_is_a_one_line_error_naming_the_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_sova-relay"))
        .args(["--port", "0", "--tls-cert", "/nonexistent/cert.pem"])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap();
    let expected = "sova-relay: cannot read TLS certificate /nonexistent/cert.pem";
    assert!(last.starts_with(expected), "{stderr}");
}

#[test]
fn a_bad_flag_fails_with_usage() {
    let output = Command::new(env!("CARGO_BIN_EXE_sova-relay"))
        .args(["--max-instances", "many"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-instances"), "{stderr}");
}

#[test]
fn flags_also_read_environment_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_sova-relay"))
        .env("SOVA_PORT", "not-a-port")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not-a-port"));
}

#[tokio::test]
async fn memory_stays_bounded_while_a_consumer_never_reads() {
    let mut relay = RelayProcess::start(&["--rate-limit", "1000000"]);
    let mut alice = TestClient::register(relay.addr, "alice", None).await;
    let mut bob = TestClient::register(relay.addr, "bob", None).await;
    // Connected and registered, then never read from again.
    let stalled = TestClient::register(relay.addr, "stalled", None).await;
    let departed = relay_in_steps(&mut alice, &mut bob, 100, &[0x5a; 1024]).await;
    assert!(
        departed.iter().all(|name| name == "stalled"),
        "{departed:?}"
    );
    let peak_kib = relay.peak_rss_kib();
    // 8 MiB of pending bytes for the stalled instance, plus the process itself.
    assert!(peak_kib < 48 * 1024, "peak RSS {peak_kib} KiB");
    relay.wait_for_line("Instance 'stalled' disconnected: Slow consumer");
    drop(stalled);
    let _ = TcpStream::connect(relay.addr).await.unwrap();
}

#[tokio::test]
async fn sighup_reloads_tokens_and_certificate_without_dropping_connections() {
    let pki = crate::security::TestPki::new();
    let tokens = pki.path("tokens");
    std::fs::write(&tokens, "keep\nrevoke\n").unwrap();
    let (tokens_arg, cert_arg, key_arg) = (
        tokens.display().to_string(),
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let mut relay = RelayProcess::start(&[
        "--tokens-file",
        &tokens_arg,
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ]);
    let mut keeper = TestClient::register(relay.addr, "keeper", Some("keep")).await;
    let stream = crate::security::tls_connect(relay.addr, pki.client_config())
        .await
        .unwrap();
    let mut keeper_tls = TestClient::over(stream);
    keeper_tls
        .register_as("keeper-tls", Some("keep"), None)
        .await;
    let mut doomed = TestClient::register(relay.addr, "doomed", Some("revoke")).await;

    std::fs::write(&tokens, "keep\n").unwrap();
    let new_cert = pki.issue(false);
    relay.signal("HUP");
    relay.wait_for_line("Reloaded on SIGHUP");

    assert_eq!(
        doomed.expect_closed().await,
        [Message::error("Session token revoked")]
    );
    keeper.update(1, b"still here").await;
    assert_broadcast(&keeper_tls.recv().await, "keeper", 1, b"still here");
    let fresh = crate::security::tls_connect(relay.addr, pki.client_config())
        .await
        .unwrap();
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        served, new_cert,
        "the new certificate is served after SIGHUP"
    );
    let (_, refused) = TestClient::register_with(relay.addr, "doomed", Some("revoke"), None).await;
    assert_eq!(refused, Message::error("Invalid session token"));

    std::fs::write(&tokens, "bad line with too many words\n").unwrap();
    relay.signal("HUP");
    relay.wait_for_line("Reload on SIGHUP failed");
    let _still_admitted = TestClient::register(relay.addr, "later", Some("keep")).await;
}

#[tokio::test]
async fn the_audit_log_survives_rotation_by_reopening_on_sighup() {
    let pki = crate::security::TestPki::new();
    let audit = pki.path("audit.log");
    let rotated = pki.path("audit.log.1");
    let mut relay = RelayProcess::start(&["--audit-log", &audit.display().to_string()]);
    let _before = TestClient::register(relay.addr, "before-rotation", None).await;
    wait_for_file_containing(&audit, "before-rotation").await;
    std::fs::rename(&audit, &rotated).unwrap();
    relay.signal("HUP");
    relay.wait_for_line("Reloaded on SIGHUP");
    let _after = TestClient::register(relay.addr, "after-rotation", None).await;
    wait_for_file_containing(&audit, "after-rotation").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains("after-rotation"),
        "written to the rotated file: {old}"
    );
}
