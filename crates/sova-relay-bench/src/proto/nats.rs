//! The NATS client protocol, spoken directly: `CONNECT` with `echo: false` (a publisher
//! does not receive its own messages, as on the relay), `SUB` to the group's subject,
//! `PUB` out, `MSG` in. A `PING`/`PONG` after `SUB` proves the subscription is in place
//! before anyone publishes.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect_tcp, find_crlf, invalid, ClientSpec, Parser, Reader, Sink, TcpReader};
use super::{TcpWriter, Writer, MIN_READ};

pub(crate) async fn connect(
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
) -> io::Result<(Reader, Writer)> {
    let (mut read_half, mut write_half) = connect_tcp(addr).await?.into_split();
    let subject = subject(spec.group);
    let mut hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"rust\",\
         \"version\":\"0.1.0\",\"protocol\":1,\"name\":\"{}\"}}\r\n",
        spec.name
    );
    if spec.subscribe {
        hello.push_str(&format!("SUB {subject} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    write_half.write_all(hello.as_bytes()).await?;
    // INFO, then (verbose off) nothing until our PONG, unless something went wrong.
    let mut buf = BytesMut::with_capacity(MIN_READ);
    loop {
        let Some(end) = find_crlf(&buf, 0) else {
            buf.reserve(MIN_READ);
            if read_half.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            continue;
        };
        let line = buf.split_to(end + 2);
        let line = &line[..end];
        if line == b"PONG" {
            break;
        }
        if line.starts_with(b"-ERR") {
            return Err(io::Error::other(String::from_utf8_lossy(line).into_owned()));
        }
    }
    let header = format!("PUB {subject} {}\r\n", spec.payload.len());
    let mut message = header.clone().into_bytes();
    message.extend_from_slice(spec.payload);
    message.extend_from_slice(b"\r\n");
    let reader = Reader::Nats(TcpReader::new(read_half, buf, NatsParser));
    let writer = Writer::Tcp(TcpWriter {
        half: write_half,
        message,
        offset: header.len(),
    });
    Ok((reader, writer))
}

fn subject(group: &str) -> String {
    format!("bench.{group}")
}

/// Server-to-client NATS messages: `MSG` delivers a payload, `-ERR` is counted, the rest
/// (`PING`, `PONG`, `+OK`, `INFO`) is skipped. A server `PING` goes unanswered: NATS
/// pings every two minutes and drops a client after two unanswered ones, longer than any
/// scenario keeps a connection.
pub(crate) struct NatsParser;

impl Parser for NatsParser {
    fn parse(&mut self, buf: &mut BytesMut, sink: &mut impl Sink) -> io::Result<usize> {
        loop {
            let Some(end) = find_crlf(buf, 0) else {
                return Ok(1);
            };
            let line = &buf[..end];
            if line.starts_with(b"MSG ") {
                let size = line
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                    .ok_or_else(|| invalid("MSG without a size"))?;
                let start = end + 2;
                let total = start + size + 2;
                if buf.len() < total {
                    return Ok(total - buf.len());
                }
                sink.payload(&buf[start..start + size]);
                buf.advance(total);
                continue;
            }
            if line.starts_with(b"-ERR") {
                sink.server_error(&String::from_utf8_lossy(line));
            }
            buf.advance(end + 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_sink::Recorded;

    #[test]
    fn messages_errors_and_partial_payloads() {
        let mut buf = BytesMut::from(
            &b"INFO {}\r\nMSG bench.g0 1 5\r\nhello\r\nPING\r\n-ERR 'Slow Consumer'\r\n\
               MSG bench.g0 1 reply.to 3\r\nabc\r\nMSG bench.g0 1 10\r\n12345"[..],
        );
        let mut sink = Recorded::default();
        let want = NatsParser.parse(&mut buf, &mut sink).unwrap();
        assert_eq!(sink.payloads, vec![b"hello".to_vec(), b"abc".to_vec()]);
        assert_eq!(sink.errors, vec!["-ERR 'Slow Consumer'"]);
        assert_eq!(want, 7);
        assert!(buf.starts_with(b"MSG bench.g0 1 10\r\n"));
    }
}
