//! `decode_body` fed an arbitrary frame body.
//!
//! It must never panic. What it accepts must re-encode to something that decodes to the
//! same message, and a decoded `StateUpdate`'s `update_data`, spliced into a broadcast by
//! `state_broadcast_frame`, must come back byte for byte in a `StateBroadcast`, and be
//! readable by a Sova 0.1.x instance (`field.rs`).

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sova_relay_protocol::{
    decode_body, encode_frame, state_broadcast_frame, FrameCodec, Message, UpdateData,
};
use tokio_util::codec::Decoder;

mod field;

/// Splits a frame the relay built and decodes its body.
fn decode_frame(frame: Bytes) -> Message {
    let mut buf = BytesMut::from(&frame[..]);
    let body = FrameCodec::new(usize::MAX)
        .decode(&mut buf)
        .expect("the relay's own frame has a valid header")
        .expect("the relay's own frame is complete");
    assert!(buf.is_empty(), "bytes after the relay's own frame");
    decode_body(body).unwrap_or_else(|err| panic!("re-encoded frame fails to decode: {err}"))
}

/// The broadcast of a decoded update carries its `update_data` verbatim, and instances in
/// the field can read it.
fn check_splice(timestamp: u64, update_data: &UpdateData) {
    let payload = update_data
        .to_vec()
        .expect("accepted update_data has a payload");
    for name in [
        "bob",
        "a-name-long-enough-for-a-str8-header-to-be-used-here",
    ] {
        let frame = state_broadcast_frame(name, timestamp, update_data);
        match field::must_decode(&frame[4..], "broadcast") {
            field::FieldMessage::StateBroadcast { update_data, .. } => {
                assert_eq!(update_data, payload, "a field instance reads other bytes")
            }
            other => panic!("a field instance reads the broadcast as {other:?}"),
        }
        match decode_frame(frame) {
            Message::StateBroadcast {
                source_instance_name,
                timestamp: t,
                update_data: spliced,
                ..
            } => {
                assert_eq!(source_instance_name, name);
                assert_eq!(t, timestamp);
                assert_eq!(spliced.raw(), update_data.raw(), "update_data changed");
                assert_eq!(spliced.to_vec().ok().as_deref(), Some(&payload[..]));
            }
            other => panic!("broadcast decoded as {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode_body(Bytes::copy_from_slice(data)) else {
        return;
    };
    if let Message::StateUpdate {
        timestamp,
        update_data,
        ..
    }
    | Message::StateBroadcast {
        timestamp,
        update_data,
        ..
    } = &message
    {
        check_splice(*timestamp, update_data);
    }
    assert_eq!(decode_frame(encode_frame(&message)), message);
});
