//! A bounded walk over raw MessagePack: checks well-formedness and nesting depth without
//! building values, and finds the byte span of one field so it can be forwarded verbatim.

use std::ops::Range;

use crate::ProtocolError;

type Result<T> = std::result::Result<T, ProtocolError>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(ProtocolError::Malformed("truncated"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self, width: usize) -> Result<usize> {
        let bytes = self.take(width)?;
        Ok(bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }

    /// Reads one marker and returns what follows it.
    fn head(&mut self) -> Result<Head> {
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Head::Skip(0),
            0x80..=0x8f => Head::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Str(usize::from(marker & 0x1f)),
            0xc1 => return Err(ProtocolError::Malformed("reserved marker 0xc1")),
            0xc4..=0xc6 => Head::Bin(self.len(1 << (marker - 0xc4))?),
            0xc7..=0xc9 => Head::Skip(self.len(1 << (marker - 0xc7))? + 1),
            0xca | 0xce | 0xd2 => Head::Skip(4),
            0xcb | 0xcf | 0xd3 => Head::Skip(8),
            0xcc | 0xd0 => Head::Skip(1),
            0xcd | 0xd1 => Head::Skip(2),
            0xd4..=0xd8 => Head::Skip((1 << (marker - 0xd4)) + 1),
            0xd9..=0xdb => Head::Str(self.len(1 << (marker - 0xd9))?),
            0xdc | 0xdd => Head::Array(self.len(2 << (marker - 0xdc))?),
            0xde | 0xdf => Head::Map(self.len(2 << (marker - 0xde))?),
        })
    }

    /// Skips one complete value, refusing to descend more than `depth` levels.
    fn skip_value(&mut self, depth: usize) -> Result<()> {
        match self.head()? {
            Head::Skip(n) | Head::Str(n) | Head::Bin(n) => self.take(n).map(drop),
            Head::Array(n) => self.skip_children(n, depth),
            Head::Map(n) => self.skip_children(n.saturating_mul(2), depth),
        }
    }

    fn skip_children(&mut self, count: usize, depth: usize) -> Result<()> {
        let depth = depth
            .checked_sub(1)
            .ok_or(ProtocolError::TooDeep(crate::MAX_NESTING_DEPTH))?;
        for _ in 0..count {
            // Most elements of real messages are one- or two-byte integers: skip those
            // without the general decoder.
            match self.buf.get(self.pos) {
                Some(0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff) => self.pos += 1,
                Some(0xcc | 0xd0) if self.pos + 1 < self.buf.len() => self.pos += 2,
                _ => self.skip_value(depth)?,
            }
        }
        Ok(())
    }

    fn str(&mut self) -> Result<Option<&'a [u8]>> {
        let start = self.pos;
        match self.head()? {
            Head::Str(n) => self.take(n).map(Some),
            _ => {
                self.pos = start;
                Ok(None)
            }
        }
    }
}

enum Head {
    /// A scalar whose payload is this many bytes long.
    Skip(usize),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
}

/// Checks that `body` holds exactly one well-formed value nested at most `max_depth` deep.
pub(crate) fn check_body(body: &[u8], max_depth: usize) -> Result<()> {
    let mut cursor = Cursor::new(body);
    cursor.skip_value(max_depth)?;
    if cursor.pos != body.len() {
        return Err(ProtocolError::Malformed("trailing bytes after the message"));
    }
    Ok(())
}

/// Finds the span of a field in a checked `{Variant: {..}}` or `{Variant: [..]}` body: by
/// `name` in the map form, by `index` in the compact array form.
pub(crate) fn field_span(body: &[u8], name: &str, index: usize) -> Result<Range<usize>> {
    let mut cursor = Cursor::new(body);
    let missing = || ProtocolError::Invalid(format!("missing field `{name}`"));
    if !matches!(cursor.head()?, Head::Map(1)) {
        return Err(ProtocolError::Invalid(
            "expected a one-entry map".to_owned(),
        ));
    }
    cursor.skip_value(1)?;
    let fields = cursor.head()?;
    let depth = crate::MAX_NESTING_DEPTH;
    match fields {
        Head::Map(n) => {
            for _ in 0..n {
                let key = cursor.str()?;
                if key.is_none() {
                    cursor.skip_value(depth)?;
                }
                let start = cursor.pos;
                cursor.skip_value(depth)?;
                if key == Some(name.as_bytes()) {
                    return Ok(start..cursor.pos);
                }
            }
            Err(missing())
        }
        Head::Array(n) if index < n => {
            for _ in 0..index {
                cursor.skip_value(depth)?;
            }
            let start = cursor.pos;
            cursor.skip_value(depth)?;
            Ok(start..cursor.pos)
        }
        _ => Err(missing()),
    }
}

/// The fields of a `StateUpdate` in its usual form, read without serde: the hot path of the
/// relay. `None` means "not the usual form" (another variant, a missing, repeated or
/// unusually encoded field, …): the caller then decodes through serde, which gives the
/// same result or the precise error. Everything read is checked as [`check_body`] would
/// (well-formed values, bounded nesting, no trailing bytes), in the same single pass.
pub(crate) fn state_update_fields(body: &[u8]) -> Option<([u8; 16], u64, Range<usize>)> {
    let mut cursor = Cursor::new(body);
    if !matches!(cursor.head().ok()?, Head::Map(1)) || cursor.str().ok()?? != b"StateUpdate" {
        return None;
    }
    let (mut id, mut timestamp, mut data) = (None, None, None);
    let Head::Map(count) = cursor.head().ok()? else {
        return None;
    };
    for _ in 0..count {
        let key = cursor.str().ok()??;
        let start = cursor.pos;
        let slot_filled = if key == b"update_data" {
            cursor.pos = byte_array_end(body, start)?;
            data.replace(start..cursor.pos).is_some()
        } else {
            // The value sits two levels down (variant map, field map).
            cursor.skip_value(crate::MAX_NESTING_DEPTH - 2).ok()?;
            let value = &body[start..cursor.pos];
            match key {
                b"source_instance_id" => id.replace(uuid_bytes(value)?).is_some(),
                b"timestamp" => timestamp.replace(uint(value)?).is_some(),
                _ => false,
            }
        };
        if slot_filled {
            return None;
        }
    }
    if cursor.pos != body.len() {
        return None;
    }
    Some((id?, timestamp?, data?))
}

fn uuid_bytes(value: &[u8]) -> Option<[u8; 16]> {
    match value {
        [0xc4, 16, rest @ ..] => rest.try_into().ok(),
        _ => None,
    }
}

fn uint(value: &[u8]) -> Option<u64> {
    let (&marker, rest) = value.split_first()?;
    let be = |bytes: &[u8]| bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    match marker {
        0x00..=0x7f => Some(u64::from(marker)),
        0xcc..=0xcf => Some(be(rest)),
        _ => None,
    }
}

/// Where the value at `start` ends, if it is a bin, or an array whose every element is an
/// unsigned integer up to 255 (what Sova instances decode as `Vec<u8>`). One tight pass:
/// this is the payload of every update.
fn byte_array_end(body: &[u8], start: usize) -> Option<usize> {
    let mut cursor = Cursor::new(body);
    cursor.pos = start;
    match cursor.head().ok()? {
        Head::Bin(len) => cursor.take(len).ok().map(|_| cursor.pos),
        Head::Array(count) => {
            let mut at = cursor.pos;
            for _ in 0..count {
                match body.get(at)? {
                    0x00..=0x7f => at += 1,
                    0xcc if at + 1 < body.len() => at += 2,
                    _ => return None,
                }
            }
            Some(at)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte_array(value: &[u8]) -> bool {
        byte_array_end(value, 0) == Some(value.len())
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused_without_recursing_further() {
        let mut body = vec![0x91; 100_000];
        body.push(0xc0);
        assert!(matches!(
            check_body(&body, 16),
            Err(ProtocolError::TooDeep(_))
        ));
    }

    #[test]
    fn huge_declared_lengths_end_at_the_buffer() {
        for body in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, 1],
        ] {
            assert!(check_body(body, 16).is_err());
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert!(check_body(&[0xc0, 0xc0], 16).is_err());
    }

    fn state_update(fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x81, 0xab];
        body.extend(b"StateUpdate");
        body.push(0x80 | fields.len() as u8);
        for (key, value) in fields {
            body.push(0xa0 | key.len() as u8);
            body.extend(key.as_bytes());
            body.extend(*value);
        }
        body
    }

    #[test]
    fn the_fast_path_reads_the_usual_form_and_declines_the_rest() {
        let id: &[u8] = &[0xc4, 16, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7];
        let usual = state_update(&[
            ("timestamp", &[0xcd, 1, 0]),
            ("extra", &[0x92, 1, 2]),
            ("update_data", &[0x92, 1, 0xcc, 200]),
            ("source_instance_id", id),
        ]);
        let (uuid, timestamp, span) = state_update_fields(&usual).unwrap();
        assert_eq!((uuid, timestamp), ([7; 16], 256));
        assert_eq!(&usual[span], &[0x92, 1, 0xcc, 200]);

        let repeated = state_update(&[
            ("timestamp", &[1]),
            ("timestamp", &[2]),
            ("update_data", &[0x90]),
            ("source_instance_id", id),
        ]);
        let missing = state_update(&[("timestamp", &[1]), ("source_instance_id", id)]);
        let str_id = state_update(&[
            ("timestamp", &[1]),
            ("update_data", &[0x90]),
            ("source_instance_id", &[0xa1, b'x']),
        ]);
        let big_element = state_update(&[
            ("timestamp", &[1]),
            ("update_data", &[0x91, 0xcd, 1, 0]),
            ("source_instance_id", id),
        ]);
        for declined in [repeated, missing, str_id, big_element] {
            assert!(state_update_fields(&declined).is_none());
        }
    }

    #[test]
    fn byte_arrays_are_bins_or_small_uints() {
        assert!(byte_array(&[0xc4, 2, 1, 2]));
        assert!(byte_array(&[0x93, 1, 0xcc, 0xff, 0x7f]));
        assert!(
            !byte_array(&[0x92, 1, 0xcd, 0x01, 0x00]),
            "256 is not a byte"
        );
        assert!(!byte_array(&[0x91, 0xff]), "negative fixint");
        assert!(!byte_array(&[0xa1, b'x']), "a string");
    }

    #[test]
    fn field_span_finds_map_and_array_forms() {
        // {"V": {"a": 1, "b": [2]}}
        let map = [
            0x81, 0xa1, b'V', 0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0x91, 0x02,
        ];
        assert_eq!(&map[field_span(&map, "b", 1).unwrap()], &[0x91, 0x02]);
        // {"V": [1, [2]]}
        let array = [0x81, 0xa1, b'V', 0x92, 0x01, 0x91, 0x02];
        assert_eq!(&array[field_span(&array, "b", 1).unwrap()], &[0x91, 0x02]);
    }
}
