//! `--addr ws://HOST:PORT/ws`: every command over the relay's WebSocket transport.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::{cli, run, TestServer, Watch};

#[tokio::test]
async fn watch_send_and_ping_work_over_websocket() {
    let server = TestServer::start(sova_relay::Config::default()).await;
    let ws = format!("ws://{}/ws", server.addr);
    let mut watch = Watch::start(&ws, "watcher").await;

    // A WebSocket sender and a TCP sender reach the WebSocket watcher, in order.
    for (addr, name) in [(&ws, "ws-sender"), (&server.addr, "tcp-sender")] {
        let (status, _, stderr) =
            run(cli().args(["send", "--addr", addr, "--name", name, "--data", name])).await;
        assert!(status.success(), "{stderr}");
        let event = watch.until("broadcast").await;
        assert_eq!(event["from"], name);
        assert_eq!(event["data"], BASE64.encode(name));
    }

    let (status, stdout, stderr) = run(cli().args(["ping", "--addr", &ws, "--count", "2"])).await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.ends_with(" ms (2 pings)\n"), "{stdout}");

    assert!(watch.interrupt().await.success());
}
