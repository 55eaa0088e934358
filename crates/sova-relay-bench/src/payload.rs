//! What every benchmark message carries: a 16-byte stamp (send time, publisher, sequence
//! number) at the start of a payload padded to the requested size.

/// Bytes the stamp takes at the start of every payload; the smallest payload allowed.
pub const STAMP_LEN: usize = 16;

/// The header of a benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// [`crate::clock::now_ns`] when the message was handed to the socket.
    pub sent_ns: u64,
    /// Index of the publisher across the whole run.
    pub publisher: u32,
    /// Sequence number of the message at its publisher.
    pub seq: u32,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        payload[..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        payload[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        payload[12..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Reads the stamp of a payload; `None` if it is too short to carry one.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let stamp: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let [a, b, c, d, e, f, g, h, p0, p1, p2, p3, s0, s1, s2, s3] = *stamp;
        Some(Stamp {
            sent_ns: u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            publisher: u32::from_le_bytes([p0, p1, p2, p3]),
            seq: u32::from_le_bytes([s0, s1, s2, s3]),
        })
    }
}

/// A payload of `size` bytes (at least [`STAMP_LEN`]): a zeroed stamp, then a fixed,
/// non-repeating-looking filler, so no layer can compress it away.
pub fn template(size: usize) -> Vec<u8> {
    let size = size.max(STAMP_LEN);
    (0..size)
        .map(|i| {
            if i < STAMP_LEN {
                0
            } else {
                (i * 31 % 251) as u8
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips() {
        let mut payload = template(64);
        let stamp = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            publisher: 7,
            seq: 42,
        };
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload[..15]), None);
    }
}
