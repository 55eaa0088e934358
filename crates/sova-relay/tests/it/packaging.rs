//! Packaging: the `healthcheck` subcommand against live, stopped and silent relays, the
//! health checks written in the Dockerfiles and the compose file, and the systemd unit.
//! Everything through the real binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::deploy::{repo_root, run, stderr, stdout, Relay, TempFile, BINARY};

#[test]
fn healthcheck_passes_on_a_live_relay_and_fails_at_once_on_a_stopped_one() {
    let mut relay = Relay::start(&["--host", "127.0.0.1", "--port", "0"], &[]);
    let addr = relay.addr.to_string();
    let output = run(&["healthcheck", "--addr", &addr], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("healthy (HTTP/1.1 200 OK)"),
        "{}",
        stdout(&output)
    );

    relay.stop();
    let started = Instant::now();
    let output = run(&["healthcheck", "--addr", &addr], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stderr = stderr(&output);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn healthcheck_fails_at_once_where_nothing_ever_listened() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let output = run(
        &["healthcheck", "--addr", &format!("127.0.0.1:{port}")],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Unresolvable and malformed addresses fail too, with the reason.
    let output = run(&["healthcheck", "--addr", "no-port-here"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot resolve no-port-here"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn healthcheck_gives_up_on_a_port_that_never_answers() {
    // Connections land in the backlog, but nobody reads or writes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let output = run(&["healthcheck", "--addr", &addr, "--timeout", "300ms"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&output).contains("no answer in time"),
        "{}",
        stderr(&output)
    );
    // A bare TCP check is satisfied by the connection alone.
    let output = run(&["healthcheck", "--addr", &addr, "--tcp"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn healthcheck_follows_the_environment_and_falls_back_to_tcp_without_http() {
    let relay = Relay::start(
        &["--host", "127.0.0.1", "--port", "0", "--http", "false"],
        &[],
    );
    let addr = relay.addr.to_string();
    let port = relay.addr.port().to_string();

    let output = run(&["healthcheck", "--addr", &addr], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--tcp"), "{}", stderr(&output));
    let output = run(&["healthcheck", "--addr", &addr, "--tcp"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // Without --addr: the relay this environment describes (0.0.0.0 means loopback).
    let env = [("SOVA_PORT", port.as_str()), ("SOVA_HTTP", "false")];
    let output = run(&["healthcheck"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let file = TempFile::new("relay.toml", &format!("port = {port}\nhttp = false\n"));
    let output = run(&["healthcheck"], &[("SOVA_CONFIG", file.path())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// The health checks written in the Docker files, run as Docker would run them, against a
/// live relay whose port comes from the environment as in a container.
#[test]
fn the_docker_health_checks_pass_against_a_live_relay() {
    let relay = Relay::start(&["--host", "127.0.0.1", "--port", "0"], &[]);
    let port = relay.addr.port().to_string();
    let root = repo_root();
    let mut checks = Vec::new();
    for dockerfile in ["Dockerfile", "Dockerfile.prebuilt"] {
        let text = std::fs::read_to_string(root.join(dockerfile)).unwrap();
        assert!(text.contains("\nSTOPSIGNAL SIGTERM\n"), "{dockerfile}");
        assert!(text.contains("\nEXPOSE 9090\n"), "{dockerfile}");
        assert!(text.contains("\nUSER 65532:65532\n"), "{dockerfile}");
        let command = text
            .split("\nHEALTHCHECK ")
            .nth(1)
            .and_then(|rest| rest.split_once("CMD "))
            .map(|(_, command)| command.lines().next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no HEALTHCHECK CMD in {dockerfile}"));
        checks.push((dockerfile, command));
    }
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let test = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("test: "))
        .unwrap();
    checks.push(("docker-compose.yml", test.replace("\"CMD\", ", "")));
    for (file, command) in checks {
        let argv: Vec<String> = serde_json::from_str(&command).unwrap();
        assert_eq!(argv[0], "/usr/local/bin/sova-relay", "{file}");
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        let output = run(&args, &[("SOVA_PORT", &port)]);
        assert_eq!(output.status.code(), Some(0), "{file}: {}", stderr(&output));
    }
}

// --- systemd ------------------------------------------------------------------------------

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/sova-relay.service")).unwrap();
    for directive in [
        "ExecStart=/usr/local/bin/sova-relay\n",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
        "DynamicUser=yes\n",
        "NoNewPrivileges=yes\n",
        "ProtectSystem=strict\n",
        "PrivateTmp=yes\n",
        "RestrictAddressFamilies=AF_INET AF_INET6",
        "CapabilityBoundingSet=\n",
        "MemoryMax=",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    let Some(analyze) = systemd_analyze() else {
        assert!(
            std::env::var_os("SOVA_REQUIRE_SYSTEMD_ANALYZE").is_none(),
            "SOVA_REQUIRE_SYSTEMD_ANALYZE is set but systemd-analyze is missing"
        );
        eprintln!("SKIPPED: systemd-analyze not found (Debian package `systemd`); the unit was not verified");
        return;
    };
    // `verify` wants ExecStart's binary to exist: a copy of the unit that runs the binary
    // under test instead of /usr/local/bin/sova-relay, under the same unit name.
    let dir = std::env::temp_dir().join(format!("sova-relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("sova-relay.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sova-relay", BINARY)).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Unknown directives are only warnings to systemd: any word from it is a failure here.
    assert!(
        output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}
