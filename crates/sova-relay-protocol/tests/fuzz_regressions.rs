//! Inputs the fuzzers (`fuzz/`) found, kept as regression tests.

#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use serde::Deserialize;
use sova_relay_protocol::{decode_body, encode_frame, state_broadcast_frame, Message, UpdateData};

/// The body of PROTOCOL.md's `StateUpdate` vector up to `update_data`'s value.
const STATE_UPDATE_HEAD: &str = "81ab537461746555706461746583b2736f757263655f696e7374616e63655f6964c410123e4567e89b12d3a456426614174000a974696d657374616d70cf0000018d0cabfed8ab7570646174655f64617461";

fn state_update_with(update_data: &str) -> Bytes {
    Bytes::from(hex::decode(format!("{STATE_UPDATE_HEAD}{update_data}")).unwrap())
}

/// What a Sova 0.1.x instance decodes a broadcast into: a plain `Vec<u8>`.
#[derive(Debug, Deserialize)]
enum FieldMessage {
    StateBroadcast {
        #[allow(dead_code)]
        source_instance_name: String,
        #[allow(dead_code)]
        timestamp: u64,
        update_data: Vec<u8>,
    },
}

fn field_instance_decodes(frame: &Bytes) -> Option<Vec<u8>> {
    match rmp_serde::from_slice::<FieldMessage>(&frame[4..]) {
        Ok(FieldMessage::StateBroadcast { update_data, .. }) => Some(update_data),
        Err(_) => None,
    }
}

/// rmp-serde hands a str holding invalid UTF-8 to a byte visitor as bytes, so a `str`
/// `update_data` used to be accepted and relayed verbatim: a broadcast that no Sova instance
/// in the field can decode. The relay must accept exactly the forms instances can read.
#[test]
fn update_data_is_accepted_exactly_when_instances_in_the_field_can_decode_it() {
    let forms = [
        ("array of uints", "93010203", true),
        ("bin", "c403010203", true),
        ("str with invalid UTF-8", "a1ff", false),
        ("str8 with invalid UTF-8", "d903ff0102", false),
        ("str with valid UTF-8", "a3616263", false),
    ];
    for (form, update_data, valid) in forms {
        let decoded = decode_body(state_update_with(update_data));
        assert_eq!(decoded.is_ok(), valid, "{form}: {decoded:?}");
        let raw = Bytes::from(hex::decode(update_data).unwrap());
        // What the relay would send if it forwarded this value verbatim.
        let frame = match decoded {
            Ok(Message::StateUpdate {
                timestamp,
                update_data,
                ..
            }) => {
                assert_eq!(update_data.raw(), &raw, "{form}: not verbatim");
                state_broadcast_frame("bob", timestamp, &update_data)
            }
            Ok(other) => panic!("{form}: decoded as {other:?}"),
            Err(_) => {
                let mut frame = hex::decode("0000004d81ae537461746542726f61646361737483b4736f757263655f696e7374616e63655f6e616d65a3626f62a974696d657374616d70cf0000018d0cabfed8ab7570646174655f64617461").unwrap();
                frame.extend_from_slice(&raw);
                Bytes::from(frame)
            }
        };
        assert_eq!(
            field_instance_decodes(&frame).is_some(),
            valid,
            "{form}: a field instance's view differs"
        );
    }
}

/// The fuzzer's reproducer: `{8: [4, "\xff"]}`, the eighth variant in compact form with a
/// str payload. Accepted, it re-encoded as an array: not what arrived.
#[test]
fn a_str_payload_in_the_compact_form_is_refused() {
    assert!(decode_body(Bytes::from_static(&[0x81, 0x08, 0x92, 0x04, 0xa1, 0xff])).is_err());
}

#[test]
fn arrays_and_bins_still_round_trip_verbatim() {
    for data in [
        UpdateData::from_array(&[1, 200, 3]),
        UpdateData::from_bin(&[0xff; 300]),
    ] {
        let frame = state_broadcast_frame("bob", 7, &data);
        match decode_body(frame.slice(4..)).unwrap() {
            Message::StateBroadcast { update_data, .. } => assert_eq!(update_data, data),
            other => panic!("{other:?}"),
        }
    }
}

/// The fuzzer's reproducer: `{8: [1, [1, int8 18]]}`, a `SessionSnapshot` whose `data` holds a
/// byte in a longer encoding than needed. Re-encoded through serde, `data` lost its form,
/// though a snapshot's data is forwarded verbatim.
#[test]
fn a_snapshot_keeps_its_data_verbatim() {
    let named = |data: &str| {
        // {"SessionSnapshot": {"seq": 1, "data": <data>}}
        let head = "81af53657373696f6e536e617073686f7482a373657101a464617461";
        Bytes::from(hex::decode(format!("{head}{data}")).unwrap())
    };
    let compact = Bytes::from_static(&[0x81, 0x08, 0x92, 0x01, 0x92, 0x01, 0xd0, 0x12]);
    for body in [
        compact,
        named("9201d012"),
        named("92cd0001cc05"),
        named("c403010203"),
    ] {
        let Ok(message) = decode_body(body.clone()) else {
            continue; // the variant index may name another message one day
        };
        let Message::SessionSnapshot { data, .. } = &message else {
            continue;
        };
        let raw = data.raw().clone();
        let again = decode_body(encode_frame(&message).slice(4..)).unwrap();
        match again {
            Message::SessionSnapshot { data, .. } => {
                assert_eq!(data.raw(), &raw, "{body:02x?}: data re-encoded")
            }
            other => panic!("{other:?}"),
        }
    }
}
