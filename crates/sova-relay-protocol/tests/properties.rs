//! Property tests: every message round-trips, the broadcast splice matches the slow path.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is what we want

use bytes::BytesMut;
use proptest::prelude::*;
use sova_relay_protocol::{
    decode_body, encode_frame, state_broadcast_frame, FrameCodec, Message, UpdateData,
};
use tokio_util::codec::Decoder;
use uuid::Uuid;

fn update_data() -> impl Strategy<Value = UpdateData> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(bytes, bin)| {
            if bin {
                UpdateData::from_bin(&bytes)
            } else {
                UpdateData::from_array(&bytes)
            }
        })
}

fn message() -> impl Strategy<Value = Message> {
    let name = "[a-z]{1,40}";
    prop_oneof![
        (name, name, proptest::option::of(name)).prop_map(|(n, v, t)| {
            Message::RegisterInstance {
                instance_name: n,
                version: v,
                session_token: t,
                capabilities: None,
                resume: None,
            }
        }),
        (any::<u128>(), any::<u64>(), update_data()).prop_map(|(id, t, d)| {
            Message::StateUpdate {
                source_instance_id: Uuid::from_u128(id),
                timestamp: t,
                update_data: d,
            }
        }),
        (name, any::<u64>(), update_data()).prop_map(|(n, t, d)| Message::StateBroadcast {
            source_instance_name: n,
            timestamp: t,
            update_data: d,
            seq: None,
        }),
        (any::<u128>(), name).prop_map(|(id, n)| Message::InstanceDisconnected {
            instance_id: Uuid::from_u128(id),
            instance_name: n,
        }),
        any::<u64>().prop_map(|t| Message::Ping { timestamp: t }),
        any::<u64>().prop_map(|t| Message::Pong { timestamp: t }),
        ".{0,80}".prop_map(Message::error),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message()) {
        let frame = encode_frame(&message);
        prop_assert_eq!(decode_body(frame.slice(4..)).unwrap(), message);
    }

    #[test]
    fn spliced_broadcast_equals_decode_then_encode(
        name in "[a-z]{1,64}",
        timestamp in any::<u64>(),
        data in update_data(),
    ) {
        let update = encode_frame(&Message::StateUpdate {
            source_instance_id: Uuid::nil(),
            timestamp,
            update_data: data,
        });
        let Message::StateUpdate { update_data, .. } = decode_body(update.slice(4..)).unwrap() else {
            unreachable!("encoded a StateUpdate");
        };
        let spliced = state_broadcast_frame(&name, timestamp, &update_data);
        let slow = rmp_serde::to_vec_named(&Message::StateBroadcast {
            source_instance_name: name,
            timestamp,
            update_data,
            seq: None,
        }).unwrap();
        prop_assert_eq!(&spliced[4..], &slow[..]);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_to_the_same_messages(
        messages in proptest::collection::vec(message(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode_frame(m).to_vec()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for pair in points.windows(2) {
            buf.extend_from_slice(&stream[pair[0]..pair[1]]);
            while let Some(body) = codec.decode(&mut buf).unwrap() {
                decoded.push(decode_body(body).unwrap());
            }
        }
        prop_assert_eq!(decoded, messages);
    }
}
