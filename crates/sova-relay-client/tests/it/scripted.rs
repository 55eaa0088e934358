//! A relay played by the test itself, frame by frame, for what a real relay cannot be made
//! to do on cue: ping with a skewed clock, hold a name, drop a connection mid-session.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sova_relay_protocol::{decode_body, encode_frame, FrameCodec, Message, UpdateData};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;
use uuid::Uuid;

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A listening socket the client under test connects to.
pub struct ScriptedRelay {
    listener: TcpListener,
}

impl ScriptedRelay {
    pub async fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    pub fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// The next connection, or a panic after `PATIENCE`.
    pub async fn accept(&self) -> Conn {
        let (stream, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("no connection")
            .unwrap();
        Conn::new(stream)
    }

    /// Whether a connection arrives within `wait`.
    pub async fn connects_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept())
            .await
            .is_ok()
    }
}

/// One accepted connection.
pub struct Conn {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: OwnedWriteHalf,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            reader: FramedRead::new(read, FrameCodec::new(1 << 20)),
            writer: write,
        }
    }

    pub async fn recv_body(&mut self) -> Bytes {
        tokio::time::timeout(PATIENCE, self.reader.next())
            .await
            .expect("nothing received")
            .expect("connection closed")
            .unwrap()
    }

    /// The next body, or `None` at end of stream.
    pub async fn try_recv(&mut self) -> Option<Bytes> {
        self.reader.next().await.map(Result::unwrap)
    }

    pub async fn recv(&mut self) -> Message {
        decode_body(self.recv_body().await).unwrap()
    }

    /// The next message that is not one of the client's heartbeat pings (answered).
    pub async fn recv_skipping_pings(&mut self) -> Message {
        loop {
            match self.recv().await {
                Message::Ping { timestamp } => self.send(&Message::Pong { timestamp }).await,
                other => return other,
            }
        }
    }

    pub async fn send(&mut self, message: &Message) {
        self.writer.write_all(&encode_frame(message)).await.unwrap();
    }

    /// Reads the registration and accepts it; returns the name and the id given.
    pub async fn accept_registration(&mut self, others: &[(Uuid, &str)]) -> (String, Uuid) {
        let Message::RegisterInstance { instance_name, .. } = self.recv().await else {
            panic!("expected RegisterInstance");
        };
        let id = Uuid::new_v4();
        let now = std::time::SystemTime::now();
        let current_instances = others
            .iter()
            .map(|(id, name)| sova_relay_protocol::InstanceInfo {
                id: *id,
                name: (*name).to_owned(),
                version: "0.1.0".to_owned(),
                connected_at: now,
                last_activity: now,
            })
            .collect();
        self.send(&Message::RegistrationResponse {
            success: true,
            message: format!("Registered as {instance_name}"),
            assigned_id: Some(id),
            current_instances,
            capabilities: Some(vec!["pong".to_owned(), "presence".to_owned()]),
            epoch: None,
            seq: None,
            resume_secret: None,
            resumed: None,
        })
        .await;
        (instance_name, id)
    }

    /// Reads the registration and refuses it the way the relay does: `Error`, then close.
    pub async fn refuse_registration(mut self, message: &str) {
        let Message::RegisterInstance { .. } = self.recv().await else {
            panic!("expected RegisterInstance");
        };
        self.send(&Message::error(message)).await;
    }

    /// The client's next `StateUpdate`, skipping pings.
    pub async fn recv_update(&mut self) -> (Uuid, u64, UpdateData) {
        match self.recv_skipping_pings().await {
            Message::StateUpdate {
                source_instance_id,
                timestamp,
                update_data,
            } => (source_instance_id, timestamp, update_data),
            other => panic!("expected StateUpdate, got {other:?}"),
        }
    }
}
