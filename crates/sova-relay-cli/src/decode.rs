//! Best-effort display of update payloads: MessagePack decoded to JSON, with a depth bound.

use std::fmt;
use std::io::Cursor;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Deepest nesting decoded; deeper payloads are shown undecoded (recursion is stack).
const MAX_DEPTH: usize = 32;

/// `data` as JSON if it is exactly one MessagePack value, else `None`.
pub fn msgpack_to_json(data: &[u8]) -> Option<Value> {
    if data.is_empty() {
        return None;
    }
    let mut deserializer = rmp_serde::Deserializer::new(Cursor::new(data));
    deserializer.set_max_depth(MAX_DEPTH);
    let Json(value) = Json::deserialize(&mut deserializer).ok()?;
    let consumed = usize::try_from(deserializer.position()).ok()?;
    (consumed == data.len()).then_some(value)
}

/// A JSON value built from any MessagePack value: bins become arrays of numbers, non-string
/// map keys become their JSON text.
struct Json(Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(v.iter().map(|b| Value::from(*b)).collect()))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Json(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((Json(key), Json(value))) = map.next_entry()? {
            let key = match key {
                Value::String(key) => key,
                other => other.to_string(),
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_values_decode() {
        // {"op": "tempo", "bpm": 120, 1: [true, nil, bin(1, 2)]}
        let data = [
            0x83, 0xa2, b'o', b'p', 0xa5, b't', b'e', b'm', b'p', b'o', 0xa3, b'b', b'p', b'm',
            0x78, 0x01, 0x93, 0xc3, 0xc0, 0xc4, 0x02, 0x01, 0x02,
        ];
        let json = msgpack_to_json(&data).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "tempo", "bpm": 120, "1": [true, null, [1, 2]]})
        );
    }

    #[test]
    fn non_msgpack_is_not_decoded() {
        assert_eq!(msgpack_to_json(b"hello"), None, "trailing bytes");
        assert_eq!(msgpack_to_json(&[]), None);
        assert_eq!(msgpack_to_json(&[0xc1]), None, "reserved marker");
        assert_eq!(msgpack_to_json(&[0x92, 0x01]), None, "truncated");
        assert_eq!(msgpack_to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut data = vec![0x91; 100_000];
        data.push(0xc0);
        assert_eq!(msgpack_to_json(&data), None);
        let mut shallow = vec![0x91; 10];
        shallow.push(0xc0);
        assert!(msgpack_to_json(&shallow).is_some());
    }
}
