//! Every hex vector of PROTOCOL.md, decoded and re-encoded byte for byte.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is what we want

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use sova_relay_protocol::{
    decode_body, encode_frame, state_broadcast_frame, FrameCodec, InstanceInfo, Message,
    ProtocolError, UpdateData,
};
use tokio_util::codec::Decoder;
use uuid::Uuid;

const ALICE_REGISTER: &str = "0000004b81b05265676973746572496e7374616e636583ad696e7374616e63655f6e616d65ac616c6963652d73747564696fa776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ec0";
const BOB_REGISTER_TOKEN: &str = "0000004581b05265676973746572496e7374616e636583ad696e7374616e63655f6e616d65a3626f62a776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ea36a616d";
const BOB_REGISTER_CAPS: &str = "0000005e81b05265676973746572496e7374616e636584ad696e7374616e63655f6e616d65a3626f62a776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ec0ac6361706162696c697469657392a4706f6e67a870726573656e6365";
const REGISTRATION_RESPONSE: &str = "0000011481b4526567697374726174696f6e526573706f6e736584a773756363657373c3a76d657373616765b15265676973746572656420617320626f62ab61737369676e65645f6964c410123e4567e89b12d3a456426614174000b163757272656e745f696e7374616e6365739185a26964c41000112233445566778899aabbccddeeffa46e616d65ac616c6963652d73747564696fa776657273696f6ea5302e312e30ac636f6e6e65637465645f617482b0736563735f73696e63655f65706f6368ce65a50937b16e616e6f735f73696e63655f65706f6368cd01f4ad6c6173745f616374697669747982b0736563735f73696e63655f65706f6368ce65a50937b16e616e6f735f73696e63655f65706f6368cd01f4";
const STATE_UPDATE: &str = "0000005681ab537461746555706461746583b2736f757263655f696e7374616e63655f6964c410123e4567e89b12d3a456426614174000a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203";
const STATE_BROADCAST: &str = "0000004d81ae537461746542726f61646361737483b4736f757263655f696e7374616e63655f6e616d65a3626f62a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203";
const INSTANCE_DISCONNECTED: &str = "0000004781b4496e7374616e6365446973636f6e6e656374656482ab696e7374616e63655f6964c410123e4567e89b12d3a456426614174000ad696e7374616e63655f6e616d65a3626f62";
const INSTANCE_CONNECTED: &str = "0000004481b1496e7374616e6365436f6e6e656374656482ab696e7374616e63655f6964c410123e4567e89b12d3a456426614174000ad696e7374616e63655f6e616d65a3626f62";
const PING: &str = "0000001281a450696e6781a974696d657374616d702a";
const PONG: &str = "0000001281a4506f6e6781a974696d657374616d702a";
const ERROR: &str = "0000003481a54572726f7281a76d657373616765d922496e7374616e6365206e616d652027626f622720616c726561647920696e20757365";

const BOB_ID: Uuid = Uuid::from_u128(0x123e4567_e89b_12d3_a456_426614174000);
const TIMESTAMP: u64 = 1_705_314_615_000;

fn frame(hex_frame: &str) -> Bytes {
    Bytes::from(hex::decode(hex_frame).expect("vector is hex"))
}

fn decode_frame(hex_frame: &str) -> Message {
    let mut buf = BytesMut::from(&frame(hex_frame)[..]);
    let body = FrameCodec::new(1 << 20)
        .decode(&mut buf)
        .expect("valid frame")
        .expect("complete frame");
    assert!(buf.is_empty());
    decode_body(body).expect("valid body")
}

fn assert_vector(hex_frame: &str, message: Message) {
    assert_eq!(decode_frame(hex_frame), message, "decoding {hex_frame}");
    assert_eq!(
        hex::encode(encode_frame(&message)),
        hex_frame,
        "encoding {message:?}"
    );
}

fn vectors() -> Vec<(&'static str, Message)> {
    let at = SystemTime::UNIX_EPOCH + Duration::new(1_705_314_615, 500);
    vec![
        (
            ALICE_REGISTER,
            Message::RegisterInstance {
                instance_name: "alice-studio".into(),
                version: "0.1.0".into(),
                session_token: None,
                capabilities: None,
                resume: None,
            },
        ),
        (
            BOB_REGISTER_TOKEN,
            Message::RegisterInstance {
                instance_name: "bob".into(),
                version: "0.1.0".into(),
                session_token: Some("jam".into()),
                capabilities: None,
                resume: None,
            },
        ),
        (
            BOB_REGISTER_CAPS,
            Message::RegisterInstance {
                instance_name: "bob".into(),
                version: "0.1.0".into(),
                session_token: None,
                capabilities: Some(vec!["pong".into(), "presence".into()]),
                resume: None,
            },
        ),
        (
            REGISTRATION_RESPONSE,
            Message::RegistrationResponse {
                success: true,
                message: "Registered as bob".into(),
                assigned_id: Some(BOB_ID),
                current_instances: vec![InstanceInfo {
                    id: Uuid::from_u128(0x00112233_4455_6677_8899_aabbccddeeff),
                    name: "alice-studio".into(),
                    version: "0.1.0".into(),
                    connected_at: at,
                    last_activity: at,
                }],
                capabilities: None,
                epoch: None,
                seq: None,
                resume_secret: None,
                resumed: None,
            },
        ),
        (
            STATE_UPDATE,
            Message::StateUpdate {
                source_instance_id: BOB_ID,
                timestamp: TIMESTAMP,
                update_data: UpdateData::from_array(&[1, 2, 3]),
            },
        ),
        (
            STATE_BROADCAST,
            Message::StateBroadcast {
                source_instance_name: "bob".into(),
                timestamp: TIMESTAMP,
                update_data: UpdateData::from_array(&[1, 2, 3]),
                seq: None,
            },
        ),
        (
            INSTANCE_DISCONNECTED,
            Message::InstanceDisconnected {
                instance_id: BOB_ID,
                instance_name: "bob".into(),
            },
        ),
        (
            INSTANCE_CONNECTED,
            Message::InstanceConnected {
                instance_id: BOB_ID,
                instance_name: "bob".into(),
            },
        ),
        (PING, Message::Ping { timestamp: 42 }),
        (PONG, Message::Pong { timestamp: 42 }),
        (ERROR, Message::error("Instance name 'bob' already in use")),
    ]
}

#[test]
fn every_vector_decodes_and_encodes_byte_for_byte() {
    for (hex_frame, message) in vectors() {
        assert_vector(hex_frame, message);
    }
}

#[test]
fn broadcast_frame_splices_update_data_verbatim_in_both_forms() {
    let array = UpdateData::from_array(&[1, 2, 3]);
    assert_eq!(
        hex::encode(state_broadcast_frame("bob", TIMESTAMP, &array)),
        STATE_BROADCAST
    );
    let bin = UpdateData::from_bin(&[1, 2, 3]);
    let bin_frame = hex::encode(state_broadcast_frame("bob", TIMESTAMP, &bin));
    assert!(bin_frame.ends_with("ab7570646174655f64617461c403010203"));
    assert_eq!(bin.to_vec().unwrap(), vec![1, 2, 3]);
}

#[test]
fn a_bin_update_is_accepted_and_kept_as_bin() {
    let with_bin = STATE_UPDATE
        .replace("93010203", "c403010203")
        .replacen("56", "57", 1);
    let Message::StateUpdate { update_data, .. } = decode_frame(&with_bin) else {
        panic!("not a StateUpdate");
    };
    assert!(update_data.is_bin());
    assert_eq!(hex::encode(update_data.raw()), "c403010203");
}

#[test]
fn frames_split_at_every_byte_decode_the_same() {
    let stream: Vec<u8> = vectors()
        .iter()
        .flat_map(|(hex_frame, _)| frame(hex_frame).to_vec())
        .collect();
    let expected: Vec<Message> = vectors().into_iter().map(|(_, m)| m).collect();
    for split in 0..=stream.len() {
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(body) = codec.decode(&mut buf).expect("valid stream") {
                decoded.push(decode_body(body).expect("valid body"));
            }
        }
        assert_eq!(decoded, expected, "split at {split}");
    }
}

#[test]
fn byte_by_byte_feeding_decodes_the_same() {
    let bytes = frame(REGISTRATION_RESPONSE);
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut bodies = Vec::new();
    for byte in bytes.iter() {
        buf.extend_from_slice(&[*byte]);
        if let Some(body) = codec.decode(&mut buf).expect("valid") {
            bodies.push(body);
        }
    }
    assert_eq!(bodies.len(), 1);
}

#[test]
fn oversize_header_is_refused_before_the_body_arrives() {
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::from(&[0x00, 0x20, 0x00, 0x00][..]);
    let err = codec.decode(&mut buf).expect_err("too large");
    assert_eq!(
        err.to_string(),
        "Message too large: 2097152 bytes (max: 1048576)"
    );
    assert!(buf.capacity() < 1 << 20, "body space was not reserved");
}

#[test]
fn zero_length_frame_is_refused() {
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
    assert!(matches!(
        FrameCodec::new(16).decode(&mut buf),
        Err(ProtocolError::ZeroLength)
    ));
}

#[test]
fn fields_in_any_order_extra_fields_and_missing_options_are_accepted() {
    // {"RegisterInstance": {"extra": [1, {}], "version": "0.1.0", "instance_name": "bob"}}
    let mut body = vec![0x81];
    body.extend(rmp_str("RegisterInstance"));
    body.push(0x83);
    body.extend(rmp_str("extra"));
    body.extend([0x92, 0x01, 0x80]);
    body.extend(rmp_str("version"));
    body.extend(rmp_str("0.1.0"));
    body.extend(rmp_str("instance_name"));
    body.extend(rmp_str("bob"));
    assert_eq!(
        decode_body(body.into()).unwrap(),
        Message::RegisterInstance {
            instance_name: "bob".into(),
            version: "0.1.0".into(),
            session_token: None,
            capabilities: None,
            resume: None,
        }
    );
}

#[test]
fn compact_array_structs_are_accepted() {
    // {"StateUpdate": [id, 7, bin[9]]}
    let mut body = vec![0x81];
    body.extend(rmp_str("StateUpdate"));
    body.extend([0x93, 0xc4, 0x10]);
    body.extend(BOB_ID.as_bytes());
    body.extend([0x07, 0xc4, 0x01, 0x09]);
    let Message::StateUpdate {
        source_instance_id,
        timestamp,
        update_data,
    } = decode_body(body.into()).unwrap()
    else {
        panic!("not a StateUpdate");
    };
    assert_eq!((source_instance_id, timestamp), (BOB_ID, 7));
    assert_eq!(update_data.to_vec().unwrap(), vec![9]);
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    let deep = {
        let mut body = vec![0x81];
        body.extend(rmp_str("Ping"));
        body.extend(std::iter::repeat_n(0x91, 100_000));
        body.push(0xc0);
        body
    };
    let unknown_variant = {
        let mut body = vec![0x81];
        body.extend(rmp_str("Teleport"));
        body.extend([0x81, 0xa1, b'x', 0x01]);
        body
    };
    let update_with_big_int = STATE_UPDATE.replace("93010203", "9301cd0100");
    let update_with_big_int = hex::decode(&update_with_big_int[8..]).unwrap();
    let invalid_utf8 = {
        let mut body = vec![0x81];
        body.extend(rmp_str("Error"));
        body.extend([0x81, 0xa7]);
        body.extend(b"message");
        body.extend([0xa2, 0xff, 0xfe]);
        body
    };
    for (what, body) in [
        ("random", vec![0xc1, 0x00, 0x13]),
        ("truncated", vec![0x81, 0xa4, b'P', b'i']),
        ("deep", deep),
        ("unknown variant", unknown_variant),
        ("not a map", vec![0x2a]),
        ("update_data element over 255", update_with_big_int),
        ("invalid utf-8", invalid_utf8),
    ] {
        assert!(decode_body(body.into()).is_err(), "{what} was accepted");
    }
}

fn rmp_str(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend(s.as_bytes());
    out
}
