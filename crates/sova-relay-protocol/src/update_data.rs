use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::ProtocolError;

/// The opaque payload of a state update, kept as the exact MessagePack value that arrived:
/// an array of uints (what instances in the field emit) or a bin. The relay forwards it
/// verbatim, so it is never re-encoded on the way through.
#[derive(Clone, PartialEq, Eq)]
pub struct UpdateData {
    raw: Bytes,
}

impl UpdateData {
    /// Encodes `bytes` as an array of uints, the form Sova instances in the field send.
    pub fn from_array(bytes: &[u8]) -> Self {
        let mut raw = BytesMut::with_capacity(bytes.len() * 2 + 5);
        write_array_len(&mut raw, bytes.len());
        for &byte in bytes {
            if byte >= 0x80 {
                raw.put_u8(0xcc);
            }
            raw.put_u8(byte);
        }
        Self { raw: raw.freeze() }
    }

    /// Encodes `bytes` as a MessagePack bin, the compact form.
    pub fn from_bin(bytes: &[u8]) -> Self {
        let mut raw = BytesMut::with_capacity(bytes.len() + 5);
        match u8::try_from(bytes.len()) {
            Ok(len) => raw.put_slice(&[0xc4, len]),
            Err(_) => match u16::try_from(bytes.len()) {
                Ok(len) => {
                    raw.put_u8(0xc5);
                    raw.put_u16(len);
                }
                Err(_) => {
                    raw.put_u8(0xc6);
                    raw.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                }
            },
        }
        raw.put_slice(bytes);
        Self { raw: raw.freeze() }
    }

    /// Wraps a raw MessagePack value that serde has already accepted as a byte array,
    /// provided it is an array or a bin. rmp-serde also hands a str holding invalid UTF-8
    /// to the visitor as bytes, but Sova instances decode `Vec<u8>` only from an array or a
    /// bin: forwarded verbatim, a str would be a message they cannot read.
    pub(crate) fn from_checked_raw(raw: Bytes) -> Result<Self, ProtocolError> {
        match raw.first() {
            Some(0x90..=0x9f | 0xdc | 0xdd | 0xc4..=0xc6) => Ok(Self { raw }),
            _ => Err(ProtocolError::Invalid(
                "update_data: expected an array of integers 0..=255 or a bin".to_owned(),
            )),
        }
    }

    /// The MessagePack encoding of the value, exactly as it arrived.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether the value is a bin rather than an array of uints.
    pub fn is_bin(&self) -> bool {
        matches!(self.raw.first(), Some(0xc4..=0xc6))
    }

    /// Decodes the payload bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, ProtocolError> {
        rmp_serde::from_slice::<ByteArray>(&self.raw)
            .map(|bytes| bytes.0)
            .map_err(|err| ProtocolError::Invalid(format!("update_data: {err}")))
    }
}

impl Default for UpdateData {
    fn default() -> Self {
        Self::from_array(&[])
    }
}

impl fmt::Debug for UpdateData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = if self.is_bin() { "bin" } else { "array" };
        write!(f, "UpdateData({form}, {} raw bytes)", self.raw.len())
    }
}

fn write_array_len(raw: &mut BytesMut, len: usize) {
    if len < 16 {
        raw.put_u8(0x90 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        raw.put_u8(0xdc);
        raw.put_u16(len);
    } else {
        raw.put_u8(0xdd);
        raw.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

impl Serialize for UpdateData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_vec().map_err(serde::ser::Error::custom)?;
        if self.is_bin() {
            serializer.serialize_bytes(&bytes)
        } else {
            let mut seq = serializer.serialize_seq(Some(bytes.len()))?;
            for byte in &bytes {
                seq.serialize_element(byte)?;
            }
            seq.end()
        }
    }
}

/// Validates the shape (array of uints up to 255, or bin) without keeping the bytes: the
/// decoder then attaches the raw span it located, so nothing is copied.
impl<'de> Deserialize<'de> for UpdateData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor { keep: false })?;
        Ok(Self::default())
    }
}

struct ByteArray(Vec<u8>);

impl<'de> Deserialize<'de> for ByteArray {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(ShapeVisitor { keep: true })
            .map(ByteArray)
    }
}

struct ShapeVisitor {
    keep: bool,
}

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of integers 0..=255 or a bin")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(if self.keep {
            bytes.to_vec()
        } else {
            Vec::new()
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::new();
        if self.keep {
            bytes.reserve(seq.size_hint().unwrap_or(0).min(1 << 20));
        }
        while let Some(byte) = seq.next_element::<u8>()? {
            if self.keep {
                bytes.push(byte);
            }
        }
        Ok(bytes)
    }
}
