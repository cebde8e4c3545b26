//! The one error type of the codec. Every variant names the message field
//! that was wrong, so a log line says where a stream went bad.

/// Why a byte buffer is not a valid pgoutput or walsender message.
///
/// Decoding never panics: any input either decodes or yields one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ended before a field was complete.
    #[error("truncated {field}: needs {needed} bytes, {remaining} left")]
    Truncated {
        /// Message and field being read, e.g. `Relation.columns`.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// A type byte (message, tuple kind, replica identity...) is not one the
    /// protocol defines.
    #[error("unknown {field} tag {tag:#04x} ({})", char::from(*tag).escape_default())]
    UnknownTag {
        /// Which tag was being read.
        field: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A count or length is negative or otherwise impossible.
    #[error("bad length {length} for {field}")]
    BadLength {
        /// The field holding the length.
        field: &'static str,
        /// The value found.
        length: i64,
    },
    /// A string field is not valid UTF-8 (we always ask for `client_encoding=UTF8`).
    #[error("{field} is not valid UTF-8")]
    BadUtf8 {
        /// The string field.
        field: &'static str,
    },
    /// A NUL-terminated string has no terminator before the end of the buffer.
    #[error("{field} has no NUL terminator")]
    MissingNul {
        /// The string field.
        field: &'static str,
    },
    /// A boolean byte holds something other than 0 or 1.
    #[error("{field} holds {value}, expected 0 or 1")]
    BadBool {
        /// The boolean field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// Bytes are left after the last field of a message: the sender speaks a
    /// protocol version or option set we did not negotiate.
    #[error("{count} unexpected trailing bytes after {message}")]
    TrailingBytes {
        /// The message that was decoded.
        message: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A Stream Start arrived while a streamed block was already open.
    #[error("Stream Start for xid {xid} inside the open streamed block of xid {open_xid}")]
    NestedStreamStart {
        /// The xid of the new Stream Start.
        xid: u32,
        /// The xid whose block is still open.
        open_xid: u32,
    },
    /// A Stream Stop arrived with no streamed block open.
    #[error("Stream Stop outside a streamed block")]
    StreamStopOutsideBlock,
}
