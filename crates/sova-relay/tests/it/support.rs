//! A relay on an ephemeral port, and a raw protocol client that speaks bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sova_relay::{Config, Server};
use sova_relay_protocol::{decode_body, encode_frame, FrameCodec, Message, UpdateData};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use uuid::Uuid;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process relay bound to 127.0.0.1:0; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::on("127.0.0.1:0", adjust).await
    }

    /// A relay bound to `addr` (e.g. `[::1]:0`).
    pub async fn on(addr: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            shutdown_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        adjust(&mut config);
        let server = Server::bind(addr.parse().unwrap(), config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the relay down and waits for `run` to return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("relay stopped in time")
            .unwrap()
            .unwrap();
    }

    pub async fn client(&self, name: &str) -> TestClient {
        TestClient::register(self.addr, name, None).await
    }

    pub async fn client_in(&self, name: &str, token: &str) -> TestClient {
        TestClient::register(self.addr, name, Some(token)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A protocol client that works at the byte level, so tests see exactly what the relay
/// sends.
pub struct TestClient {
    frames: FramedRead<Box<dyn AsyncRead + Send + Unpin>, FrameCodec>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub id: Uuid,
    pub name: String,
}

impl TestClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self::over(stream)
    }

    /// A client over any byte stream (TLS, in-memory, …).
    pub fn over(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        TestClient {
            frames: FramedRead::new(Box::new(reader), FrameCodec::new(64 << 20)),
            writer: Box::new(writer),
            id: Uuid::nil(),
            name: String::new(),
        }
    }

    /// Sends `RegisterInstance` and returns the answer, remembering the id on success.
    pub async fn register_as(
        &mut self,
        name: &str,
        token: Option<&str>,
        capabilities: Option<&[&str]>,
    ) -> Message {
        self.register_by(register_message(name, "0.1.0", token, capabilities))
            .await
    }

    /// Sends this `RegisterInstance` and returns the answer, remembering the id on success.
    pub async fn register_by(&mut self, request: Message) -> Message {
        let Message::RegisterInstance { instance_name, .. } = &request else {
            panic!("not a RegisterInstance: {request:?}");
        };
        let name = instance_name.clone();
        self.send(&request).await;
        let response = self.recv().await;
        if let Message::RegistrationResponse {
            assigned_id: Some(id),
            ..
        } = &response
        {
            self.id = *id;
            self.name = name;
        }
        response
    }

    pub async fn register(addr: SocketAddr, name: &str, token: Option<&str>) -> Self {
        let (client, response) = Self::register_with(addr, name, token, None).await;
        assert!(
            matches!(
                response,
                Message::RegistrationResponse { success: true, .. }
            ),
            "registration of {name} failed: {response:?}"
        );
        client
    }

    /// Registers and returns whatever the relay answered.
    pub async fn register_with(
        addr: SocketAddr,
        name: &str,
        token: Option<&str>,
        capabilities: Option<&[&str]>,
    ) -> (Self, Message) {
        let mut client = Self::connect(addr).await;
        let response = client.register_as(name, token, capabilities).await;
        (client, response)
    }

    pub async fn send(&mut self, message: &Message) {
        self.send_raw(&encode_frame(message)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends a `StateUpdate` from this instance.
    pub async fn update(&mut self, timestamp: u64, data: &[u8]) {
        let message = Message::StateUpdate {
            source_instance_id: self.id,
            timestamp,
            update_data: UpdateData::from_array(data),
        };
        self.send(&message).await;
    }

    /// The next frame body, raw.
    pub async fn recv_raw(&mut self) -> Bytes {
        match tokio::time::timeout(WAIT, self.frames.next()).await {
            Ok(Some(Ok(body))) => body,
            Ok(other) => panic!(
                "{}: connection ended instead of a frame: {other:?}",
                self.name
            ),
            Err(_) => panic!("{}: no frame within {WAIT:?}", self.name),
        }
    }

    pub async fn recv(&mut self) -> Message {
        decode_body(self.recv_raw().await).unwrap()
    }

    /// The next message, or `None` if nothing arrives within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.frames.next()).await {
            Ok(Some(Ok(body))) => Some(decode_body(body).unwrap()),
            Ok(other) => panic!("{}: connection ended: {other:?}", self.name),
            Err(_) => None,
        }
    }

    /// Expects an `Error` with exactly `text`.
    pub async fn expect_error(&mut self, text: &str) {
        match self.recv().await {
            Message::Error { message } => assert_eq!(message, text),
            other => panic!("{}: expected Error {text:?}, got {other:?}", self.name),
        }
    }

    /// Expects the relay to close the connection (after any frames, which are returned).
    pub async fn expect_closed(&mut self) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.frames.next()).await {
                Ok(Some(Ok(body))) => seen.push(decode_body(body).unwrap()),
                Ok(None) | Ok(Some(Err(_))) => return seen,
                Err(_) => panic!("{}: still open after {WAIT:?}; saw {seen:?}", self.name),
            }
        }
    }

    /// Proves the connection is alive and in order: a Ping answered by the matching Pong,
    /// with every message received before it returned.
    pub async fn sync(&mut self) -> Vec<Message> {
        let marker = 0x5eed_0000 + u64::from(rand_u16());
        self.send(&Message::Ping { timestamp: marker }).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                Message::Pong { timestamp } if timestamp == marker => return before,
                other => before.push(other),
            }
        }
    }
}

pub fn register_message(
    name: &str,
    version: &str,
    token: Option<&str>,
    capabilities: Option<&[&str]>,
) -> Message {
    Message::RegisterInstance {
        instance_name: name.to_owned(),
        version: version.to_owned(),
        session_token: token.map(str::to_owned),
        capabilities: capabilities.map(|caps| caps.iter().map(|c| c.to_string()).collect()),
        resume: None,
    }
}

fn rand_u16() -> u16 {
    Uuid::new_v4().as_bytes()[0] as u16 * 256 + Uuid::new_v4().as_bytes()[1] as u16
}

/// Asserts `message` is a broadcast from `from` carrying `data` at `timestamp`.
pub fn assert_broadcast(message: &Message, from: &str, timestamp: u64, data: &[u8]) {
    match message {
        Message::StateBroadcast {
            source_instance_name,
            timestamp: ts,
            update_data,
            ..
        } => {
            assert_eq!(source_instance_name, from);
            assert_eq!(*ts, timestamp);
            assert_eq!(update_data.to_vec().unwrap(), data);
        }
        other => panic!("expected a StateBroadcast from {from}, got {other:?}"),
    }
}

/// Alice sends `steps × 100` numbered updates of `payload`, in steps Bob keeps up with, so
/// only an instance that never reads falls behind. Checks Bob gets every one in order;
/// returns the names of instances whose departure Bob heard of meanwhile.
pub async fn relay_in_steps(
    alice: &mut TestClient,
    bob: &mut TestClient,
    steps: u64,
    payload: &[u8],
) -> Vec<String> {
    let mut departed = Vec::new();
    for step in 0..steps {
        for i in step * 100..(step + 1) * 100 {
            alice.update(i, payload).await;
        }
        let mut received = step * 100;
        while received < (step + 1) * 100 {
            match bob.recv().await {
                Message::StateBroadcast { timestamp, .. } => {
                    assert_eq!(timestamp, received, "out of order");
                    received += 1;
                }
                Message::InstanceDisconnected { instance_name, .. } => departed.push(instance_name),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    departed
}

/// Waits until `path` exists and contains `needle` (the audit trail is written by its own
/// thread).
pub async fn wait_for_file_containing(path: &std::path::Path, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never contained {needle}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
