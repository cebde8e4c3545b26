//! Row images from pgoutput tuples, following what each tuple kind means
//! (`docs/pgoutput.md` §2.2 and §3).

use cm_pgoutput::{ColumnValue, OldTuple, Relation, TupleData};
use thiserror::Error;

use crate::derive::{ChangeKind, RowImage, Value};
use crate::value::{canonical_from_binary, canonical_from_text, CanonicalError};

/// The old and new images of one change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowImages {
    /// The row before the change (UPDATE, DELETE).
    pub old: Option<RowImage>,
    /// The row after the change (INSERT, UPDATE).
    pub new: Option<RowImage>,
}

/// A tuple that does not fit its Relation, or a value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageError {
    /// The tuple has a different number of columns than the Relation.
    #[error("tuple has {tuple} columns but relation {relation} has {expected}")]
    ColumnCount {
        /// `schema.table` of the Relation.
        relation: String,
        /// Columns in the Relation.
        expected: usize,
        /// Columns in the tuple.
        tuple: usize,
    },
    /// A value of a supported type did not parse: the walsender session's
    /// GUCs are probably not the pinned ones.
    #[error("column {column:?}: {source}")]
    Value {
        /// The column.
        column: String,
        /// Why.
        source: CanonicalError,
    },
}

/// Builds the images of a change from its pgoutput tuples.
///
/// * `n` is SQL NULL, except inside a `K` (key-only) old tuple, where a
///   non-key column's `n` means "not sent": [`Value::Unknown`]
///   (`docs/pgoutput.md` §2.2).
/// * `u` (unchanged TOAST) in the new tuple takes the old tuple's value when
///   the old tuple carries one, else [`Value::Unknown`] (`docs/pgoutput.md` §3.3).
/// * An UPDATE without an old tuple means the replica identity columns did
///   not change (`docs/pgoutput.md` §3.1): the old image holds the new
///   values of the columns flagged as key in the Relation, every other
///   column is unknown.
/// * A value whose type has no canonical form is [`Value::Unknown`]: it
///   cannot feed a key, so a key that needs it bumps the table generation.
pub fn images_from_pgoutput(
    relation: &Relation,
    kind: ChangeKind,
    old: Option<&OldTuple>,
    new: Option<&TupleData>,
) -> Result<RowImages, ImageError> {
    let old_image = match old {
        Some(OldTuple::Key(tuple)) => Some(image(relation, tuple, true, None)?),
        Some(OldTuple::Full(tuple)) => Some(image(relation, tuple, false, None)?),
        None => None,
    };
    let new_image = match new {
        Some(tuple) => Some(image(relation, tuple, false, old_image.as_ref())?),
        None => None,
    };
    let old_image = match (kind, old_image, &new_image) {
        (ChangeKind::Update, None, Some(new)) => Some(unchanged_identity(relation, new)),
        (_, old, _) => old,
    };
    Ok(RowImages {
        old: old_image,
        new: new_image,
    })
}

/// Builds a row image from binary values, as the reader has them: each
/// column's name, type oid and binary value (`None` for NULL). A type with
/// no canonical form gives [`Value::Unknown`]; a value that does not decode
/// is an error.
pub fn image_from_binary<'a>(
    columns: impl IntoIterator<Item = (&'a str, u32, Option<&'a [u8]>)>,
) -> Result<RowImage, ImageError> {
    let mut out = RowImage::new();
    for (name, type_oid, raw) in columns {
        let value = match raw {
            None => Value::Null,
            Some(raw) => known(name, canonical_from_binary(type_oid, raw))?,
        };
        out.set(name, value);
    }
    Ok(out)
}

fn image(
    relation: &Relation,
    tuple: &TupleData,
    key_only: bool,
    old: Option<&RowImage>,
) -> Result<RowImage, ImageError> {
    if tuple.columns.len() != relation.columns.len() {
        return Err(ImageError::ColumnCount {
            relation: format!("{}.{}", relation.namespace, relation.name),
            expected: relation.columns.len(),
            tuple: tuple.columns.len(),
        });
    }
    let mut out = RowImage::new();
    for (column, value) in relation.columns.iter().zip(&tuple.columns) {
        let value = if key_only && !column.is_key() {
            Value::Unknown
        } else {
            match value {
                ColumnValue::Null => Value::Null,
                ColumnValue::UnchangedToast => old
                    .map(|o| o.get(&column.name).clone())
                    .unwrap_or(Value::Unknown),
                ColumnValue::Text(bytes) => {
                    let canonical = std::str::from_utf8(bytes)
                        .map_err(|e| CanonicalError::Malformed {
                            type_oid: column.type_oid,
                            reason: format!("text value is not UTF-8: {e}"),
                        })
                        .and_then(|text| canonical_from_text(column.type_oid, text));
                    known(&column.name, canonical)?
                }
                ColumnValue::Binary(bytes) => {
                    known(&column.name, canonical_from_binary(column.type_oid, bytes))?
                }
            }
        };
        out.set(column.name.clone(), value);
    }
    Ok(out)
}

fn known(
    column: &str,
    canonical: Result<crate::CanonicalValue, CanonicalError>,
) -> Result<Value, ImageError> {
    match canonical {
        Ok(v) => Ok(Value::Known(v)),
        Err(CanonicalError::Unsupported { .. }) => Ok(Value::Unknown),
        Err(source) => Err(ImageError::Value {
            column: column.to_owned(),
            source,
        }),
    }
}

fn unchanged_identity(relation: &Relation, new: &RowImage) -> RowImage {
    let mut old = RowImage::new();
    for column in relation.columns.iter().filter(|c| c.is_key()) {
        old.set(column.name.clone(), new.get(&column.name).clone());
    }
    old
}
