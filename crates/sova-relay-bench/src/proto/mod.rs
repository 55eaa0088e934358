//! The four ways the bench talks to a server, each spoken directly on the socket with a
//! reused buffer per connection: the relay's framed TCP protocol, the relay over
//! WebSocket, the NATS text protocol and Redis' RESP3. A client is a [`Reader`] (its own
//! task) and a [`Writer`] (the publisher's task, or kept idle).

mod nats;
mod redis;
mod relay;
mod ws;

pub use relay::frames;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::payload::Stamp;

/// What the bench drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The Sova relay, framed TCP protocol.
    RelayTcp,
    /// The Sova relay, WebSocket transport (`/ws`).
    RelayWs,
    /// A NATS server (text protocol, `echo: false`).
    Nats,
    /// A Redis server (RESP3, PUBLISH/SUBSCRIBE on one connection).
    Redis,
}

impl Target {
    /// Short name used in tables and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Target::RelayTcp => "relay-tcp",
            Target::RelayWs => "relay-ws",
            Target::Nats => "nats",
            Target::Redis => "redis",
        }
    }

    /// Whether this is the Sova relay (over either transport).
    pub fn is_relay(self) -> bool {
        matches!(self, Target::RelayTcp | Target::RelayWs)
    }
}

/// Who one client is.
pub(crate) struct ClientSpec<'a> {
    /// Instance name (relay), connection name (NATS).
    pub name: &'a str,
    /// Session token (relay), subject (NATS) or channel (Redis) suffix.
    pub group: &'a str,
    /// Whether to subscribe (brokers only: a relay member always receives).
    pub subscribe: bool,
    /// The payload every message of this client carries (stamp rewritten per message).
    pub payload: &'a [u8],
    /// Version sent to the relay in `RegisterInstance`.
    pub sova_version: &'a str,
}

/// Longest a connection and its handshake or subscription may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects and registers/subscribes one client.
pub(crate) async fn connect(
    target: Target,
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
) -> io::Result<(Reader, Writer)> {
    let connecting = async {
        match target {
            Target::RelayTcp => relay::connect(addr, spec).await,
            Target::RelayWs => ws::connect(addr, spec).await,
            Target::Nats => nats::connect(addr, spec).await,
            Target::Redis => redis::connect(addr, spec).await,
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect/handshake timed out"))?
}

/// Receives what a reader parses.
pub(crate) trait Sink {
    /// A delivered message's payload.
    fn payload(&mut self, payload: &[u8]);
    /// An error the server sent (relay `Error`, NATS `-ERR`, Redis error reply).
    fn server_error(&mut self, text: &str);
    /// A message that looked like a delivery but could not be read.
    fn malformed(&mut self);
    /// A `PONG` (Redis set-up only).
    fn pong(&mut self) {}
}

/// Splits a byte stream into messages; what is left in the buffer is a partial message.
pub(crate) trait Parser {
    /// Consumes every complete message at the front of `buf`; returns how many more bytes
    /// the next message needs, at least (a hint for the next read).
    fn parse(&mut self, buf: &mut BytesMut, sink: &mut impl Sink) -> io::Result<usize>;
}

/// Reads of at least this much free space, so a read seldom comes back short.
const MIN_READ: usize = 4096;

/// The read half of a TCP client with its buffer and parser.
pub(crate) struct TcpReader<P> {
    half: OwnedReadHalf,
    buf: BytesMut,
    parser: P,
    want: usize,
}

impl<P: Parser> TcpReader<P> {
    fn new(half: OwnedReadHalf, buf: BytesMut, parser: P) -> Self {
        // Idle clients keep no buffer: it is allocated on the first read.
        let buf = if buf.is_empty() { BytesMut::new() } else { buf };
        Self {
            half,
            buf,
            parser,
            want: 0,
        }
    }

    /// One read, then every complete message in the buffer; `false` once the peer closed.
    async fn read(&mut self, sink: &mut impl Sink) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(self.want.max(MIN_READ));
        }
        if self.half.read_buf(&mut self.buf).await? == 0 {
            return Ok(false);
        }
        self.want = self.parser.parse(&mut self.buf, sink)?;
        Ok(true)
    }
}

/// Reads until `done` says the set-up exchange is complete (or the peer closes).
async fn read_until<P: Parser, S: Sink>(
    half: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    parser: &mut P,
    sink: &mut S,
    done: impl Fn(&S) -> bool,
) -> io::Result<()> {
    while !done(sink) {
        buf.reserve(MIN_READ);
        if half.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        parser.parse(buf, sink)?;
    }
    Ok(())
}

/// A client's receiving side.
pub(crate) enum Reader {
    /// Relay, framed TCP.
    Relay(TcpReader<relay::FrameParser>),
    /// Relay, WebSocket.
    Ws(ws::WsReader),
    /// NATS.
    Nats(TcpReader<nats::NatsParser>),
    /// Redis.
    Redis(TcpReader<redis::RespParser>),
}

impl Reader {
    /// Waits for data and hands every complete message to `sink`; `false` at end of stream.
    pub(crate) async fn read(&mut self, sink: &mut impl Sink) -> io::Result<bool> {
        match self {
            Reader::Relay(reader) => reader.read(sink).await,
            Reader::Ws(reader) => reader.read(sink).await,
            Reader::Nats(reader) => reader.read(sink).await,
            Reader::Redis(reader) => reader.read(sink).await,
        }
    }
}

/// A client's sending side: one prebuilt message whose stamp is rewritten per send.
pub(crate) enum Writer {
    /// Any TCP protocol.
    Tcp(TcpWriter),
    /// WebSocket.
    Ws(ws::WsWriter),
}

impl Writer {
    /// Sends one message carrying `stamp`.
    pub(crate) async fn publish(&mut self, stamp: Stamp) -> io::Result<()> {
        match self {
            Writer::Tcp(writer) => writer.publish(stamp).await,
            Writer::Ws(writer) => writer.publish(stamp).await,
        }
    }
}

/// The write half of a TCP client and the message it sends.
pub(crate) struct TcpWriter {
    half: OwnedWriteHalf,
    message: Vec<u8>,
    /// Where the payload starts in `message`.
    offset: usize,
}

impl TcpWriter {
    async fn publish(&mut self, stamp: Stamp) -> io::Result<()> {
        stamp.write(&mut self.message[self.offset..]);
        self.half.write_all(&self.message).await
    }
}

/// Connects with `TCP_NODELAY`, as every server here sets it on its side too.
async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Position of the `\r\n` ending the line that starts at `from`, if complete.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let newline = buf.get(from..)?.iter().position(|&b| b == b'\n')? + from;
    (newline > from && buf[newline - 1] == b'\r').then_some(newline - 1)
}

fn invalid(text: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text.into())
}

#[cfg(test)]
pub(crate) mod test_sink {
    //! A sink that records everything, for parser tests.

    /// Everything a parser reported.
    #[derive(Default, Debug)]
    pub(crate) struct Recorded {
        pub payloads: Vec<Vec<u8>>,
        pub errors: Vec<String>,
        pub malformed: usize,
        pub pongs: usize,
    }

    impl super::Sink for Recorded {
        fn payload(&mut self, payload: &[u8]) {
            self.payloads.push(payload.to_vec());
        }
        fn server_error(&mut self, text: &str) {
            self.errors.push(text.to_owned());
        }
        fn malformed(&mut self) {
            self.malformed += 1;
        }
        fn pong(&mut self) {
            self.pongs += 1;
        }
    }
}
