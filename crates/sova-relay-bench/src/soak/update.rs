//! The numbered updates of the soak: who sent it (the relay-assigned id), its place in the
//! sender's run (counter 1, 2, 3, … per registration), filler of a chosen length, and a
//! checksum over all of it, so a receiver can tell a corrupted, misattributed, duplicated
//! or missing update apart.

use uuid::Uuid;

/// Bytes before the filler: id (16), counter (8), filler length (4).
const HEAD: usize = 28;
/// Bytes of the trailing checksum.
const SUM: usize = 8;

/// One decoded update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    /// The sender's id, as the relay assigned it at registration.
    pub source: Uuid,
    /// The update's place in the sender's run (1 for the first).
    pub counter: u64,
}

/// The payload of update `counter` of `source`, with `filler` bytes of padding.
pub fn encode(source: Uuid, counter: u64, filler: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + filler + SUM);
    out.extend_from_slice(source.as_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    let len = u32::try_from(filler).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    let mut state = counter ^ source.as_u64_pair().0;
    out.extend((0..len).map(|_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 56) as u8
    }));
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

/// Reads a payload; `None` if it is not one of [`encode`]'s, or its checksum is wrong.
pub fn decode(payload: &[u8]) -> Option<Numbered> {
    let body_len = payload.len().checked_sub(SUM)?;
    let (body, sum) = payload.split_at(body_len);
    if body.len() < HEAD || fnv1a(body).to_be_bytes() != sum {
        return None;
    }
    let filler = u32::from_be_bytes(body[24..28].try_into().ok()?) as usize;
    if body.len() != HEAD + filler {
        return None;
    }
    Some(Numbered {
        source: Uuid::from_slice(&body[..16]).ok()?,
        counter: u64::from_be_bytes(body[16..24].try_into().ok()?),
    })
}

/// 64-bit FNV-1a: enough to catch any corruption a relay could plausibly cause.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_catches_corruption() {
        let id = Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        for filler in [0, 1, 100, 20_000] {
            let payload = encode(id, 42, filler);
            assert_eq!(
                decode(&payload),
                Some(Numbered {
                    source: id,
                    counter: 42
                })
            );
            for i in [0, payload.len() / 2, payload.len() - 1] {
                let mut bad = payload.clone();
                bad[i] ^= 0x10;
                assert_eq!(decode(&bad), None, "flip at {i} of {}", payload.len());
            }
            assert_eq!(decode(&payload[..payload.len() - 1]), None);
        }
        assert_eq!(decode(b"short"), None);
    }
}
