//! A client process: registers, prints what it receives, sends updates on command.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sova_relay_protocol::{decode_body, encode_frame, FrameCodec, Message, UpdateData};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn event(text: &str) {
    println!("EVENT {text}");
}

/// The payload of update `n`: its size and bytes both depend on `n`.
pub fn payload(n: u64, size: Option<usize>) -> Vec<u8> {
    let len = size.unwrap_or(1 + (n as usize * 97) % 1400);
    (0..len).map(|i| (n as usize + i * 7) as u8).collect()
}

pub fn client() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn connect(addr: SocketAddr, small_window: bool) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let socket = TcpSocket::new_v4().unwrap();
        if small_window {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        match socket.connect(addr).await {
            Ok(stream) => return stream,
            Err(err) if Instant::now() < deadline => {
                eprintln!("helper: connect to {addr}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("connect to {addr}: {err}"),
        }
    }
}

async fn run() {
    let addr: SocketAddr = env("SOVA_NF_ADDR").unwrap().parse().unwrap();
    let name = env("SOVA_NF_NAME").unwrap();
    let stall = env("SOVA_NF_STALL").is_some();
    let size = env("SOVA_NF_PAYLOAD").map(|s| s.parse().unwrap());
    let stream = connect(addr, stall).await;
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::new(16 << 20));
    let register = register_frame(&name, env("SOVA_NF_TOKEN").as_deref());
    write.write_all(&register).await.unwrap();
    let id = match frames.next().await.map(|body| decode_body(body.unwrap())) {
        Some(Ok(Message::RegistrationResponse {
            success: true,
            assigned_id: Some(id),
            ..
        })) => id,
        other => panic!("{name}: registration failed: {other:?}"),
    };
    event(&format!("registered {id}"));
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    if stall {
        // Never read again; leave when told to.
        while let Ok(Some(_)) = commands.next_line().await {}
        return;
    }
    let (to_writer, mut batches) = mpsc::unbounded_channel::<Vec<Bytes>>();
    tokio::spawn(async move {
        while let Some(batch) = batches.recv().await {
            for frame in &batch {
                write.write_all(frame).await.unwrap();
            }
            event(&format!("sent {}", batch.len()));
        }
    });
    loop {
        tokio::select! {
            command = commands.next_line() => match command {
                Ok(Some(command)) => {
                    // `send START COUNT`: updates with timestamps START.. START+COUNT.
                    let numbers: Vec<u64> = command
                        .strip_prefix("send ")
                        .unwrap()
                        .split(' ')
                        .map(|n| n.parse().unwrap())
                        .collect();
                    let (start, count) = (numbers[0], numbers[1]);
                    let batch = (start..start + count)
                        .map(|n| encode_frame(&Message::StateUpdate {
                            source_instance_id: id,
                            timestamp: n,
                            update_data: UpdateData::from_bin(&payload(n, size)),
                        }))
                        .collect();
                    to_writer.send(batch).unwrap();
                }
                _ => return,
            },
            frame = frames.next() => match frame {
                Some(Ok(body)) => report(decode_body(body), size),
                Some(Err(err)) => return event(&format!("closed {err}")),
                None => return event("closed"),
            },
        }
    }
}

/// `RegisterInstance` as an instance in the field sends it (written out by hand, so
/// the message type can grow fields without touching this).
fn register_frame(name: &str, token: Option<&str>) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        let len = u8::try_from(s.len()).unwrap();
        if len < 32 {
            out.push(0xa0 | len);
        } else {
            out.extend([0xd9, len]);
        }
        out.extend(s.as_bytes());
    }
    let mut body = vec![0x81];
    put_str(&mut body, "RegisterInstance");
    body.push(0x83);
    for (key, value) in [("instance_name", name), ("version", "0.1.0")] {
        put_str(&mut body, key);
        put_str(&mut body, value);
    }
    put_str(&mut body, "session_token");
    match token {
        Some(token) => put_str(&mut body, token),
        None => body.push(0xc0),
    }
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

fn report(message: Result<Message, sova_relay_protocol::ProtocolError>, size: Option<usize>) {
    match message {
        Ok(Message::StateBroadcast {
            source_instance_name,
            timestamp,
            update_data,
            ..
        }) => {
            let intact = update_data.to_vec().ok() == Some(payload(timestamp, size));
            let verdict = if intact { "ok" } else { "corrupt" };
            event(&format!(
                "broadcast {source_instance_name} {timestamp} {verdict}"
            ));
        }
        Ok(Message::InstanceDisconnected { instance_name, .. }) => {
            event(&format!("left {instance_name}"));
        }
        Ok(Message::Error { message }) => event(&format!("error {message}")),
        Ok(other) => event(&format!("other {}", other.kind())),
        Err(err) => event(&format!("undecodable {err}")),
    }
}
