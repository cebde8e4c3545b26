//! TupleData: the column values of one row image.
//!
//! Columns are positional against the latest Relation message for the table,
//! not against `attnum` (dropped columns are left out).

use bytes::Bytes;

/// The values of one row image (`N`, `K` or `O` tuple).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// One value per published column, in Relation order.
    pub columns: Vec<ColumnValue>,
}

/// One column's value in a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL, or, inside a `K` old tuple, "not part of the key and not sent".
    Null,
    /// `u`: an unchanged TOASTed value that was not sent; the column did not change.
    UnchangedToast,
    /// `t`: the type's text output, in the walsender session's `client_encoding`
    /// and date/time settings.
    Text(Bytes),
    /// `b`: the type's binary send format (only with `binary 'true'`).
    Binary(Bytes),
}

impl ColumnValue {
    /// The text bytes of a `t` value.
    pub fn as_text_bytes(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The text of a `t` value as `str`; `None` for other kinds, an error when
    /// the bytes are not UTF-8 (they always are under `client_encoding=UTF8`).
    pub fn as_str(&self) -> Option<Result<&str, std::str::Utf8Error>> {
        self.as_text_bytes().map(std::str::from_utf8)
    }
}
