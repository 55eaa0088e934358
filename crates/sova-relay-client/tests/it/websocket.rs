//! The client over `ws://`: the real relay's `/ws`, and a WebSocket relay played by the test
//! for what the real one never does (text messages).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use sova_relay_client::{ClientError, Event, RelayClient};
use sova_relay_protocol::{decode_body, encode_frame, Message, FRAME_HEADER_LEN};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

use crate::relay::queued_updates_survive_a_restart;
use crate::scripted::PATIENCE;
use crate::server::{relay_config, TestServer};
use crate::{config, next};

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn websocket_and_tcp_clients_of_one_session_exchange_updates_in_order() {
    let server = TestServer::start(relay_config()).await;
    let mut ws = RelayClient::connect(&ws_url(server.addr), config("ws").session_token("jam"))
        .await
        .unwrap();
    let mut tcp = RelayClient::connect(&server.addr(), config("tcp").session_token("jam"))
        .await
        .unwrap();
    assert_eq!(tcp.peers()[0].name, "ws");
    let tcp_id = tcp.instance_id().unwrap();
    assert_eq!(
        next(ws.events()).await,
        Event::Joined {
            id: tcp_id,
            name: "tcp".to_owned()
        }
    );

    for i in 0..200u32 {
        ws.send_update_at(i.to_be_bytes(), u64::from(i)).unwrap();
        tcp.send_update_at(i.to_le_bytes(), u64::from(i)).unwrap();
    }
    for i in 0..200u32 {
        let from_ws = Event::Broadcast {
            from: "ws".to_owned(),
            timestamp: u64::from(i),
            data: i.to_be_bytes().to_vec(),
        };
        assert_eq!(next(tcp.events()).await, from_ws);
        let from_tcp = Event::Broadcast {
            from: "tcp".to_owned(),
            timestamp: u64::from(i),
            data: i.to_le_bytes().to_vec(),
        };
        assert_eq!(next(ws.events()).await, from_tcp);
    }
    assert!(ws.ping().await.unwrap() < PATIENCE);

    ws.close().await;
    assert!(matches!(
        next(tcp.events()).await,
        Event::Left { name, .. } if name == "ws"
    ));
    assert_eq!(ws.next_event().await, None);
}

#[tokio::test]
async fn websocket_rejections_are_typed_with_the_relay_text() {
    let server = TestServer::start(relay_config()).await;
    let _alice = RelayClient::connect(&server.addr(), config("alice"))
        .await
        .unwrap();
    let err = RelayClient::connect(&ws_url(server.addr), config("alice"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NameTaken(_)), "{err:?}");
    assert_eq!(err.to_string(), "Instance name 'alice' already in use");

    let err = RelayClient::connect(&ws_url(server.addr), config("bob").sova_version("9.9.9"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::VersionMismatch(_)), "{err:?}");

    let err = RelayClient::connect(&format!("ws://{}/nope", server.addr), config("bob"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::WebSocket(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

#[tokio::test]
async fn queued_updates_are_sent_in_order_after_the_relay_restarts_over_websocket() {
    let reason = queued_updates_survive_a_restart(ws_url).await;
    assert_eq!(
        reason,
        "relay closed the connection: relay shutting down (code 1001)"
    );
}

#[tokio::test]
async fn a_text_message_ends_the_connection_and_the_client_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = ws_url(listener.local_addr().unwrap());
    let connecting = tokio::spawn(async move { RelayClient::connect(&url, config("alice")).await });

    let mut socket = accept(&listener).await;
    let id = register(&mut socket).await;
    let mut client = connecting.await.unwrap().unwrap();
    assert_eq!(client.instance_id(), Some(id));
    socket.send(WsMessage::Text("hello".into())).await.unwrap();
    let Event::Disconnected(reason) = next(client.events()).await else {
        panic!("expected Disconnected");
    };
    assert!(reason.contains("text WebSocket message"), "{reason}");

    let mut socket = accept(&listener).await;
    register(&mut socket).await;
    assert_eq!(next(client.events()).await, Event::Reconnected);
    client.send_update(b"again").unwrap();
    loop {
        if let Message::StateUpdate { update_data, .. } = recv(&mut socket).await {
            assert_eq!(update_data.to_vec().unwrap(), b"again");
            break;
        }
    }
    // Gone without a closing handshake: as a TCP end of stream.
    drop(socket);
    assert_eq!(
        next(client.events()).await,
        Event::Disconnected("relay closed the connection".to_owned())
    );
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn accept(listener: &TcpListener) -> Socket {
    let (stream, _) = tokio::time::timeout(PATIENCE, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    tokio_tungstenite::accept_async(stream).await.unwrap()
}

async fn recv(socket: &mut Socket) -> Message {
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("nothing received")
            .expect("connection closed")
            .unwrap();
        if let WsMessage::Binary(body) = message {
            return decode_body(body).unwrap();
        }
    }
}

/// Reads the client's `RegisterInstance` and accepts it; returns the id assigned.
async fn register(socket: &mut Socket) -> Uuid {
    assert!(matches!(
        recv(socket).await,
        Message::RegisterInstance { .. }
    ));
    let id = Uuid::new_v4();
    let response = encode_frame(&Message::RegistrationResponse {
        success: true,
        message: "Registered as alice".to_owned(),
        assigned_id: Some(id),
        current_instances: vec![],
        capabilities: None,
        epoch: None,
        seq: None,
        resume_secret: None,
        resumed: None,
    });
    socket
        .send(WsMessage::Binary(response.slice(FRAME_HEADER_LEN..)))
        .await
        .unwrap();
    id
}
