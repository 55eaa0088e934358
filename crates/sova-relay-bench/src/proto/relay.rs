//! The relay's framed TCP protocol: `RegisterInstance` with the group as session token,
//! `StateUpdate`s out, `StateBroadcast`s in. The payload travels as a MessagePack bin in
//! `update_data`, which the relay forwards verbatim; a receiver walks the broadcast's few
//! fields to find it instead of decoding the whole body. The frames the bench sends are
//! encoded here by hand, so the bench does not depend on the fields the protocol crate's
//! `Message` grows (extensions), only on the wire format.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use sova_relay_protocol::{decode_body, Message, FRAME_HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use uuid::Uuid;

use super::{connect_tcp, invalid, ClientSpec, Parser, Reader, Sink, TcpReader, MIN_READ};
use super::{TcpWriter, Writer};

/// Start of every `StateBroadcast` body: `{"StateBroadcast": ...`.
const BROADCAST_PREFIX: &[u8] = b"\x81\xaeStateBroadcast";
/// Start of every `Error` body.
const ERROR_PREFIX: &[u8] = b"\x81\xa5Error";
/// Largest frame the bench accepts (a `RegistrationResponse` can list many members).
const MAX_FRAME: usize = 16 << 20;

pub(crate) async fn connect(
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
) -> io::Result<(Reader, Writer)> {
    let (mut read_half, mut write_half) = connect_tcp(addr).await?.into_split();
    write_half.write_all(&register_frame(spec)).await?;
    let mut buf = BytesMut::new();
    let reply = read_frame(&mut read_half, &mut buf).await?;
    let reply = decode_body(reply).map_err(|err| invalid(err.to_string()))?;
    let id = registered_id(Some(reply))?;
    let parser = FrameParser {
        payload_len: spec.payload.len(),
    };
    let reader = Reader::Relay(TcpReader::new(read_half, buf, parser));
    let (message, offset) = state_update(id, spec.payload);
    let writer = Writer::Tcp(TcpWriter {
        half: write_half,
        message,
        offset,
    });
    Ok((reader, writer))
}

/// The id a `RegistrationResponse` assigned, or why registration failed.
pub(crate) fn registered_id(reply: Option<Message>) -> io::Result<Uuid> {
    match reply {
        Some(Message::RegistrationResponse {
            success: true,
            assigned_id: Some(id),
            ..
        }) => Ok(id),
        Some(Message::Error { message }) => Err(io::Error::other(message)),
        other => Err(invalid(format!(
            "unexpected reply to RegisterInstance: {other:?}"
        ))),
    }
}

/// `RegisterInstance` for this client, its group as session token.
pub(crate) fn register_frame(spec: &ClientSpec<'_>) -> Vec<u8> {
    frames::register(spec.name, spec.sova_version, Some(spec.group))
}

/// The `StateUpdate` frame for `payload` and where the payload starts in it.
pub(crate) fn state_update(id: Uuid, payload: &[u8]) -> (Vec<u8>, usize) {
    let frame = frames::state_update(id, payload);
    let offset = frame.len() - payload.len();
    (frame, offset)
}

/// Hands the body of a relay message to `sink`: broadcasts as payloads, errors as text,
/// anything else (presence, disconnect notices) ignored.
pub(crate) fn handle_body(body: &[u8], payload_len: usize, sink: &mut impl Sink) {
    if body.starts_with(BROADCAST_PREFIX) {
        match broadcast_payload(body, payload_len) {
            Some(payload) => sink.payload(payload),
            None => sink.malformed(),
        }
    } else if body.starts_with(ERROR_PREFIX) {
        match decode_body(Bytes::copy_from_slice(body)) {
            Ok(Message::Error { message }) => sink.server_error(&message),
            _ => sink.server_error("undecodable Error message"),
        }
    }
}

/// The bytes of the `update_data` bin of a broadcast body, if it is `payload_len` long.
fn broadcast_payload(body: &[u8], payload_len: usize) -> Option<&[u8]> {
    let mut cursor = Cursor {
        buf: body,
        pos: BROADCAST_PREFIX.len(),
    };
    let fields = match cursor.byte()? {
        marker @ 0x80..=0x8f => usize::from(marker & 0x0f),
        _ => return None,
    };
    for _ in 0..fields {
        let key = cursor.str()?;
        if key == b"update_data" {
            let len = match cursor.byte()? {
                0xc4 => cursor.uint(1)?,
                0xc5 => cursor.uint(2)?,
                0xc6 => cursor.uint(4)?,
                _ => return None,
            };
            return (len == payload_len).then(|| cursor.take(len)).flatten();
        }
        cursor.skip(2)?;
    }
    None
}

/// Just enough MessagePack to walk a broadcast's fields.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn uint(&mut self, width: usize) -> Option<usize> {
        Some(
            self.take(width)?
                .iter()
                .fold(0usize, |n, &b| (n << 8) | usize::from(b)),
        )
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            marker @ 0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.uint(1)?,
            0xda => self.uint(2)?,
            0xdb => self.uint(4)?,
            _ => return None,
        };
        self.take(len)
    }

    /// Skips one value, descending at most `depth` levels into arrays and maps.
    fn skip(&mut self, depth: usize) -> Option<()> {
        let marker = self.byte()?;
        let (items, len) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * usize::from(marker & 0x0f), 0),
            0x90..=0x9f => (usize::from(marker & 0x0f), 0),
            0xa0..=0xbf => (0, usize::from(marker & 0x1f)),
            0xc4 | 0xd9 => (0, self.uint(1)?),
            0xc5 | 0xda => (0, self.uint(2)?),
            0xc6 | 0xdb => (0, self.uint(4)?),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xca | 0xce | 0xd2 => (0, 4),
            0xcb | 0xcf | 0xd3 => (0, 8),
            0xdc => (self.uint(2)?, 0),
            0xdd => (self.uint(4)?, 0),
            0xde => (2 * self.uint(2)?, 0),
            0xdf => (2 * self.uint(4)?, 0),
            _ => return None,
        };
        self.take(len)?;
        if items > 0 {
            let depth = depth.checked_sub(1)?;
            for _ in 0..items {
                self.skip(depth)?;
            }
        }
        Some(())
    }
}

/// The frames the bench sends, encoded by hand (named fields, as `rmp_serde` writes them).
pub mod frames {
    use uuid::Uuid;

    /// A `RegisterInstance` frame, length prefix included.
    pub fn register(name: &str, version: &str, session_token: Option<&str>) -> Vec<u8> {
        let mut body = vec![0x81];
        put_str(&mut body, "RegisterInstance");
        body.push(0x83);
        put_str(&mut body, "instance_name");
        put_str(&mut body, name);
        put_str(&mut body, "version");
        put_str(&mut body, version);
        put_str(&mut body, "session_token");
        match session_token {
            Some(token) => put_str(&mut body, token),
            None => body.push(0xc0),
        }
        frame(body)
    }

    /// A `StateUpdate` frame from `id` with `payload` as a bin `update_data` (last).
    pub fn state_update(id: Uuid, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0x81];
        put_str(&mut body, "StateUpdate");
        body.push(0x83);
        put_str(&mut body, "source_instance_id");
        body.extend_from_slice(&[0xc4, 16]);
        body.extend_from_slice(id.as_bytes());
        put_str(&mut body, "timestamp");
        body.push(0);
        put_str(&mut body, "update_data");
        match (u8::try_from(payload.len()), u16::try_from(payload.len())) {
            (Ok(len), _) => body.extend_from_slice(&[0xc4, len]),
            (_, Ok(len)) => {
                body.push(0xc5);
                body.extend_from_slice(&len.to_be_bytes());
            }
            _ => {
                body.push(0xc6);
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                body.extend_from_slice(&len.to_be_bytes());
            }
        }
        body.extend_from_slice(payload);
        frame(body)
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        match u8::try_from(s.len()) {
            Ok(len) if len < 32 => out.push(0xa0 | len),
            Ok(len) => out.extend_from_slice(&[0xd9, len]),
            Err(_) => {
                out.push(0xda);
                let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(s.as_bytes());
    }

    fn frame(body: Vec<u8>) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }
}

/// Calls `each` with every complete frame body at the front of `buf`, then returns how
/// many more bytes the next frame needs.
fn split_frames(buf: &mut BytesMut, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
    loop {
        let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(FRAME_HEADER_LEN - buf.len());
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(invalid(format!("frame of {len} bytes")));
        }
        let frame_len = FRAME_HEADER_LEN + len;
        if buf.len() < frame_len {
            return Ok(frame_len - buf.len());
        }
        each(&buf[FRAME_HEADER_LEN..frame_len]);
        buf.advance(frame_len);
    }
}

/// Length-prefixed relay frames; broadcasts carry payloads of a known length.
pub(crate) struct FrameParser {
    pub(crate) payload_len: usize,
}

impl Parser for FrameParser {
    fn parse(&mut self, buf: &mut BytesMut, sink: &mut impl Sink) -> io::Result<usize> {
        let payload_len = self.payload_len;
        split_frames(buf, |body| handle_body(body, payload_len, sink))
    }
}

/// Reads one whole frame body (a set-up reply); bytes after it stay in `buf`.
pub(crate) async fn read_frame(half: &mut OwnedReadHalf, buf: &mut BytesMut) -> io::Result<Bytes> {
    loop {
        if let Some(header) = buf.get(..FRAME_HEADER_LEN) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len == 0 || len > MAX_FRAME {
                return Err(invalid(format!("frame of {len} bytes")));
            }
            if buf.len() >= FRAME_HEADER_LEN + len {
                buf.advance(FRAME_HEADER_LEN);
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
        } else {
            buf.reserve(MIN_READ);
        }
        if half.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use sova_relay_protocol::{encode_frame, state_broadcast_frame, UpdateData};

    use super::*;
    use crate::proto::test_sink::Recorded;

    #[test]
    fn broadcasts_yield_their_payload_and_errors_their_text() {
        let payload: Vec<u8> = (0..=255).collect();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&state_broadcast_frame(
            "alice",
            7,
            &UpdateData::from_bin(&payload),
        ));
        buf.extend_from_slice(&encode_frame(&Message::error("Rate limit exceeded")));
        buf.extend_from_slice(&encode_frame(&Message::Ping { timestamp: 1 }));
        let partial = state_broadcast_frame("bob", 8, &UpdateData::from_bin(&payload));
        buf.extend_from_slice(&partial[..10]);
        let mut sink = Recorded::default();
        let want = FrameParser { payload_len: 256 }
            .parse(&mut buf, &mut sink)
            .unwrap();
        assert_eq!(sink.payloads, vec![payload]);
        assert_eq!(sink.errors, vec!["Rate limit exceeded"]);
        assert_eq!(want, partial.len() - 10);
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn a_payload_of_another_length_is_malformed() {
        let mut buf =
            BytesMut::from(&state_broadcast_frame("a", 1, &UpdateData::from_bin(&[1; 300]))[..]);
        let mut sink = Recorded::default();
        FrameParser { payload_len: 256 }
            .parse(&mut buf, &mut sink)
            .unwrap();
        assert_eq!(sink.malformed, 1);
    }

    #[test]
    fn a_field_after_update_data_is_skipped() {
        // StateBroadcast {source_instance_name: "a", timestamp: 1, update_data: bin, seq: 9}
        let mut body = b"\x81\xaeStateBroadcast\x84\xb4source_instance_name\xa1a\xa9timestamp\x01\xabupdate_data\xc4\x10".to_vec();
        body.extend_from_slice(&[5; 16]);
        body.extend_from_slice(b"\xa3seq\x09");
        let mut sink = Recorded::default();
        handle_body(&body, 16, &mut sink);
        assert_eq!(sink.payloads, vec![vec![5; 16]]);
    }

    #[test]
    fn the_register_frame_decodes() {
        let frame = frames::register("alice", "0.1.0", Some("g1"));
        match decode_body(Bytes::from(frame[4..].to_vec())).unwrap() {
            Message::RegisterInstance {
                instance_name,
                version,
                session_token,
                ..
            } => {
                assert_eq!(instance_name, "alice");
                assert_eq!(version, "0.1.0");
                assert_eq!(session_token.as_deref(), Some("g1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_state_update_template_places_the_payload_last() {
        let (frame, offset) = state_update(Uuid::nil(), &[9; 70_000]);
        assert_eq!(frame.len() - offset, 70_000);
        let message = decode_body(Bytes::from(frame[4..].to_vec())).unwrap();
        match message {
            Message::StateUpdate { update_data, .. } => {
                assert_eq!(update_data.to_vec().unwrap(), vec![9; 70_000]);
            }
            other => panic!("{other:?}"),
        }
    }
}
