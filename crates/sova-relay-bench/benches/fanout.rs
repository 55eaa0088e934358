//! Fan-out of one update to 20 recipients.
//!
//! - `relay_update_to_20`: the relay's own code (through `sova_relay::fuzzing::Harness`,
//!   its public in-memory entry point): one instance sends a `StateUpdate`, the relay
//!   decodes it, builds the broadcast once, queues it for 20 other instances, and their
//!   writer tasks write it to in-memory streams, where it is read back. Everything but
//!   the sockets.
//! - `queue_to_20`: only the queueing step the relay does per recipient (a byte-bounded
//!   check and an unbounded mpsc send of a shared `Bytes`), modelled here because the
//!   relay's `Outbox` is private.
//!
//! `cargo bench -p sova-relay-bench`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use divan::{black_box, Bencher};
use sova_relay::fuzzing::Harness;
use sova_relay::Config;
use sova_relay_bench::frames;
use sova_relay_protocol::{decode_body, state_broadcast_frame, Message, UpdateData};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

const RECIPIENTS: usize = 20;

fn main() {
    divan::main();
}

struct Rig {
    runtime: Runtime,
    sender: DuplexStream,
    receivers: Vec<DuplexStream>,
    update: Vec<u8>,
    buf: Vec<u8>,
}

async fn read_frame(stream: &mut DuplexStream) -> Bytes {
    let len = stream.read_u32().await.expect("frame header") as usize;
    let mut body = BytesMut::zeroed(len);
    stream.read_exact(&mut body).await.expect("frame body");
    body.freeze()
}

/// Sends one update from the first client; returns the length of the broadcast frame the
/// others receive.
async fn sender_warm_up(clients: &mut [DuplexStream], update: &[u8]) -> usize {
    clients[0].write_all(update).await.expect("update");
    let mut len = 0;
    for receiver in &mut clients[1..] {
        len = read_frame(receiver).await.len() + 4;
    }
    len
}

impl Rig {
    fn new(size: usize) -> Rig {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config {
            max_instances: 100,
            rate_limit: u32::MAX,
            ..Config::default()
        };
        let harness = Arc::new(Harness::new(config));
        let mut clients = Vec::new();
        let mut first_id = None;
        for i in 0..=RECIPIENTS {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let (reader, writer) = tokio::io::split(server);
            let harness = harness.clone();
            runtime.spawn(async move { harness.serve_connection(reader, writer).await });
            let register = frames::register(&format!("i{i}"), "0.1.0", None);
            let reply = runtime.block_on(async {
                client.write_all(&register).await.expect("register");
                read_frame(&mut client).await
            });
            if let Ok(Message::RegistrationResponse { assigned_id, .. }) = decode_body(reply) {
                first_id = first_id.or(assigned_id);
            }
            clients.push(client);
        }
        let update = frames::state_update(first_id.expect("registered"), &vec![7u8; size]);
        // The broadcast's length: whatever the relay adds, read it off the first one.
        let broadcast_len = runtime.block_on(async { sender_warm_up(&mut clients, &update).await });
        let sender = clients.remove(0);
        Rig {
            runtime,
            sender,
            receivers: clients,
            update,
            buf: vec![0; broadcast_len],
        }
    }

    fn one_update(&mut self) {
        let Rig {
            runtime,
            sender,
            receivers,
            update,
            buf,
            ..
        } = self;
        runtime.block_on(async {
            sender.write_all(update).await.expect("update");
            for receiver in receivers.iter_mut() {
                receiver.read_exact(buf).await.expect("broadcast");
            }
        });
    }
}

#[divan::bench(args = [256, 4096])]
fn relay_update_to_20(bencher: Bencher, size: usize) {
    let mut rig = Rig::new(size);
    rig.one_update();
    bencher.bench_local(|| rig.one_update());
}

/// The relay's per-recipient step, modelled: byte bound check, then a channel send.
struct Queue {
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    pending: AtomicUsize,
}

#[divan::bench]
fn queue_to_20(bencher: Bencher) {
    let queues: Vec<Queue> = (0..RECIPIENTS)
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            Queue {
                tx,
                rx,
                pending: AtomicUsize::new(0),
            }
        })
        .collect();
    let frame = state_broadcast_frame("alice-studio", 1, &UpdateData::from_array(&[7; 256]));
    let mut queues = queues;
    bencher.bench_local(|| {
        for queue in &queues {
            let before = queue.pending.fetch_add(frame.len(), Ordering::Relaxed);
            if before + frame.len() <= 8 << 20 {
                let _ = queue.tx.send(black_box(frame.clone()));
            }
        }
        for queue in &mut queues {
            while let Ok(frame) = queue.rx.try_recv() {
                queue
                    .pending
                    .fetch_sub(frame.remaining(), Ordering::Relaxed);
            }
        }
    });
}
