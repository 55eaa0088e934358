//! The in-memory harness fuzzers use serves a connection like the real port does.

use sova_relay::fuzzing::Harness;
use sova_relay::Config;
use sova_relay_protocol::{decode_body, encode_frame, FrameCodec, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use crate::support::{register_message, WAIT};

#[tokio::test]
async fn an_in_memory_connection_registers_and_is_told_about_bad_input() {
    let harness = Harness::new(Config::default());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (server_read, server_write) = tokio::io::split(server);
    let served = tokio::spawn(async move {
        harness.serve_connection(server_read, server_write).await;
        harness.instance_count()
    });
    let (mut read, mut write) = tokio::io::split(client);
    write
        .write_all(&encode_frame(&register_message("mem", "0.1.0", None, None)))
        .await
        .unwrap();
    write.write_all(&[0, 0, 0, 1, 0xc1]).await.unwrap();
    write.shutdown().await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut codec = FrameCodec::new(1 << 20);
    let mut messages = Vec::new();
    while let Some(body) = codec.decode(&mut buf).unwrap() {
        messages.push(decode_body(body).unwrap());
    }
    assert!(matches!(
        messages[0],
        Message::RegistrationResponse { success: true, .. }
    ));
    assert!(
        matches!(&messages[1], Message::Error { message } if message.starts_with("Invalid message"))
    );
    assert_eq!(
        served.await.unwrap(),
        0,
        "the instance left when its stream closed"
    );
}
