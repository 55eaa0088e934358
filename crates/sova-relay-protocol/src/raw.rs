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
            self.skip_value(depth)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
