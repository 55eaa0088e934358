//! `send`: sources of updates, exit codes, environment variables.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::{cli, run, TestServer, Watch};

#[tokio::test]
async fn stdin_lines_become_updates_in_order() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let mut watch = Watch::start(&server.addr, "watcher").await;
    let mut child = cli()
        .args([
            "send",
            "--addr",
            &server.addr,
            "--name",
            "bob",
            "--stdin-lines",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    stdin.write_all(b"crlf\r\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(crate::PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = (0..50)
        .map(|i| format!("line {i}"))
        .chain(["crlf".to_owned()]);
    for text in expected {
        let event = watch.until("broadcast").await;
        assert_eq!(event["data"], base64_of(&text));
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn rejections_exit_non_zero_with_the_relay_message() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let _watch = Watch::start(&server.addr, "taken").await;
    let (status, stdout, stderr) = run(cli().args([
        "send",
        "--addr",
        &server.addr,
        "--name",
        "taken",
        "--data",
        "x",
    ]))
    .await;
    assert!(!status.success());
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("Instance name 'taken' already in use"),
        "{stderr}"
    );

    let (status, _, stderr) = run(cli().args([
        "--sova-version",
        "9.9.9",
        "send",
        "--addr",
        &server.addr,
        "--name",
        "n",
        "--data",
        "x",
    ]))
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("Version mismatch: expected 0.1.0, got 9.9.9"),
        "{stderr}"
    );

    let (status, _, stderr) =
        run(cli().args(["send", "--addr", &server.addr, "--name", "n"])).await;
    assert!(!status.success(), "a payload source is required");
    assert!(stderr.contains("--data"), "{stderr}");
}

#[tokio::test]
async fn an_update_over_the_rate_limit_is_reported() {
    let server = TestServer::start(sova_relay::Config {
        rate_limit: 2,
        ..sova_relay::Config::default()
    })
    .await;
    let mut child = cli()
        .args([
            "send",
            "--addr",
            &server.addr,
            "--name",
            "fast",
            "--stdin-lines",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n2\n3\n4\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(crate::PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Rate limit exceeded for instance fast"),
        "{stderr}"
    );
}

#[tokio::test]
async fn environment_variables_stand_in_for_flags_and_stay_out_of_help() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let mut watch = Watch::start(&server.addr, "watcher").await;
    let (status, _, stderr) = run(cli()
        .env("SOVA_RELAY_ADDR", &server.addr)
        .env("SOVA_INSTANCE_NAME", "from-env")
        .args(["send", "--data", "hi"]))
    .await;
    assert!(status.success(), "{stderr}");
    assert_eq!(watch.until("broadcast").await["from"], "from-env");

    let (status, help, _) = run(cli()
        .env("SOVA_RELAY_TOKEN", "hunter2")
        .env("SOVA_RELAY_ADDR", "10.1.2.3:4")
        .args(["send", "--help"]))
    .await;
    assert!(status.success());
    assert!(help.contains("SOVA_RELAY_TOKEN"));
    assert!(
        !help.contains("hunter2") && !help.contains("10.1.2.3"),
        "{help}"
    );
}

#[tokio::test]
async fn an_unreachable_relay_is_an_error_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (status, _, stderr) =
        run(cli().args(["send", "--addr", &addr, "--name", "n", "--data", "x"])).await;
    assert!(!status.success());
    assert!(stderr.contains("error:"), "{stderr}");
}
