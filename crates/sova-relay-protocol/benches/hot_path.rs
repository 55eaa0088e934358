//! The relay's per-message work in the protocol crate: decoding a `StateUpdate` (with the
//! `update_data` span located for verbatim forwarding), and building the `StateBroadcast`
//! frame once with that span spliced in. `cargo bench -p sova-relay-protocol`.

use bytes::{Bytes, BytesMut};
use divan::{black_box, Bencher};
use sova_relay_protocol::{
    decode_body, encode_frame, state_broadcast_frame, FrameCodec, Message, UpdateData,
};
use tokio_util::codec::Decoder;
use uuid::Uuid;

fn main() {
    divan::main();
}

/// Payload sizes: a typical edit, and the `large` scenario's 64 KiB.
const SIZES: &[usize] = &[256, 65536];

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

/// The body of a `StateUpdate`, `update_data` as an array of uints (what instances in
/// the field send) or as a bin.
fn state_update_body(size: usize, bin: bool) -> Bytes {
    let data = payload(size);
    let update_data = if bin {
        UpdateData::from_bin(&data)
    } else {
        UpdateData::from_array(&data)
    };
    let frame = encode_frame(&Message::StateUpdate {
        source_instance_id: Uuid::from_u128(0x123e_4567_e89b_12d3_a456_4266_1417_4000),
        timestamp: 1_705_314_615_000,
        update_data,
    });
    frame.slice(4..)
}

#[divan::bench(args = SIZES)]
fn decode_state_update_array(bencher: Bencher, size: usize) {
    let body = state_update_body(size, false);
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| decode_body(black_box(body.clone())));
}

#[divan::bench(args = SIZES)]
fn decode_state_update_bin(bencher: Bencher, size: usize) {
    let body = state_update_body(size, true);
    bencher
        .counter(divan::counter::BytesCount::new(body.len()))
        .bench(|| decode_body(black_box(body.clone())));
}

#[divan::bench(args = SIZES)]
fn build_state_broadcast(bencher: Bencher, size: usize) {
    let update_data = UpdateData::from_array(&payload(size));
    bencher.bench(|| {
        state_broadcast_frame(
            black_box("alice-studio"),
            black_box(1_705_314_615_000),
            black_box(&update_data),
        )
    });
}

/// Splitting 64 frames of 256-byte updates out of one read buffer.
#[divan::bench]
fn frame_codec_64_updates(bencher: Bencher) {
    let frame = encode_frame(&Message::StateUpdate {
        source_instance_id: Uuid::nil(),
        timestamp: 1,
        update_data: UpdateData::from_bin(&payload(256)),
    });
    let input: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 64)
        .collect();
    bencher
        .with_inputs(|| BytesMut::from(&input[..]))
        .bench_local_refs(|buf| {
            let mut codec = FrameCodec::new(1 << 20);
            let mut frames = 0;
            while let Ok(Some(body)) = codec.decode(buf) {
                black_box(body);
                frames += 1;
            }
            frames
        });
}
