//! [`PackedRows`]: a result as the hit path hands it out. Every value lives
//! in one buffer, so decoding a cached result of any size costs a handful of
//! allocations instead of one per value, and each [`CachedRow`] shares that
//! buffer.
//!
//! It is stored exactly as a [`RowSet`] (`[columns, rows]`, each row an
//! array of binary or nil): the entry format does not change, and the
//! consistency checker keeps reading stored results as `RowSet`s.

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::row::{CachedColumn, CachedRow, RowSet};

/// The values of every row of one result, in one buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedValues {
    /// Every non-NULL value's bytes, row after row, column after column.
    data: Vec<u8>,
    /// Each value's range in `data`, `None` for NULL.
    spans: Vec<Option<(usize, usize)>>,
    /// Where each row starts in `spans`, plus a final end.
    row_starts: Vec<usize>,
}

impl PackedValues {
    /// The number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.row_starts.len().saturating_sub(1)
    }

    /// The values of row `row`: bytes, or `None` for NULL.
    pub(crate) fn row(&self, row: usize) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.row_spans(row)
            .iter()
            .map(|span| span.map(|(start, end)| &self.data[start..end]))
    }

    /// The number of values in row `row`.
    pub(crate) fn width(&self, row: usize) -> usize {
        self.row_spans(row).len()
    }

    /// Value `column` of row `row`: `None` when there is no such value,
    /// `Some(None)` for NULL.
    pub(crate) fn value(&self, row: usize, column: usize) -> Option<Option<&[u8]>> {
        let span = self.row_spans(row).get(column)?;
        Some(span.map(|(start, end)| &self.data[start..end]))
    }

    fn row_spans(&self, row: usize) -> &[Option<(usize, usize)>] {
        let start = self.row_starts.get(row).copied().unwrap_or(0);
        let end = self.row_starts.get(row + 1).copied().unwrap_or(0);
        self.spans.get(start..end).unwrap_or(&[])
    }

    fn start_row(&mut self) {
        if self.row_starts.is_empty() {
            self.row_starts.push(0);
        }
    }

    fn end_row(&mut self) {
        self.row_starts.push(self.spans.len());
    }

    fn push(&mut self, value: Option<&[u8]>) {
        let span = value.map(|bytes| {
            let start = self.data.len();
            self.data.extend_from_slice(bytes);
            (start, self.data.len())
        });
        self.spans.push(span);
    }
}

/// A whole result: its columns and its packed values.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedRows {
    columns: Arc<[CachedColumn]>,
    values: Arc<PackedValues>,
}

impl PackedRows {
    /// Packs a live result.
    pub(crate) fn from_set(set: &RowSet) -> PackedRows {
        let mut values = PackedValues::default();
        values.start_row();
        for row in &set.rows {
            for value in row {
                values.push(value.as_deref().map(|b| b.as_slice()));
            }
            values.end_row();
        }
        PackedRows {
            columns: set.columns.clone().into(),
            values: Arc::new(values),
        }
    }

    /// The rows, sharing the columns and the buffer.
    pub(crate) fn into_rows(self) -> Vec<CachedRow> {
        (0..self.values.rows())
            .map(|row| CachedRow::new(self.columns.clone(), self.values.clone(), row))
            .collect()
    }
}

impl Serialize for PackedRows {
    /// The same bytes as the [`RowSet`] it came from.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            columns: &'a [CachedColumn],
            rows: Rows<'a>,
        }
        Shape {
            columns: &self.columns,
            rows: Rows(&self.values),
        }
        .serialize(serializer)
    }
}

struct Rows<'a>(&'a PackedValues);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.rows()))?;
        for row in 0..self.0.rows() {
            seq.serialize_element(&Row(self.0, row))?;
        }
        seq.end()
    }
}

struct Row<'a>(&'a PackedValues, usize);

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.width(self.1)))?;
        for value in self.0.row(self.1) {
            seq.serialize_element(&value.map(serde_bytes::Bytes::new))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for PackedRows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PackedRows, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            columns: Vec<CachedColumn>,
            rows: Packed,
        }
        let shape = Shape::deserialize(deserializer)?;
        Ok(PackedRows {
            columns: shape.columns.into(),
            values: Arc::new(shape.rows.0),
        })
    }
}

/// The rows part, decoded straight into one [`PackedValues`].
struct Packed(PackedValues);

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Packed, D::Error> {
        let mut values = PackedValues::default();
        values.start_row();
        deserializer.deserialize_seq(RowsVisitor(&mut values))?;
        Ok(Packed(values))
    }
}

struct RowsVisitor<'v>(&'v mut PackedValues);

impl<'de> Visitor<'de> for RowsVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut rows: A) -> Result<(), A::Error> {
        let expected = rows.size_hint().unwrap_or(0);
        self.0.row_starts.reserve(expected);
        while rows.next_element_seed(RowSeed(&mut *self.0))?.is_some() {
            self.0.end_row();
            if self.0.rows() == 1 {
                // Rows of one result are alike: size the buffers once.
                let more = expected.saturating_sub(1);
                self.0.spans.reserve(more * self.0.spans.len());
                self.0.data.reserve(more * self.0.data.len());
            }
        }
        Ok(())
    }
}

struct RowSeed<'v>(&'v mut PackedValues);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row: a sequence of binary values or nil")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut row: A) -> Result<(), A::Error> {
        while row.next_element_seed(CellSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One value: binary or nil, copied into the buffer whether the decoder
/// lends its bytes or not.
struct CellSeed<'v>(&'v mut PackedValues);

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a binary value or nil")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.push(None);
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_bytes(self)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<(), E> {
        self.0.push(Some(bytes));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;

    fn set() -> RowSet {
        let column: CachedColumn = rmp_serde::from_slice(
            &rmp_serde::to_vec(&("id", 23u32, "int4", "pg_catalog")).unwrap(),
        )
        .unwrap();
        let value = |v: &[u8]| Some(ByteBuf::from(v.to_vec()));
        RowSet {
            columns: vec![column.clone(), column],
            rows: vec![
                vec![value(&[0, 0, 0, 1]), None],
                vec![value(&[]), value(&[0, 0, 0, 2])],
                vec![None, None],
            ],
        }
    }

    #[test]
    fn packed_rows_are_stored_exactly_as_a_row_set() {
        let set = set();
        let packed = PackedRows::from_set(&set);
        let bytes = rmp_serde::to_vec(&packed).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec(&set).unwrap());
        let back: RowSet = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, set);
        let again: PackedRows = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(again, packed);
    }

    #[test]
    fn rows_read_back_every_value_and_null() {
        let rows = PackedRows::from_set(&set()).into_rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].raw(0), Some(&[0, 0, 0, 1][..]));
        assert_eq!(rows[0].raw(1), None);
        assert_eq!(rows[1].raw(0), Some(&[][..]));
        assert_eq!(rows[1].get::<i32>(1), 2);
        assert_eq!(rows[2].try_get::<Option<i32>>(0).unwrap(), None);
        assert_eq!(rows[2].len(), 2);
        assert!(PackedRows::default().into_rows().is_empty());
    }

    #[test]
    fn a_malformed_row_part_is_an_error() {
        let bad = rmp_serde::to_vec(&(Vec::<CachedColumn>::new(), vec![vec![1u8]])).unwrap();
        assert!(rmp_serde::from_slice::<PackedRows>(&bad).is_err());
    }
}
