//! The WebSocket transport shares sessions, rules and limits with TCP.

use futures_util::{SinkExt, StreamExt};
use sova_relay_protocol::{decode_body, encode_frame, Message, UpdateData, FRAME_HEADER_LEN};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::support::{assert_broadcast, register_message, TestServer, WAIT};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct WsClient {
    socket: Socket,
    id: Uuid,
}

impl WsClient {
    async fn connect(relay: &TestServer) -> Socket {
        let url = format!("ws://{}/ws", relay.addr);
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
        let (socket, response) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .unwrap();
        assert_eq!(response.status(), 101);
        socket
    }

    async fn register(relay: &TestServer, name: &str, token: Option<&str>) -> Self {
        let mut socket = Self::connect(relay).await;
        send(&mut socket, &register_message(name, "0.1.0", token, None)).await;
        let Message::RegistrationResponse {
            assigned_id: Some(id),
            ..
        } = recv(&mut socket).await
        else {
            panic!("{name} not registered");
        };
        WsClient { socket, id }
    }
}

async fn send(socket: &mut Socket, message: &Message) {
    let frame = encode_frame(message);
    socket
        .send(WsMessage::Binary(frame.slice(FRAME_HEADER_LEN..)))
        .await
        .unwrap();
}

async fn recv(socket: &mut Socket) -> Message {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await {
            Ok(Some(Ok(WsMessage::Binary(body)))) => return decode_body(body).unwrap(),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Reads until the relay's close frame; returns the messages before it and the close.
async fn expect_close(socket: &mut Socket) -> (Vec<Message>, Option<(CloseCode, String)>) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(WsMessage::Binary(body))) => seen.push(decode_body(body).unwrap()),
            Some(Ok(WsMessage::Close(frame))) => {
                return (seen, frame.map(|f| (f.code, f.reason.to_string())))
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (seen, None),
        }
    }
}

#[tokio::test]
async fn tcp_and_websocket_instances_share_a_session() {
    let relay = TestServer::start().await;
    let mut tcp = relay.client_in("tcp-alice", "jam").await;
    let mut ws = WsClient::register(&relay, "ws-bob", Some("jam")).await;
    tcp.update(1, b"from tcp").await;
    assert_broadcast(&recv(&mut ws.socket).await, "tcp-alice", 1, b"from tcp");
    let update = Message::StateUpdate {
        source_instance_id: ws.id,
        timestamp: 2,
        update_data: UpdateData::from_bin(b"from ws"),
    };
    send(&mut ws.socket, &update).await;
    assert_broadcast(&tcp.recv().await, "ws-bob", 2, b"from ws");
    send(&mut ws.socket, &Message::Ping { timestamp: 9 }).await;
    assert_eq!(recv(&mut ws.socket).await, Message::Pong { timestamp: 9 });
    drop(ws);
    assert!(matches!(
        tcp.recv().await,
        Message::InstanceDisconnected { .. }
    ));
}

#[tokio::test]
async fn websocket_registration_follows_the_same_rules() {
    let relay = TestServer::start().await;
    let _bob = relay.client("bob").await;
    let mut socket = WsClient::connect(&relay).await;
    send(&mut socket, &register_message("bob", "0.1.0", None, None)).await;
    let (seen, close) = expect_close(&mut socket).await;
    assert_eq!(seen, [Message::error("Instance name 'bob' already in use")]);
    let (code, reason) = close.unwrap();
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "Instance name 'bob' already in use");
}

#[tokio::test]
async fn a_text_message_is_refused_with_a_close_reason_and_nobody_else_notices() {
    let relay = TestServer::start().await;
    let mut alice = relay.client("alice").await;
    let mut ws = WsClient::register(&relay, "texter", None).await;
    ws.socket
        .send(WsMessage::Text("hello".into()))
        .await
        .unwrap();
    let (_, close) = expect_close(&mut ws.socket).await;
    let (code, reason) = close.unwrap();
    assert_eq!(code, CloseCode::Protocol);
    assert!(
        reason.contains("text messages are not supported"),
        "{reason}"
    );
    assert!(matches!(
        alice.recv().await,
        Message::InstanceDisconnected { .. }
    ));
    let mut bob = relay.client("bob").await;
    alice.update(1, b"fine").await;
    assert_broadcast(&bob.recv().await, "alice", 1, b"fine");
}

#[tokio::test]
async fn an_oversize_websocket_message_is_refused_with_1009() {
    let relay = TestServer::with(|c| c.max_message_size = 4096).await;
    let mut ws = WsClient::register(&relay, "big", None).await;
    ws.socket
        .send(WsMessage::Binary(vec![0x90; 10_000].into()))
        .await
        .unwrap();
    let (seen, close) = expect_close(&mut ws.socket).await;
    assert_eq!(
        seen,
        [Message::error("Message too large: 10000 bytes (max: 4096)")]
    );
    assert_eq!(close.unwrap().0, CloseCode::Size);
    let _still_serving = relay.client("next").await;
}

#[tokio::test]
async fn invalid_messagepack_over_websocket_gets_an_error_and_carries_on() {
    let relay = TestServer::start().await;
    let mut ws = WsClient::register(&relay, "eve", None).await;
    ws.socket
        .send(WsMessage::Binary(vec![0xc1].into()))
        .await
        .unwrap();
    assert!(matches!(recv(&mut ws.socket).await, Message::Error { .. }));
    send(&mut ws.socket, &Message::Ping { timestamp: 3 }).await;
    assert_eq!(recv(&mut ws.socket).await, Message::Pong { timestamp: 3 });
}

#[tokio::test]
async fn websocket_instances_are_told_when_the_relay_shuts_down() {
    let relay = TestServer::start().await;
    let mut ws = WsClient::register(&relay, "ws", None).await;
    relay.stop().await;
    let (seen, close) = expect_close(&mut ws.socket).await;
    assert_eq!(seen, [Message::error("Relay shutting down")]);
    assert_eq!(close.unwrap().0, CloseCode::Away);
}
