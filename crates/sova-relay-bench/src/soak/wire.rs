//! One connection to the relay as the soak's clients use it, framed TCP or WebSocket
//! (`GET /ws`, one message body per binary message): register (fresh or resuming), send
//! frames, read whole messages, and leave by a close (FIN, or a WebSocket close) or by a
//! reset.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use sova_relay_protocol::{
    decode_body, encode_frame, FrameCodec, Message, ResumeRequest, UpdateData, FRAME_HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::FramedRead;
use uuid::Uuid;

/// The Sova version every soak client registers with.
pub const VERSION: &str = "0.1.0";
/// Largest frame a soak client accepts from the relay.
const MAX_FRAME: usize = 16 << 20;
/// Longest a registration may take.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a registration asks for.
pub struct Join<'a> {
    /// Instance name.
    pub name: &'a str,
    /// Session token.
    pub session: &'a str,
    /// Capabilities to ask for (none: an old-style client).
    pub capabilities: &'a [&'a str],
    /// Where a previous connection left off.
    pub resume: Option<ResumeRequest>,
}

/// What the `RegistrationResponse` said.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The id assigned.
    pub id: Uuid,
    /// The session's epoch (0 without capabilities).
    pub epoch: u64,
    /// `seq` of the session's latest broadcast at registration.
    pub seq: u64,
    /// The secret that resumes this registration.
    pub secret: Option<String>,
    /// `ok` or `resync_required` for a resume.
    pub resumed: Option<String>,
    /// The other members of the session.
    pub members: Vec<Uuid>,
}

/// How a client reaches the relay: framed or WebSocket (`GET /ws`), each in the clear or
/// inside TLS; the relay's `transport` label for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Length-prefixed frames on TCP: `tcp`.
    Tcp,
    /// Frames inside TLS: `tls`.
    Tls,
    /// WebSocket: `websocket`.
    WebSocket,
    /// WebSocket inside TLS: `wss`.
    WebSocketTls,
}

impl Transport {
    /// Every transport, as the relay labels them.
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::WebSocket,
        Transport::WebSocketTls,
    ];

    /// The relay's `transport` label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::WebSocket => "websocket",
            Transport::WebSocketTls => "wss",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::WebSocketTls)
    }
}

/// A byte stream to the relay: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type Stream = Box<dyn Io>;

/// The framed reading half of a connection.
pub type FrameReader = FramedRead<ReadHalf<Stream>, FrameCodec>;
/// The writing half of a framed connection.
pub type FrameWriter = WriteHalf<Stream>;

/// A registered connection.
pub struct Conn {
    link: Link,
    /// The same socket (a duplicated descriptor), to reset it whatever runs on top.
    socket: socket2::Socket,
}

enum Link {
    Framed {
        frames: FrameReader,
        writer: FrameWriter,
    },
    WebSocket(Box<WebSocketStream<Stream>>),
}

/// Connects, with `TCP_NODELAY`; `rcvbuf` shrinks the receive buffer (slow consumers).
pub async fn connect(addr: SocketAddr, rcvbuf: Option<u32>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The `RegisterInstance` frame for `join`.
pub fn register_frame(join: &Join<'_>, version: &str) -> Bytes {
    encode_frame(&Message::RegisterInstance {
        instance_name: join.name.to_owned(),
        version: version.to_owned(),
        session_token: Some(join.session.to_owned()),
        capabilities: (!join.capabilities.is_empty())
            .then(|| join.capabilities.iter().map(|c| (*c).to_owned()).collect()),
        resume: join.resume.clone(),
    })
}

fn framed(stream: Stream, socket: socket2::Socket) -> Conn {
    let (reader, writer) = tokio::io::split(stream);
    Conn {
        link: Link::Framed {
            frames: FramedRead::new(reader, FrameCodec::new(MAX_FRAME)),
            writer,
        },
        socket,
    }
}

/// Sends the registration on `conn` and reads the answer.
async fn register(
    mut conn: Conn,
    join: &Join<'_>,
) -> io::Result<Result<(Conn, Registered), String>> {
    conn.send(&register_frame(join, VERSION)).await?;
    let reply = tokio::time::timeout(REGISTER_TIMEOUT, conn.next())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no RegistrationResponse"))?;
    match reply {
        Some(Ok(Message::RegistrationResponse {
            success: true,
            assigned_id: Some(id),
            current_instances,
            epoch,
            seq,
            resume_secret,
            resumed,
            ..
        })) => {
            let registered = Registered {
                id,
                epoch: epoch.unwrap_or(0),
                seq: seq.unwrap_or(0),
                secret: resume_secret,
                resumed,
                members: current_instances.iter().map(|i| i.id).collect(),
            };
            Ok(Ok((conn, registered)))
        }
        Some(Ok(Message::Error { message })) => Ok(Err(message)),
        Some(Ok(other)) => Ok(Err(format!("unexpected reply {}", other.kind()))),
        Some(Err(err)) => Err(err),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Connects over framed TCP and registers: the connection, or the relay's `Error` text.
pub async fn join(
    addr: SocketAddr,
    join: &Join<'_>,
) -> io::Result<Result<(Conn, Registered), String>> {
    join_over(Transport::Tcp, addr, None, join).await
}

/// Connects over `transport` and registers; `tls` is needed for the TLS transports.
pub async fn join_over(
    transport: Transport,
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    join: &Join<'_>,
) -> io::Result<Result<(Conn, Registered), String>> {
    join_on(transport, connect(addr, None).await?, tls, join).await
}

/// Registers over `transport` on a TCP connection made already (with [`connect`]).
pub async fn join_on(
    transport: Transport,
    tcp: TcpStream,
    tls: Option<&TlsConnector>,
    join: &Join<'_>,
) -> io::Result<Result<(Conn, Registered), String>> {
    let addr = tcp.peer_addr()?;
    let socket = socket2::SockRef::from(&tcp).try_clone()?;
    let stream: Stream = if transport.tls() {
        let tls = tls.ok_or_else(|| io::Error::other("no TLS connector for a TLS transport"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        Box::new(tls.connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    };
    let conn = match transport {
        Transport::Tcp | Transport::Tls => framed(stream, socket),
        Transport::WebSocket | Transport::WebSocketTls => {
            let scheme = if transport.tls() { "wss" } else { "ws" };
            let url = format!("{scheme}://{addr}/ws");
            let (socket_ws, _) = tokio_tungstenite::client_async(url, stream)
                .await
                .map_err(io::Error::other)?;
            Conn {
                link: Link::WebSocket(Box::new(socket_ws)),
                socket,
            }
        }
    };
    register(conn, join).await
}

impl Conn {
    /// Writes one whole frame (over WebSocket: its body, as one binary message).
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.link {
            Link::Framed { writer, .. } => writer.write_all(frame).await,
            Link::WebSocket(socket) => {
                let body = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
                socket
                    .send(WsMessage::Binary(Bytes::copy_from_slice(body)))
                    .await
                    .map_err(io::Error::other)
            }
        }
    }

    /// The next message; `None` once the relay closed the connection.
    pub async fn next(&mut self) -> Option<io::Result<Message>> {
        match &mut self.link {
            Link::Framed { frames, .. } => match frames.next().await? {
                Ok(body) => Some(decode(body)),
                Err(err) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, err))),
            },
            Link::WebSocket(socket) => loop {
                match socket.next().await? {
                    Ok(WsMessage::Binary(body)) => return Some(decode(body)),
                    Ok(WsMessage::Close(_)) => return None,
                    Ok(WsMessage::Text(_)) => {
                        let text = "a text message: the relay sends binary ones";
                        return Some(Err(io::Error::new(io::ErrorKind::InvalidData, text)));
                    }
                    Ok(_) => {}
                    // The relay closed the TCP connection without a close frame (a slow
                    // consumer cut mid-write): an end, as a FIN is for framed TCP.
                    Err(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ))
                    | Err(tungstenite::Error::ConnectionClosed) => return None,
                    Err(tungstenite::Error::Io(err)) => return Some(Err(err)),
                    Err(err) => return Some(Err(io::Error::other(err))),
                }
            },
        }
    }

    /// The two halves of a framed connection, for a client that reads in one task and
    /// writes in another; `None` over WebSocket.
    pub fn into_parts(self) -> Option<(FrameReader, FrameWriter)> {
        match self.link {
            Link::Framed { frames, writer } => Some((frames, writer)),
            Link::WebSocket(_) => None,
        }
    }

    /// Closes abruptly: a reset, and whatever the relay was still sending is lost.
    pub fn reset(self) {
        // Closing the last descriptor of a socket that lingers for 0 s sends a reset.
        let _ = self.socket.set_linger(Some(Duration::ZERO));
    }

    /// Closes our side (FIN; over WebSocket a close frame), then reads what the relay still
    /// sends until it closes too.
    pub async fn finish(mut self, within: Duration) -> io::Result<Vec<Message>> {
        match &mut self.link {
            Link::Framed { writer, .. } => writer.shutdown().await?,
            Link::WebSocket(socket) => WebSocketStream::close(socket, None)
                .await
                .map_err(io::Error::other)?,
        }
        let mut rest = Vec::new();
        tokio::time::timeout(within, async {
            while let Some(message) = self.next().await {
                rest.push(message?);
            }
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "relay did not close"))??;
        Ok(rest)
    }
}

/// A `StateUpdate` frame; `array` writes `update_data` as field clients do (array of uints).
pub fn state_update(id: Uuid, timestamp: u64, payload: &[u8], array: bool) -> Bytes {
    let update_data = if array {
        UpdateData::from_array(payload)
    } else {
        UpdateData::from_bin(payload)
    };
    encode_frame(&Message::StateUpdate {
        source_instance_id: id,
        timestamp,
        update_data,
    })
}

/// Reads everything until the relay closes `stream` (or `within` passes): the bytes. A
/// reset counts as a close: the relay may close with our bytes still unread, which makes
/// the kernel answer with a reset.
pub async fn read_to_close(stream: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let reading = async {
        loop {
            match stream.read_buf(&mut bytes).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "not closed in time"))??;
    Ok(bytes)
}

/// Decodes one frame body from the relay.
pub fn decode(body: Bytes) -> io::Result<Message> {
    decode_body(body).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// Splits raw bytes from the relay into messages; `Err` if they are not whole frames of
/// valid messages (a partial last frame is dropped when `cut_short` allows it: a
/// connection killed mid-write).
pub fn messages(mut bytes: &[u8], cut_short: bool) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = bytes.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok());
        let len = header.map_or(usize::MAX, |h| u32::from_be_bytes(h) as usize);
        let Some(body) = bytes.get(4..4usize.saturating_add(len)) else {
            return if cut_short {
                Ok(out)
            } else {
                Err("a partial frame".to_owned())
            };
        };
        out.push(decode_body(Bytes::copy_from_slice(body)).map_err(|e| e.to_string())?);
        bytes = &bytes[4 + len..];
    }
    Ok(out)
}
