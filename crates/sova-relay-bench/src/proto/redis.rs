//! Redis pub/sub over RESP3 (`HELLO 3`), so one connection both subscribes and publishes,
//! like a relay instance or a NATS client. Redis has no "no echo" option: a client that
//! publishes to a channel it is subscribed to receives its own message, which the bench
//! drops by the publisher index in the stamp (Redis still does that work: see
//! BENCHMARKS.md).

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::{connect_tcp, find_crlf, invalid, read_until, ClientSpec, Parser, Reader, Sink};
use super::{TcpReader, TcpWriter, Writer};

/// Deepest nesting of aggregate replies the parser follows (`HELLO` answers a map of
/// arrays: depth 3).
const MAX_DEPTH: usize = 8;

pub(crate) async fn connect(
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
) -> io::Result<(Reader, Writer)> {
    let (mut read_half, mut write_half) = connect_tcp(addr).await?.into_split();
    let channel = channel(spec.group);
    let mut hello = command(&[b"HELLO", b"3"]);
    if spec.subscribe {
        hello.extend_from_slice(&command(&[b"SUBSCRIBE", channel.as_bytes()]));
    }
    hello.extend_from_slice(&command(&[b"PING"]));
    write_half.write_all(&hello).await?;
    let mut buf = BytesMut::new();
    let mut setup = SetupSink::default();
    read_until(&mut read_half, &mut buf, &mut RespParser, &mut setup, |s| {
        s.pong || s.error.is_some()
    })
    .await?;
    if let Some(error) = setup.error {
        return Err(io::Error::other(error));
    }
    let mut message = command_head(&[b"PUBLISH", channel.as_bytes()], spec.payload.len());
    let offset = message.len();
    message.extend_from_slice(spec.payload);
    message.extend_from_slice(b"\r\n");
    let reader = Reader::Redis(TcpReader::new(read_half, buf, RespParser));
    let writer = Writer::Tcp(TcpWriter {
        half: write_half,
        message,
        offset,
    });
    Ok((reader, writer))
}

fn channel(group: &str) -> String {
    format!("bench:{group}")
}

/// A RESP command of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP command whose last argument, `last_len` bytes, is appended by the caller
/// (followed by `\r\n`).
fn command_head(args: &[&[u8]], last_len: usize) -> Vec<u8> {
    let mut out = command(args);
    let count = format!("*{}\r\n", args.len());
    out.splice(
        ..count.len(),
        format!("*{}\r\n", args.len() + 1).into_bytes(),
    );
    out.extend_from_slice(format!("${last_len}\r\n").as_bytes());
    out
}

/// What set-up waits for: the `PONG` queued after `HELLO` and `SUBSCRIBE`.
#[derive(Default)]
struct SetupSink {
    pong: bool,
    error: Option<String>,
}

impl Sink for SetupSink {
    fn payload(&mut self, _: &[u8]) {}
    fn server_error(&mut self, text: &str) {
        self.error.get_or_insert_with(|| text.to_owned());
    }
    fn malformed(&mut self) {}
    fn pong(&mut self) {
        self.pong = true;
    }
}

/// RESP3 from the server: `message` pushes deliver payloads, error replies are counted,
/// `PONG` is reported, everything else (`PUBLISH` counts, `subscribe` pushes, the `HELLO`
/// map) is skipped.
pub(crate) struct RespParser;

impl Parser for RespParser {
    fn parse(&mut self, buf: &mut BytesMut, sink: &mut impl Sink) -> io::Result<usize> {
        loop {
            let Some(end) = next_value(buf, sink)? else {
                return Ok(1);
            };
            buf.advance(end);
        }
    }
}

/// Handles the value at the front of `buf`; returns its length once it is complete.
fn next_value(buf: &[u8], sink: &mut impl Sink) -> io::Result<Option<usize>> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        b'>' => push(buf, sink),
        b'+' => Ok(find_crlf(buf, 0).map(|end| {
            if &buf[1..end] == b"PONG" {
                sink.pong();
            }
            end + 2
        })),
        b'-' => Ok(find_crlf(buf, 0).map(|end| {
            sink.server_error(&String::from_utf8_lossy(&buf[1..end]));
            end + 2
        })),
        _ => skip(buf, 0, MAX_DEPTH),
    }
}

/// A push; `message` pushes (`>3 message channel payload`) deliver their payload.
fn push(buf: &[u8], sink: &mut impl Sink) -> io::Result<Option<usize>> {
    let Some((count, mut pos)) = header(buf, 0)? else {
        return Ok(None);
    };
    let Some((kind, next)) = bulk(buf, pos)? else {
        return Ok(None);
    };
    if count != 3 || &buf[kind.clone()] != b"message" {
        return skip(buf, 0, MAX_DEPTH);
    }
    pos = next;
    let Some((_channel, next)) = bulk(buf, pos)? else {
        return Ok(None);
    };
    let Some((payload, end)) = bulk(buf, next)? else {
        return Ok(None);
    };
    sink.payload(&buf[payload]);
    Ok(Some(end))
}

/// The number after the type byte of the line at `pos`, and where the line ends.
fn header(buf: &[u8], pos: usize) -> io::Result<Option<(i64, usize)>> {
    let Some(end) = find_crlf(buf, pos) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[pos + 1..end]).map_err(|_| invalid("RESP header"))?;
    let n = text
        .parse()
        .map_err(|_| invalid(format!("RESP header {text:?}")))?;
    Ok(Some((n, end + 2)))
}

/// A bulk string at `pos`: its bytes and where the next value starts.
fn bulk(buf: &[u8], pos: usize) -> io::Result<Option<(std::ops::Range<usize>, usize)>> {
    if buf.get(pos).is_some_and(|&b| b != b'$') {
        return Err(invalid("expected a bulk string"));
    }
    let Some((len, start)) = header(buf, pos)? else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| invalid("null bulk string"))?;
    let end = start + len;
    Ok((buf.len() >= end + 2).then_some((start..end, end + 2)))
}

/// Skips one complete value of any type; `None` while incomplete.
fn skip(buf: &[u8], pos: usize, depth: usize) -> io::Result<Option<usize>> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let depth = depth
        .checked_sub(1)
        .ok_or_else(|| invalid("RESP nested too deep"))?;
    match kind {
        b'+' | b'-' | b':' | b',' | b'_' | b'#' | b'(' => {
            Ok(find_crlf(buf, pos).map(|end| end + 2))
        }
        b'$' | b'!' | b'=' => {
            let Some((len, start)) = header(buf, pos)? else {
                return Ok(None);
            };
            let Ok(len) = usize::try_from(len) else {
                return Ok(Some(start)); // RESP2 null bulk string: `$-1`
            };
            Ok((buf.len() >= start + len + 2).then_some(start + len + 2))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some((count, mut next)) = header(buf, pos)? else {
                return Ok(None);
            };
            let mut items = usize::try_from(count).unwrap_or(0);
            if matches!(kind, b'%' | b'|') {
                items *= 2;
            }
            for _ in 0..items {
                match skip(buf, next, depth)? {
                    Some(end) => next = end,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute precedes the value it describes.
                return skip(buf, next, depth);
            }
            Ok(Some(next))
        }
        other => Err(invalid(format!("unknown RESP type byte {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_sink::Recorded;

    #[test]
    fn pushes_replies_and_errors() {
        let mut buf = BytesMut::from(
            &b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nmodes\r\n*0\r\n\
               >3\r\n$9\r\nsubscribe\r\n$8\r\nbench:g0\r\n:1\r\n+PONG\r\n:19\r\n\
               >3\r\n$7\r\nmessage\r\n$8\r\nbench:g0\r\n$5\r\nhello\r\n\
               -ERR unknown command\r\n>3\r\n$7\r\nmessage\r\n$8\r\nbench:g0\r\n$5\r\nhel"[..],
        );
        let mut sink = Recorded::default();
        RespParser.parse(&mut buf, &mut sink).unwrap();
        assert_eq!(sink.payloads, vec![b"hello".to_vec()]);
        assert_eq!(sink.errors, vec!["ERR unknown command"]);
        assert_eq!(sink.pongs, 1);
        assert!(buf.starts_with(b">3\r\n$7\r\nmessage"));
    }

    #[test]
    fn the_publish_command_ends_with_the_payload() {
        let mut message = command_head(&[b"PUBLISH", b"bench:g0"], 5);
        message.extend_from_slice(b"hello\r\n");
        assert_eq!(
            message,
            b"*3\r\n$7\r\nPUBLISH\r\n$8\r\nbench:g0\r\n$5\r\nhello\r\n".to_vec()
        );
    }
}
