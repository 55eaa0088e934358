use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::{raw, Message, ProtocolError, UpdateData, FRAME_HEADER_LEN, MAX_NESTING_DEPTH};

/// Splits a byte stream into frame bodies: `[u32 big-endian N][N bytes]`.
///
/// The header is checked before the body is buffered, so an oversized announcement costs
/// nothing, and buffer space grows only as body bytes actually arrive.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_len: usize,
}

/// How much buffer to reserve ahead of bytes that have not arrived yet.
const READ_AHEAD: usize = 64 * 1024;

impl FrameCodec {
    /// A codec accepting bodies of up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self { max_len }
    }

    /// Changes the largest accepted body, e.g. once an instance has registered.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// The largest accepted body.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let Some(header) = src.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::ZeroLength);
        }
        if len > self.max_len {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        let frame_len = FRAME_HEADER_LEN + len;
        if src.len() < frame_len {
            src.reserve((frame_len - src.len()).min(READ_AHEAD));
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }
}

/// Decodes one frame body. Accepts fields in any order, unknown fields, missing `Option`
/// fields and the compact array form of a struct; `update_data` keeps its raw bytes.
pub fn decode_body(body: Bytes) -> Result<Message, ProtocolError> {
    // The hot path: a StateUpdate in its usual form, checked and read in one pass.
    if let Some((id, timestamp, span)) = raw::state_update_fields(&body) {
        return Ok(Message::StateUpdate {
            source_instance_id: uuid::Uuid::from_bytes(id),
            timestamp,
            update_data: UpdateData::from_checked_raw(body.slice(span))?,
        });
    }
    raw::check_body(&body, MAX_NESTING_DEPTH)?;
    let mut message: Message =
        rmp_serde::from_slice(&body).map_err(|err| ProtocolError::Invalid(err.to_string()))?;
    match &mut message {
        Message::StateUpdate { update_data, .. } | Message::StateBroadcast { update_data, .. } => {
            let span = raw::field_span(&body, "update_data", 2)?;
            *update_data = UpdateData::from_checked_raw(body.slice(span))?;
        }
        Message::SessionSnapshot { data, .. } => {
            let span = raw::field_span(&body, "data", 1)?;
            *data = UpdateData::from_checked_raw(body.slice(span))?;
        }
        _ => {}
    }
    Ok(message)
}

/// Appends the MessagePack body of `message` to `dst` (named fields, as instances expect).
pub fn encode_body(message: &Message, dst: &mut BytesMut) {
    match message {
        Message::StateUpdate {
            source_instance_id,
            timestamp,
            update_data,
        } => write_state_message(
            dst,
            "StateUpdate",
            ("source_instance_id", |dst| {
                put_bin(dst, source_instance_id.as_bytes())
            }),
            *timestamp,
            update_data,
            None,
        ),
        Message::StateBroadcast {
            source_instance_name,
            timestamp,
            update_data,
            seq,
        } => write_state_message(
            dst,
            "StateBroadcast",
            ("source_instance_name", |dst| {
                put_str(dst, source_instance_name)
            }),
            *timestamp,
            update_data,
            *seq,
        ),
        // Written by hand, like the state messages, so `data` goes out exactly as it arrived:
        // serde would re-encode it (an int8 `d0 12` in the array would become `12`).
        Message::SessionSnapshot { seq, data } => {
            dst.put_u8(0x81);
            put_str(dst, "SessionSnapshot");
            dst.put_u8(0x82);
            put_str(dst, "seq");
            put_uint(dst, *seq);
            put_str(dst, "data");
            dst.put_slice(data.raw());
        }
        other => {
            // Writing to memory cannot fail and every field type is serializable, so an
            // error here would be a bug in the types above.
            let written = rmp_serde::encode::write_named(&mut dst.writer(), other);
            debug_assert!(written.is_ok(), "encoding {other:?}: {written:?}");
        }
    }
}

/// Encodes `message` as a complete frame, length prefix included.
pub fn encode_frame(message: &Message) -> Bytes {
    let mut frame = BytesMut::with_capacity(64);
    frame.put_u32(0);
    encode_body(message, &mut frame);
    finish_frame(frame)
}

/// Builds the `StateBroadcast` frame for an update once, with `update_data` spliced in
/// verbatim, so every recipient can share the same bytes.
pub fn state_broadcast_frame(source_name: &str, timestamp: u64, update_data: &UpdateData) -> Bytes {
    let mut frame = BytesMut::with_capacity(64 + source_name.len() + update_data.raw().len());
    frame.put_u32(0);
    write_state_message(
        &mut frame,
        "StateBroadcast",
        ("source_instance_name", |dst| put_str(dst, source_name)),
        timestamp,
        update_data,
        None,
    );
    finish_frame(frame)
}

/// A `StateBroadcast` frame encoded up to its `seq`, which is appended last: the costly part
/// (copying the payload) happens before the sequence number is known, so whoever assigns
/// sequence numbers under a lock only appends a few bytes.
pub struct PendingBroadcast {
    frame: BytesMut,
}

impl PendingBroadcast {
    /// Encodes everything but `seq`.
    pub fn new(source_name: &str, timestamp: u64, update_data: &UpdateData) -> Self {
        let mut frame = BytesMut::with_capacity(80 + source_name.len() + update_data.raw().len());
        frame.put_u32(0);
        frame.put_u8(0x81);
        put_str(&mut frame, "StateBroadcast");
        frame.put_u8(0x84);
        put_str(&mut frame, "source_instance_name");
        put_str(&mut frame, source_name);
        put_str(&mut frame, "timestamp");
        put_uint(&mut frame, timestamp);
        put_str(&mut frame, "update_data");
        frame.put_slice(update_data.raw());
        PendingBroadcast { frame }
    }

    /// The encoded body so far (without the length prefix and `seq`), without a copy, to
    /// carry the broadcast to another relay node, which rebuilds it with
    /// [`PendingBroadcast::from_body`].
    pub fn into_body(self) -> Bytes {
        self.frame.freeze().slice(FRAME_HEADER_LEN..)
    }

    /// A broadcast that [`PendingBroadcast::body`] produced on this or another relay node.
    pub fn from_body(body: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(FRAME_HEADER_LEN + body.len() + 12);
        frame.put_u32(0);
        frame.put_slice(body);
        PendingBroadcast { frame }
    }

    /// Seals the frame without `seq`: the original `StateBroadcast`, for a broadcast that
    /// has no place in the session's order (a cluster node cut off from the others).
    pub fn finish_unsequenced(mut self) -> Bytes {
        // The map header after the variant name: four fields with `seq`, three without.
        const MAP_HEADER_AT: usize = FRAME_HEADER_LEN + 1 + 1 + "StateBroadcast".len();
        if self.frame.get(MAP_HEADER_AT) == Some(&0x84) {
            self.frame[MAP_HEADER_AT] = 0x83;
        }
        finish_frame(self.frame)
    }

    /// Appends `seq` and seals the frame.
    pub fn finish(mut self, seq: u64) -> Bytes {
        put_str(&mut self.frame, "seq");
        put_uint(&mut self.frame, seq);
        finish_frame(self.frame)
    }
}

fn finish_frame(mut frame: BytesMut) -> Bytes {
    let body_len = frame.len() - FRAME_HEADER_LEN;
    let prefix = u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes();
    frame[..FRAME_HEADER_LEN].copy_from_slice(&prefix);
    frame.freeze()
}

fn write_state_message(
    dst: &mut BytesMut,
    variant: &str,
    (source_key, write_source): (&str, impl FnOnce(&mut BytesMut)),
    timestamp: u64,
    update_data: &UpdateData,
    seq: Option<u64>,
) {
    dst.put_u8(0x81);
    put_str(dst, variant);
    dst.put_u8(if seq.is_some() { 0x84 } else { 0x83 });
    put_str(dst, source_key);
    write_source(dst);
    put_str(dst, "timestamp");
    put_uint(dst, timestamp);
    put_str(dst, "update_data");
    dst.put_slice(update_data.raw());
    if let Some(seq) = seq {
        put_str(dst, "seq");
        put_uint(dst, seq);
    }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    let len = s.len();
    if len < 32 {
        dst.put_u8(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        dst.put_slice(&[0xd9, len]);
    } else if let Ok(len) = u16::try_from(len) {
        dst.put_u8(0xda);
        dst.put_u16(len);
    } else {
        dst.put_u8(0xdb);
        dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
    dst.put_slice(s.as_bytes());
}

fn put_bin(dst: &mut BytesMut, bytes: &[u8; 16]) {
    dst.put_slice(&[0xc4, 16]);
    dst.put_slice(bytes);
}

/// Smallest MessagePack uint encoding, as rmp-serde writes it.
fn put_uint(dst: &mut BytesMut, n: u64) {
    if n < 0x80 {
        dst.put_u8(n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        dst.put_slice(&[0xcc, n]);
    } else if let Ok(n) = u16::try_from(n) {
        dst.put_u8(0xcd);
        dst.put_u16(n);
    } else if let Ok(n) = u32::try_from(n) {
        dst.put_u8(0xce);
        dst.put_u32(n);
    } else {
        dst.put_u8(0xcf);
        dst.put_u64(n);
    }
}
