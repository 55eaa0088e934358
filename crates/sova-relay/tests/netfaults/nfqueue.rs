//! A netfilter queue (NFQUEUE 0) that delays every packet by a fixed time and drops a
//! share of them: `tc netem` done in user space, over a raw netlink socket.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const AF_INET: u16 = 2;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const QUEUE: u16 = 0;

/// One netlink message to the queue subsystem.
fn message(kind: u16, flags: u16, attributes: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut buf = vec![0u8; 16];
    buf.extend([0, 0]); // nfgenmsg: AF_UNSPEC, version 0
    buf.extend(QUEUE.to_be_bytes());
    for (kind, payload) in attributes {
        let len = u16::try_from(4 + payload.len()).unwrap();
        buf.extend(len.to_ne_bytes());
        buf.extend(kind.to_ne_bytes());
        buf.extend(payload);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }
    let total = u32::try_from(buf.len()).unwrap();
    buf[0..4].copy_from_slice(&total.to_ne_bytes());
    buf[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    buf[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf
}

/// Sends a configuration message and waits for the kernel's acknowledgement.
fn configure(socket: &Socket, attributes: &[(u16, Vec<u8>)]) {
    (&*socket)
        .write_all(&message(NFQNL_MSG_CONFIG, NLM_F_ACK, attributes))
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = (&*socket).read(&mut buf).unwrap();
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    assert!(n >= 20 && kind == NLMSG_ERROR, "unexpected answer {kind}");
    let code = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
    assert_eq!(code, 0, "NFQUEUE configuration refused (errno {})", -code);
}

fn verdict(socket: &Socket, id: u32, verdict: u32) {
    let mut header = verdict.to_be_bytes().to_vec();
    header.extend(id.to_be_bytes());
    let msg = message(NFQNL_MSG_VERDICT, 0, &[(NFQA_VERDICT_HDR, header)]);
    let _ = (&*socket).write_all(&msg);
}

/// Packet ids in one datagram from the kernel.
fn packet_ids(mut buf: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    while buf.len() >= 20 {
        let len = (u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize).max(16);
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg = &buf[..len.min(buf.len())];
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut attrs = &msg[20..];
            while attrs.len() >= 4 {
                let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]])).max(4);
                let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes(attrs[4..8].try_into().unwrap()));
                }
                attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    ids
}

pub fn delay() {
    let delay = Duration::from_millis(std::env::var("SOVA_NF_DELAY_MS").unwrap().parse().unwrap());
    let loss: u64 = std::env::var("SOVA_NF_LOSS_PERCENT")
        .unwrap()
        .parse()
        .unwrap();
    let socket = Socket::new(
        Domain::from(AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_NETFILTER)),
    )
    .unwrap();
    let _ = socket.set_recv_buffer_size(8 << 20);
    let mut bind = vec![NFQNL_CFG_CMD_BIND, 0];
    bind.extend(AF_INET.to_be_bytes());
    configure(&socket, &[(NFQA_CFG_CMD, bind)]);
    let mut params = 0xffffu32.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_META);
    configure(&socket, &[(NFQA_CFG_PARAMS, params)]);
    configure(
        &socket,
        &[(NFQA_CFG_QUEUE_MAXLEN, 16384u32.to_be_bytes().to_vec())],
    );

    let packets = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    // Equal delays keep the order: verdicts leave first in, first out.
    let (held, due) = mpsc::channel::<(Instant, u32)>();
    let sender = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        for (at, id) in due {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            verdict(&sender, id, NF_ACCEPT);
        }
    });
    let (p, d) = (packets.clone(), dropped.clone());
    std::thread::spawn(move || {
        // Stdin closing is the signal to stop.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let (p, d) = (p.load(Ordering::Relaxed), d.load(Ordering::Relaxed));
        println!("EVENT stats {p} packets queued, {d} dropped");
        std::process::exit(0);
    });
    println!("EVENT ready");
    let mut random = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let Ok(n) = (&socket).read(&mut buf) else {
            continue; // ENOBUFS: the kernel dropped a notification; carry on
        };
        let now = Instant::now();
        for id in packet_ids(&buf[..n]) {
            packets.fetch_add(1, Ordering::Relaxed);
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            if random % 100 < loss {
                dropped.fetch_add(1, Ordering::Relaxed);
                verdict(&socket, id, NF_DROP);
            } else {
                held.send((now + delay, id)).unwrap();
            }
        }
    }
}
