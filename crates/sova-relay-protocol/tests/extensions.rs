//! The vectors of docs/PROTOCOL.md (extensions for new clients), both directions.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is what we want

use sova_relay_protocol::{
    decode_body, encode_frame, state_broadcast_frame, Message, PendingBroadcast, ResumeRequest,
    UpdateData,
};

fn assert_vector(hex_frame: &str, message: Message) {
    let frame = hex::decode(hex_frame).unwrap();
    assert_eq!(decode_body(frame[4..].to_vec().into()).unwrap(), message);
    assert_eq!(
        hex::encode(encode_frame(&message)),
        hex_frame,
        "{message:?}"
    );
}

#[test]
fn state_broadcast_with_seq() {
    let hex_frame = "0000005281ae537461746542726f61646361737484b4736f757263655f696e7374616e63655f6e616d65a3626f62a974696d657374616d70cf0000018d0cabfed8ab7570646174655f6461746193010203a373657107";
    let data = UpdateData::from_array(&[1, 2, 3]);
    assert_vector(
        hex_frame,
        Message::StateBroadcast {
            source_instance_name: "bob".into(),
            timestamp: 1_705_314_615_000,
            update_data: data.clone(),
            seq: Some(7),
        },
    );
    let pending = PendingBroadcast::new("bob", 1_705_314_615_000, &data);
    assert_eq!(hex::encode(pending.finish(7)), hex_frame);
    // Without seq, the base vector of the shared PROTOCOL.md, unchanged.
    assert!(
        hex::encode(state_broadcast_frame("bob", 1_705_314_615_000, &data))
            .starts_with("0000004d81ae")
    );
}

#[test]
fn a_broadcast_carried_between_nodes_seals_to_the_same_frames() {
    let data = UpdateData::from_array(&[1, 2, 3]);
    let pending = || PendingBroadcast::new("bob", 1_705_314_615_000, &data);
    let carried = PendingBroadcast::from_body(&pending().into_body());
    assert_eq!(carried.finish(7), pending().finish(7));
    // Without seq: exactly the shared PROTOCOL.md vector a field client knows.
    let unsequenced = PendingBroadcast::new("bob", 1_705_314_615_000, &data).finish_unsequenced();
    assert_eq!(
        unsequenced,
        state_broadcast_frame("bob", 1_705_314_615_000, &data)
    );
}

#[test]
fn session_snapshot() {
    assert_vector(
        "0000002181af53657373696f6e536e617073686f7482a373657107a464617461c403010203",
        Message::SessionSnapshot {
            seq: 7,
            data: UpdateData::from_bin(&[1, 2, 3]),
        },
    );
}

#[test]
fn register_with_resume_round_trips_and_old_fields_decode_without_it() {
    let message = Message::RegisterInstance {
        instance_name: "bob".into(),
        version: "0.1.0".into(),
        session_token: None,
        capabilities: Some(vec!["resume".into()]),
        resume: Some(ResumeRequest {
            epoch: 42,
            seq: 7,
            secret: "00112233445566778899aabbccddeeff".into(),
        }),
    };
    assert_vector("0000009481b05265676973746572496e7374616e636585ad696e7374616e63655f6e616d65a3626f62a776657273696f6ea5302e312e30ad73657373696f6e5f746f6b656ec0ac6361706162696c697469657391a6726573756d65a6726573756d6583a565706f63682aa373657107a6736563726574d9203030313132323333343435353636373738383939616162626363646465656666", message);
}

#[test]
fn registration_response_extensions_are_omitted_when_unset() {
    let base = Message::RegistrationResponse {
        success: true,
        message: "Registered as bob".into(),
        assigned_id: None,
        current_instances: vec![],
        capabilities: None,
        epoch: None,
        seq: None,
        resume_secret: None,
        resumed: None,
    };
    let extended = Message::RegistrationResponse {
        success: true,
        message: "Registered as bob".into(),
        assigned_id: None,
        current_instances: vec![],
        capabilities: Some(vec!["resume".into()]),
        epoch: Some(42),
        seq: Some(7),
        resume_secret: Some("ab".repeat(16)),
        resumed: Some("ok".into()),
    };
    assert!(!hex::encode(encode_frame(&base)).contains(&hex::encode("epoch")));
    let frame = encode_frame(&extended);
    assert_eq!(decode_body(frame.slice(4..)).unwrap(), extended);
}
