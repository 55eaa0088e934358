//! A whole relay connection fed arbitrary bytes, over in-memory streams.
//!
//! A well-behaved peer registers first and reads everything. Then the input goes to a
//! second connection: its first frame alone, then (once the relay has answered it) the
//! rest, with every copy of the PROTOCOL.md test id `123e4567-…` replaced by the id the
//! relay assigned, so the seed vectors' `StateUpdate`s are relayed rather than refused.
//! Then its write side is shut and everything the relay writes back is read until EOF.
//!
//! Checked: the connection ends (time is paused, so every timeout fires at once and a hang
//! shows up as the outer timeout), every byte the relay writes is a complete frame that
//! `decode_body` accepts, nothing is echoed to its sender, a client without capabilities
//! never gets a message a Sova 0.1.x instance cannot decode (`field.rs`), the peer receives exactly the updates the input
//! sent (in order, verbatim) when both share a session, and no instance is left registered.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use sova_relay::fuzzing::Harness;
use sova_relay::Config;
use sova_relay_protocol::{
    decode_body, FrameCodec, Message, ProtocolError, UpdateData, CAPABILITY_PONG,
    DEFAULT_MAX_MESSAGE_SIZE,
};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, FramedRead};

mod field;

/// The id the PROTOCOL.md vectors use; replaced by the id the relay assigns.
const VECTOR_ID: [u8; 16] = 0x123e4567_e89b_12d3_a456_426614174000_u128.to_be_bytes();
const PEER_NAME: &str = "fuzz-peer";
/// Virtual time: far beyond every timeout of the relay, reached at once when all is idle.
const HANG: Duration = Duration::from_secs(24 * 3600);
/// In-memory link capacity, like a socket buffer.
const PIPE: usize = 64 * 1024;

fn config() -> Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::default).clone()
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        tokio::time::timeout(HANG, session(data))
            .await
            .expect("the relay did not finish the connection (hang)");
    });
});

async fn session(data: &[u8]) {
    let harness = Harness::new(config());
    let (peer_client, peer_server) = tokio::io::duplex(PIPE);
    let (fuzz_client, fuzz_server) = tokio::io::duplex(PIPE);
    let (peer_registered, wait_peer) = oneshot::channel();
    let (fuzz_served, wait_fuzz) = oneshot::channel();
    let relay = async {
        let (peer_read, peer_write) = tokio::io::split(peer_server);
        let (fuzz_read, fuzz_write) = tokio::io::split(fuzz_server);
        tokio::join!(harness.serve_connection(peer_read, peer_write), async {
            let _ = wait_peer.await;
            harness.serve_connection(fuzz_read, fuzz_write).await;
            let _ = fuzz_served.send(());
        });
    };
    let ((), peer_seen, fuzz) = tokio::join!(
        relay,
        peer(peer_client, peer_registered, wait_fuzz),
        fuzz_client_side(fuzz_client, data),
    );
    assert_eq!(harness.instance_count(), 0, "an instance stayed registered");
    check_peer(&peer_seen, &fuzz);
}

/// Registers, reads everything, and closes once the fuzzed connection has ended.
async fn peer(
    client: DuplexStream,
    registered: oneshot::Sender<()>,
    fuzz_done: oneshot::Receiver<()>,
) -> Vec<Message> {
    let (read, mut write) = tokio::io::split(client);
    let mut frames = reader(read);
    let register = register_frame(PEER_NAME, &config().sova_version);
    write.write_all(&register).await.expect("peer writes");
    let first = next_message(&mut frames)
        .await
        .expect("peer gets an answer");
    assert!(
        matches!(first, Message::RegistrationResponse { success: true, .. }),
        "{first:?}"
    );
    let _ = registered.send(());
    let mut seen = Vec::new();
    let mut fuzz_done = Some(fuzz_done);
    loop {
        tokio::select! {
            done = async { fuzz_done.as_mut().expect("select guard").await }, if fuzz_done.is_some() => {
                let _ = done;
                fuzz_done = None;
                write.shutdown().await.expect("peer shuts its write side");
            }
            message = next_body(&mut frames) => match message {
                Some((message, body)) => {
                    // The peer asked for no extension: it stands for an instance in the field.
                    field::must_decode(&body, "sent to the peer");
                    seen.push(message);
                }
                None => return seen,
            },
        }
    }
}

/// What the fuzzed connection sent and received.
struct FuzzSide {
    /// The rest of the input, as actually sent (ids replaced).
    sent_rest: Vec<u8>,
    /// Assigned id and the `RegisterInstance` that got it, when registration succeeded.
    registered: Option<(Message, [u8; 16])>,
}

async fn fuzz_client_side(client: DuplexStream, data: &[u8]) -> FuzzSide {
    let (read, mut write) = tokio::io::split(client);
    let mut frames = reader(read);
    let (first, rest) = split_first_frame(data).unwrap_or((data, &[]));
    let _ = write.write_all(first).await;
    let mut received = Vec::new();
    let mut registered = None;
    let mut rest = rest.to_vec();
    if split_first_frame(data).is_some() {
        // A complete first frame (or a zero length): the relay always answers it.
        let reply = next_body(&mut frames)
            .await
            .expect("the relay answers a complete first frame");
        if let Message::RegistrationResponse {
            success: true,
            assigned_id: Some(id),
            ..
        } = &reply.0
        {
            let register = decode_body(Bytes::copy_from_slice(&first[4..]))
                .expect("the relay registered a frame that decodes");
            replace_all(&mut rest, &VECTOR_ID, id.as_bytes());
            registered = Some((register, *id.as_bytes()));
        }
        received.push(reply);
    }
    let write_rest = async {
        let _ = write.write_all(&rest).await;
        let _ = write.shutdown().await;
    };
    let read_rest = async {
        while let Some(message) = next_body(&mut frames).await {
            received.push(message);
        }
    };
    tokio::join!(write_rest, read_rest);
    let pong = registered.as_ref().is_some_and(|(register, _)| {
        matches!(register, Message::RegisterInstance { capabilities: Some(c), .. } if c.iter().any(|c| c == CAPABILITY_PONG))
    });
    let old_client = match &registered {
        Some((Message::RegisterInstance { capabilities, .. }, _)) => capabilities.is_none(),
        _ => true,
    };
    for (message, body) in &received {
        if old_client {
            field::must_decode(body, "sent to a client without capabilities");
        }
        match message {
            Message::StateBroadcast { .. } => panic!("an update was echoed to its sender"),
            Message::InstanceConnected { .. } => {
                panic!("presence sent to a client that joined last")
            }
            Message::Ping { .. } if !pong => panic!("Ping sent to a client without `pong`"),
            _ => {}
        }
    }
    FuzzSide {
        sent_rest: rest,
        registered,
    }
}

/// `RegisterInstance {instance_name, version}` as an instance in the field sends it
/// (written out by hand, so the message type can grow fields without touching this).
fn register_frame(name: &str, version: &str) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        let len = u8::try_from(s.len()).expect("short strings");
        if len < 32 {
            out.push(0xa0 | len);
        } else {
            out.extend([0xd9, len]);
        }
        out.extend(s.as_bytes());
    }
    let mut body = vec![0x81];
    put_str(&mut body, "RegisterInstance");
    body.push(0x82);
    for (key, value) in [("instance_name", name), ("version", version)] {
        put_str(&mut body, key);
        put_str(&mut body, value);
    }
    let mut frame = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    frame.extend(body);
    frame
}

/// The first frame of the input and the rest, when the input holds a complete one.
fn split_first_frame(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let header = data.get(..4)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let end = 4usize.checked_add(len).filter(|end| *end <= data.len())?;
    Some(data.split_at(end))
}

fn replace_all(haystack: &mut [u8], needle: &[u8; 16], with: &[u8; 16]) {
    let mut at = 0;
    while at + 16 <= haystack.len() {
        if &haystack[at..at + 16] == needle {
            haystack[at..at + 16].copy_from_slice(with);
            at += 16;
        } else {
            at += 1;
        }
    }
}

/// Frames from the relay: any length a header can say, so a bad frame is seen as such.
fn reader(read: ReadHalf<DuplexStream>) -> FramedRead<ReadHalf<DuplexStream>, FrameCodec> {
    FramedRead::new(read, FrameCodec::new(u32::MAX as usize))
}

/// The next message the relay wrote; `None` at a clean end of stream.
async fn next_message(
    frames: &mut FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
) -> Option<Message> {
    next_body(frames).await.map(|(message, _)| message)
}

/// The next message and its body as the relay wrote them; `None` at a clean end of stream.
async fn next_body(
    frames: &mut FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
) -> Option<(Message, Bytes)> {
    let body = match frames.next().await? {
        Ok(body) => body,
        Err(ProtocolError::Io(err)) => panic!("relay stream ended inside a frame: {err}"),
        Err(err) => panic!("the relay wrote an invalid frame: {err}"),
    };
    let message = decode_body(body.clone())
        .unwrap_or_else(|err| panic!("the relay wrote an undecodable body {body:02x?}: {err}"));
    Some((message, body))
}

/// The peer must have received, in order and verbatim, every update the fuzzed instance
/// sent with its own id, when both are in the default session and nothing cut it short.
fn check_peer(peer_seen: &[Message], fuzz: &FuzzSide) {
    for message in peer_seen {
        assert!(
            matches!(
                message,
                Message::StateBroadcast { .. } | Message::InstanceDisconnected { .. }
            ),
            "the peer got {message:?}"
        );
    }
    let Some((
        Message::RegisterInstance {
            instance_name,
            session_token: None,
            capabilities,
            ..
        },
        id,
    )) = &fuzz.registered
    else {
        assert!(
            !peer_seen
                .iter()
                .any(|m| matches!(m, Message::StateBroadcast { .. })),
            "the peer got an update from an instance outside its session"
        );
        return;
    };
    let pong = capabilities
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c == CAPABILITY_PONG));
    let Some(expected) = expected_updates(&fuzz.sent_rest, id, pong) else {
        return;
    };
    let got: Vec<(u64, &UpdateData)> = peer_seen
        .iter()
        .filter_map(|m| match m {
            Message::StateBroadcast {
                source_instance_name,
                timestamp,
                update_data,
                ..
            } => {
                assert_eq!(source_instance_name, instance_name);
                Some((*timestamp, update_data))
            }
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, &UpdateData)> = expected.iter().map(|(t, d)| (*t, d)).collect();
    assert_eq!(
        got, expected,
        "the peer did not get exactly the updates sent"
    );
    assert!(
        matches!(peer_seen.last(), Some(Message::InstanceDisconnected { instance_name: n, .. }) if n == instance_name),
        "the peer was not told the fuzzed instance left: {peer_seen:?}"
    );
}

/// Updates the relay must forward: valid `StateUpdate`s with the sender's id, up to the
/// first frame error. `None` when the rate limit or missed pongs could end it early.
fn expected_updates(rest: &[u8], id: &[u8; 16], pong: bool) -> Option<Vec<(u64, UpdateData)>> {
    let mut codec = FrameCodec::new(DEFAULT_MAX_MESSAGE_SIZE);
    let mut buf = BytesMut::from(rest);
    let mut updates = Vec::new();
    let mut messages = 0;
    while let Ok(Some(body)) = codec.decode(&mut buf) {
        messages += 1;
        if let Ok(Message::StateUpdate {
            source_instance_id,
            timestamp,
            update_data,
            ..
        }) = decode_body(body)
        {
            if source_instance_id.as_bytes() == id {
                updates.push((timestamp, update_data));
            }
        }
    }
    let rate_limit = usize::try_from(config().rate_limit).unwrap_or(usize::MAX);
    (messages < rate_limit && !pong).then_some(updates)
}
