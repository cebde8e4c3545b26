//! A bounds-checked reader over one message buffer. Every read checks the
//! remaining length first, so a short or hostile buffer becomes a
//! [`DecodeError`], never a panic or an out-of-bounds slice.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::lsn::{Lsn, PgTimestamp};

/// Reads big-endian integers, NUL-terminated strings and byte runs from a
/// `Bytes` buffer. Byte runs are zero-copy slices of the input.
pub(crate) struct Cursor {
    buf: Bytes,
    pos: usize,
}

impl Cursor {
    pub(crate) fn new(buf: Bytes) -> Cursor {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.pos + N;
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            field,
            needed: N,
            remaining: self.remaining(),
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadBool { field, value }),
        }
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(field)?))
    }

    pub(crate) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.take(field)?)))
    }

    pub(crate) fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp(self.i64(field)?))
    }

    /// A count stored as Int16 or Int32 that must not be negative.
    pub(crate) fn count(&mut self, field: &'static str, wide: bool) -> Result<usize, DecodeError> {
        let value = if wide {
            i64::from(self.i32(field)?)
        } else {
            i64::from(self.i16(field)?)
        };
        usize::try_from(value).map_err(|_| DecodeError::BadLength {
            field,
            length: value,
        })
    }

    /// `n` bytes as a zero-copy slice of the input.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                needed: n,
                remaining: self.remaining(),
            });
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// Everything left in the buffer.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    /// A NUL-terminated UTF-8 string (identifiers, origin names, gids).
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { field })?;
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeError::BadUtf8 { field })?
            .to_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    /// Fails when bytes are left after the last field of `message`.
    pub(crate) fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { message, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_truncation_errors() {
        let mut c = Cursor::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(
            c.i32("X.field"),
            Err(DecodeError::Truncated {
                field: "X.field",
                needed: 4,
                remaining: 3
            })
        );
        assert_eq!(c.u8("X.a"), Ok(1));
        assert!(c.bytes(3, "X.b").is_err());
        assert_eq!(c.bytes(2, "X.b").map(|b| b.to_vec()), Ok(vec![2, 3]));
        assert!(c.finish("X").is_ok());
    }

    #[test]
    fn negative_counts_are_bad_lengths() {
        let mut c = Cursor::new(Bytes::from_static(&[0xff, 0xff]));
        assert_eq!(
            c.count("T.n", false),
            Err(DecodeError::BadLength {
                field: "T.n",
                length: -1
            })
        );
    }

    #[test]
    fn strings_need_a_terminator_and_utf8() {
        let mut c = Cursor::new(Bytes::from_static(b"abc"));
        assert_eq!(c.cstr("S"), Err(DecodeError::MissingNul { field: "S" }));
        let mut c = Cursor::new(Bytes::from_static(b"\xff\0"));
        assert_eq!(c.cstr("S"), Err(DecodeError::BadUtf8 { field: "S" }));
        let mut c = Cursor::new(Bytes::from_static(b"ev\0x"));
        assert_eq!(c.cstr("S").as_deref(), Ok("ev"));
        assert_eq!(
            c.finish("S"),
            Err(DecodeError::TrailingBytes {
                message: "S",
                count: 1
            })
        );
    }
}
