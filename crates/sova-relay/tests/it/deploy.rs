//! Deployment: the `--config` file and its precedence, `config print` and `config check`,
//! and the example configuration (`packaging.rs`: healthcheck, Docker, systemd).
//! Everything through the real binary, with an environment of the test's choosing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sova_relay_protocol::Message;

use crate::support::{TestClient, WAIT};

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_sova-relay");

/// The binary with an empty environment (no stray `SOVA_*` or `RUST_LOG`) plus `env`.
pub(crate) fn relay(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    relay(args, env).output().unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line of `config print` output for `key`, value and origin.
fn printed<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file in the temporary directory, removed on drop.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "sova-relay-deploy-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running relay process; killed if the test ends early.
pub(crate) struct Relay {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Its log lines; kept, so that the pipe stays open while it runs.
    _lines: Option<mpsc::Receiver<String>>,
}

impl Relay {
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = relay(args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("the relay never listened");
            if let Some((_, addr)) = line.split_once("Listening on ") {
                break addr.trim().parse().unwrap();
            }
        };
        Relay {
            child,
            addr,
            _lines: Some(lines),
        }
    }

    /// Starts a relay, then closes the read end of its stderr once it listens, so that
    /// every later log line meets a broken pipe.
    fn start_then_close_stderr(args: &[&str]) -> Self {
        let mut child = relay(args, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut relay = Relay {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            _lines: None,
        };
        relay.addr = loop {
            let mut line = String::new();
            let read = log.read_line(&mut line).unwrap();
            assert_ne!(read, 0, "the relay never listened");
            if let Some((_, addr)) = line.split_once("Listening on ") {
                break addr.trim().parse().unwrap();
            }
        };
        relay
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the relay did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- configuration file and precedence ----------------------------------------------------

#[test]
fn command_line_beats_environment_beats_file_beats_default() {
    let file = TempFile::new(
        "relay.toml",
        "max_instances = 30\nrate_limit = 300\nport = 3000\nallow = [\"10.0.0.0/8\"]\n\
         handshake_timeout = \"3s\"\n",
    );
    let output = run(
        &[
            "config",
            "print",
            "--config",
            file.path(),
            "--max-instances",
            "10",
        ],
        &[
            ("SOVA_MAX_INSTANCES", "20"),
            ("SOVA_RATE_LIMIT", "200"),
            ("SOVA_LOCKOUT", "2m"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let expected = [
        ("max_instances", "10", "# command line"),
        ("rate_limit", "200", "# environment (SOVA_RATE_LIMIT)"),
        ("lockout", "\"2m\"", "# environment (SOVA_LOCKOUT)"),
        ("port", "3000", "# file"),
        ("allow", "[\"10.0.0.0/8\"]", "# file"),
        ("handshake_timeout", "\"3s\"", "# file"),
        ("ping_interval", "\"15s\"", "# default"),
        ("max_connections", "4096", "# default"),
    ];
    for (key, value, origin) in expected {
        let line = printed(&text, key);
        assert!(
            line.starts_with(&format!("{key} = {value} ")) && line.ends_with(origin),
            "{key}: {line:?}"
        );
    }
    assert!(text.contains(&format!("# file: {}", file.path())), "{text}");
}

#[test]
fn sova_config_names_the_file_and_the_flag_wins_over_it() {
    let from_env = TempFile::new("env.toml", "max_instances = 7\n");
    let from_flag = TempFile::new("flag.toml", "max_instances = 8\n");
    let output = run(&["config", "print"], &[("SOVA_CONFIG", from_env.path())]);
    assert!(printed(&stdout(&output), "max_instances").starts_with("max_instances = 7 "));
    let output = run(
        &["config", "print", "--config", from_flag.path()],
        &[("SOVA_CONFIG", from_env.path())],
    );
    assert!(printed(&stdout(&output), "max_instances").starts_with("max_instances = 8 "));
}

#[tokio::test]
async fn the_relay_runs_with_the_settings_of_its_file() {
    let file = TempFile::new(
        "relay.toml",
        "host = \"127.0.0.1\"\nport = 0\nmax_instances = 1\n",
    );
    let relay = Relay::start(&["--config", file.path()], &[]);
    assert!(relay.addr.ip().is_loopback(), "{}", relay.addr);
    let _alice = TestClient::register(relay.addr, "alice", None).await;
    let (_bob, refused) = TestClient::register_with(relay.addr, "bob", None, None).await;
    assert_eq!(refused, Message::error("Maximum instances (1) reached"));
}

/// Docker's or journald's end of the pipe can go away; the relay must not care.
#[tokio::test]
async fn a_relay_whose_stderr_is_closed_keeps_serving() {
    let relay = Relay::start_then_close_stderr(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-instances",
        "1",
    ]);
    let _alice = TestClient::register(relay.addr, "alice", None).await;
    let (_bob, refused) = TestClient::register_with(relay.addr, "bob", None, None).await;
    assert_eq!(refused, Message::error("Maximum instances (1) reached"));
}

#[test]
fn an_unknown_key_stops_the_relay_naming_the_key() {
    let file = TempFile::new("typo.toml", "port = 0\nmax_instance = 5\n");
    let output = run(&["--config", file.path()], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let stderr = stderr(&output);
    assert!(stderr.contains("unknown key `max_instance`"), "{stderr}");
    assert!(stderr.contains("did you mean `max_instances`?"), "{stderr}");
    assert!(stderr.contains(file.path()), "{stderr}");
}

#[test]
fn a_bad_value_stops_the_relay_naming_key_and_value() {
    for (text, expected) in [
        (
            "handshake_timeout = \"soon\"",
            "`handshake_timeout = \"soon\"`",
        ),
        ("max_instances = -3", "`max_instances = -3`"),
        ("deny = [\"not-a-network\"]", "`deny = [\"not-a-network\"]`"),
        ("tls_required = true", "--tls-cert"),
    ] {
        let file = TempFile::new("bad.toml", &format!("port = 0\n{text}\n"));
        let output = run(&["--config", file.path()], &[]);
        assert_eq!(output.status.code(), Some(2), "{text}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(expected),
            "{text}: {}",
            stderr(&output)
        );
    }
    let output = run(&["--config", "/nonexistent/relay.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read config file /nonexistent/relay.toml"));
}

#[test]
fn a_bad_flag_still_beats_a_good_file() {
    let file = TempFile::new("relay.toml", "max_instances = 5\n");
    let output = run(&["--config", file.path(), "--max-instances", "many"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("'many'"), "{}", stderr(&output));
}

#[test]
fn config_check_exits_zero_only_for_a_file_the_relay_would_start_with() {
    let good = TempFile::new("good.toml", "max_instances = 50\nlockout = \"10m\"\n");
    // The environment is not the file's business: a bad variable does not fail the check.
    let output = run(&["config", "check", good.path()], &[("SOVA_PORT", "x")]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}: ok\n", good.path()));

    let cases = [
        ("rate_limit = 0", "`rate_limit = 0`"),
        ("colour = \"blue\"", "unknown key `colour`"),
        ("port = ", "invalid TOML"),
        ("tls_cert = \"/etc/cert.pem\"", "--tls-key"),
        (
            "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"",
            "cannot read TLS certificate /nonexistent/cert.pem",
        ),
        (
            "tokens_file = \"/nonexistent/tokens\"",
            "/nonexistent/tokens",
        ),
        (
            "cluster_nats = [\"nats://127.0.0.1:4222\"]\ncluster_nats_creds = \"/nonexistent/nats.creds\"",
            "cluster_nats_creds: cannot read /nonexistent/nats.creds",
        ),
        (
            "cluster_nats = [\"nats://[::1\"]",
            "cluster_nats: 'nats://[::1' is not a NATS URL",
        ),
        ("node_name = \"a b\"", "is not a node name"),
    ];
    for (text, expected) in cases {
        let bad = TempFile::new("bad.toml", text);
        let output = run(&["config", "check", bad.path()], &[]);
        assert_eq!(output.status.code(), Some(1), "{text}: {}", stderr(&output));
        let stderr = stderr(&output);
        assert_eq!(stderr.lines().count(), 1, "{text}: one line: {stderr}");
        assert!(stderr.starts_with("sova-relay config check: "), "{stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
    let output = run(&["config", "check", "/nonexistent/relay.toml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let output = run(&["config", "check"], &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a missing PATH is a usage error"
    );
}

#[test]
fn config_print_redacts_secrets_wherever_they_come_from() {
    let file = TempFile::new("secret.toml", "admin_token = \"from-the-file\"\n");
    let redacted = |flags: &[&str], env: &[(&str, &str)], secret: &str| {
        let mut args = vec!["config", "print"];
        args.extend_from_slice(flags);
        let output = run(&args, env);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        assert!(
            printed(&text, "admin_token").starts_with("admin_token = \"<redacted>\""),
            "{text}"
        );
        assert!(!text.contains(secret) && !stderr(&output).contains(secret));
    };
    redacted(&["--admin-token", "from-the-flag"], &[], "from-the-flag");
    redacted(&[], &[("SOVA_ADMIN_TOKEN", "from-the-env")], "from-the-env");
    redacted(&["--config", file.path()], &[], "from-the-file");
    let text = stdout(&run(&["config", "print"], &[]));
    assert!(text.contains("# admin_token is not set"), "{text}");
}

#[test]
fn the_example_configuration_is_valid_and_its_commented_defaults_are_the_defaults() {
    let example = repo_root().join("deploy/config.toml");
    let example_path = example.to_str().unwrap();
    let output = run(&["config", "check", example_path], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let defaults = stdout(&run(&["config", "print"], &[]));
    let text = std::fs::read_to_string(&example).unwrap();
    let keys: Vec<&str> = defaults
        .lines()
        .filter_map(|line| line.split(" = ").next())
        .filter_map(|key| key.strip_prefix("# ").or(Some(key)))
        .filter_map(|key| key.split_whitespace().next())
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(keys.len() > 30, "{keys:?}");
    for key in keys {
        assert!(
            text.contains(&format!("{key} = ")),
            "deploy/config.toml lacks {key}"
        );
    }
    // `# key = value` lines claim to show the default, except for the examples of paths,
    // networks and secrets.
    let examples = [
        "admin_token",
        "tls_cert",
        "tls_key",
        "tokens_file",
        "allow",
        "audit_log",
        "cluster_nats",
        "node_name",
        "cluster_nats_creds",
        "cluster_nats_ca",
        "cluster_nats_cert",
        "cluster_nats_key",
    ];
    let uncommented: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.split(" = ").nth(1).is_some())
        .filter(|line| !line.starts_with(' '))
        .filter(|line| {
            !examples
                .iter()
                .any(|key| line.starts_with(&format!("{key} ")))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let claimed = TempFile::new("defaults.toml", &uncommented);
    let output = run(&["config", "print", "--config", claimed.path()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let from_example = stdout(&output);
    for line in uncommented.lines() {
        let key = line.split(" = ").next().unwrap();
        let value = |text: &str| {
            let line = printed(text, key).to_owned();
            line.split(" # ").next().unwrap().trim().to_owned()
        };
        assert_eq!(value(&from_example), value(&defaults), "{key}");
    }
}
