//! The relay over WebSocket (`GET /ws`): one MessagePack body per binary message, no
//! length prefix; otherwise the framed protocol's messages and rules.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, FRAME_HEADER_LEN};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::relay::{handle_body, register_frame, registered_id, state_update};
use super::{connect_tcp, invalid, ClientSpec, Reader, Sink, Writer};
use crate::payload::Stamp;

type Socket = WebSocketStream<TcpStream>;

pub(crate) async fn connect(
    addr: SocketAddr,
    spec: &ClientSpec<'_>,
) -> io::Result<(Reader, Writer)> {
    let stream = connect_tcp(addr).await?;
    let (socket, _response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .map_err(io::Error::other)?;
    let (mut sink, mut stream) = socket.split();
    let register = Bytes::copy_from_slice(&register_frame(spec)[FRAME_HEADER_LEN..]);
    sink.send(WsMessage::Binary(register))
        .await
        .map_err(io::Error::other)?;
    let reply = loop {
        match stream.next().await {
            Some(Ok(WsMessage::Binary(body))) => break body,
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(io::Error::other(format!("closed: {frame:?}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(io::Error::other(err)),
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    };
    let reply = decode_body(reply).map_err(|err| invalid(err.to_string()))?;
    let id = registered_id(Some(reply))?;
    let (frame, offset) = state_update(id, spec.payload);
    let reader = Reader::Ws(WsReader {
        stream,
        payload_len: spec.payload.len(),
    });
    let writer = Writer::Ws(WsWriter {
        sink,
        body: frame[FRAME_HEADER_LEN..].to_vec(),
        offset: offset - FRAME_HEADER_LEN,
    });
    Ok((reader, writer))
}

/// The receiving half of a WebSocket client.
pub(crate) struct WsReader {
    stream: SplitStream<Socket>,
    payload_len: usize,
}

impl WsReader {
    pub(crate) async fn read(&mut self, sink: &mut impl Sink) -> io::Result<bool> {
        match self.stream.next().await {
            Some(Ok(WsMessage::Binary(body))) => {
                handle_body(&body, self.payload_len, sink);
                Ok(true)
            }
            Some(Ok(WsMessage::Close(_))) | None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(err)) => Err(io::Error::other(err)),
        }
    }
}

/// The sending half of a WebSocket client and the body it sends.
pub(crate) struct WsWriter {
    sink: SplitSink<Socket, WsMessage>,
    body: Vec<u8>,
    offset: usize,
}

impl WsWriter {
    pub(crate) async fn publish(&mut self, stamp: Stamp) -> io::Result<()> {
        stamp.write(&mut self.body[self.offset..]);
        let message = WsMessage::Binary(Bytes::copy_from_slice(&self.body));
        self.sink.send(message).await.map_err(io::Error::other)
    }
}
