//! `FrameCodec` fed an arbitrary byte stream in arbitrary chunks.
//!
//! Input: `[max_len: u16 BE][chunk seed: u8][stream...]`. The stream is decoded twice, once
//! in one piece and once in chunks whose sizes come from the seed; both must yield the
//! same frames and the same error, every frame must be exactly what the stream holds at
//! that place, and the buffer must never grow much beyond what has actually arrived.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sova_relay_protocol::{FrameCodec, ProtocolError, FRAME_HEADER_LEN};
use tokio_util::codec::Decoder;

/// What decoding a stream produced: the frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Bytes>,
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Input ran out; this many bytes were left undecoded (a partial frame).
    Partial(usize),
    TooLarge {
        len: usize,
        max: usize,
    },
    ZeroLength,
}

fn decode_chunked(stream: &[u8], max_len: usize, mut chunk_seed: u8) -> Outcome {
    let mut codec = FrameCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        // Chunk sizes from 1 to 256, walking through the seed's bits.
        chunk_seed = chunk_seed.rotate_left(3).wrapping_add(0x9d);
        let chunk = usize::from(chunk_seed) + 1;
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    return Outcome {
                        frames,
                        end: end_of(err),
                    }
                }
            }
        }
        // Space is reserved only for bytes on their way, never for the whole announcement.
        let bound = 2 * (fed + 64 * 1024) + 4096;
        assert!(
            buf.capacity() <= bound,
            "buffer capacity {} after {fed} bytes fed (max_len {max_len})",
            buf.capacity()
        );
    }
    Outcome {
        frames,
        end: End::Partial(buf.len()),
    }
}

fn end_of(err: ProtocolError) -> End {
    match err {
        ProtocolError::TooLarge { len, max } => End::TooLarge { len, max },
        ProtocolError::ZeroLength => End::ZeroLength,
        other => panic!("a frame codec over memory failed with {other:?}"),
    }
}

/// The specification, written as plainly as possible.
fn reference(stream: &[u8], max_len: usize) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = stream.get(at..at + FRAME_HEADER_LEN) else {
            return Outcome {
                frames,
                end: End::Partial(stream.len() - at),
            };
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            return Outcome {
                frames,
                end: End::ZeroLength,
            };
        }
        if len > max_len {
            return Outcome {
                frames,
                end: End::TooLarge { len, max: max_len },
            };
        }
        let start = at + FRAME_HEADER_LEN;
        let Some(body) = stream.get(start..start + len) else {
            return Outcome {
                frames,
                end: End::Partial(stream.len() - at),
            };
        };
        frames.push(Bytes::copy_from_slice(body));
        at = start + len;
    }
}

fuzz_target!(|data: &[u8]| {
    let [hi, lo, chunk_seed, stream @ ..] = data else {
        return;
    };
    let max_len = usize::from(u16::from_be_bytes([*hi, *lo])).max(1);
    let expected = reference(stream, max_len);
    assert_eq!(decode_chunked(stream, max_len, *chunk_seed), expected);
    assert_eq!(decode_chunked(stream, max_len, 0xff), expected);
    for frame in &expected.frames {
        assert!(!frame.is_empty() && frame.len() <= max_len);
    }
});
