//! [`CachedRow`]: a result row that outlives its connection and its trip
//! through the cache, read with `get::<T: FromSql>()` like a
//! `tokio_postgres::Row`.
//!
//! Each value is kept as the binary wire bytes PostgreSQL sent (captured by
//! [`RawValue`], a `FromSql` that accepts every type and copies `raw`), and
//! each column as its name, type oid, type name and type schema. Decoding
//! happens on `get`, through the same `FromSql` impls tokio-postgres uses,
//! with the column's `Type` rebuilt from its oid, so every built-in type
//! reads back exactly as it would from a live row. A non-built-in type is
//! rebuilt as a simple type with its name and schema: `FromSql` impls that
//! only look at the name work, those that need an enum's variants or a
//! composite's fields do not.

use std::error::Error;
use std::sync::Arc;

use postgres_types::{FromSql, Kind, Type};
use serde::{Deserialize, Serialize};

use crate::error::ColumnError;
use crate::packed::PackedValues;

/// A value's binary wire bytes, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue(pub Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<RawValue, Box<dyn Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// One result column: name and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedColumn {
    name: String,
    type_oid: u32,
    type_name: String,
    type_schema: String,
}

impl CachedColumn {
    /// The column of a live result.
    pub fn from_column(column: &tokio_postgres::Column) -> CachedColumn {
        CachedColumn {
            name: column.name().to_owned(),
            type_oid: column.type_().oid(),
            type_name: column.type_().name().to_owned(),
            type_schema: column.type_().schema().to_owned(),
        }
    }

    /// The column's name (its alias in the query, if any).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column's type oid.
    pub fn type_oid(&self) -> u32 {
        self.type_oid
    }

    /// The column's type: the built-in one for a built-in oid, else a simple
    /// type carrying the name and schema.
    pub fn type_(&self) -> Type {
        Type::from_oid(self.type_oid).unwrap_or_else(|| {
            Type::new(
                self.type_name.clone(),
                self.type_oid,
                Kind::Simple,
                self.type_schema.clone(),
            )
        })
    }
}

/// Something that picks a column of a [`CachedRow`]: an index or a name.
pub trait ColumnIndex: sealed::Sealed {
    /// The column's position, if there is one.
    fn position(&self, columns: &[CachedColumn]) -> Option<usize>;
    /// How to name it in an error.
    fn describe(&self) -> String;
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[CachedColumn]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }

    fn describe(&self) -> String {
        format!("at index {self}")
    }
}

impl ColumnIndex for str {
    fn position(&self, columns: &[CachedColumn]) -> Option<usize> {
        columns.iter().position(|c| c.name == self)
    }

    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl<T: ColumnIndex + ?Sized> ColumnIndex for &T {
    fn position(&self, columns: &[CachedColumn]) -> Option<usize> {
        (**self).position(columns)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for usize {}
    impl Sealed for str {}
    impl<T: Sealed + ?Sized> Sealed for &T {}
}

/// One row of a result, from the cache or from the database. Rows of one
/// result share its columns and one buffer of values.
#[derive(Clone)]
pub struct CachedRow {
    columns: Arc<[CachedColumn]>,
    values: Arc<PackedValues>,
    row: usize,
}

impl CachedRow {
    pub(crate) fn new(
        columns: Arc<[CachedColumn]>,
        values: Arc<PackedValues>,
        row: usize,
    ) -> CachedRow {
        CachedRow {
            columns,
            values,
            row,
        }
    }

    /// The columns.
    pub fn columns(&self) -> &[CachedColumn] {
        &self.columns
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.values.width(self.row)
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A value's binary wire bytes (`None` for NULL).
    pub fn raw(&self, index: impl ColumnIndex) -> Option<&[u8]> {
        let i = index.position(&self.columns)?;
        self.values.value(self.row, i).flatten()
    }

    /// Decodes a value, as `tokio_postgres::Row::get` does.
    ///
    /// # Panics
    ///
    /// When the column does not exist or the value does not convert to `T`
    /// (as `tokio_postgres::Row::get` does); use [`CachedRow::try_get`] to
    /// handle that.
    #[track_caller]
    pub fn get<'a, T: FromSql<'a>>(&'a self, index: impl ColumnIndex) -> T {
        match self.try_get(index) {
            Ok(value) => value,
            Err(error) => panic!("error retrieving column: {error}"),
        }
    }

    /// Decodes a value, as `tokio_postgres::Row::try_get` does.
    pub fn try_get<'a, T: FromSql<'a>>(
        &'a self,
        index: impl ColumnIndex,
    ) -> Result<T, ColumnError> {
        let i = index
            .position(&self.columns)
            .ok_or_else(|| ColumnError::NotFound(index.describe()))?;
        let column = &self.columns[i];
        let ty = column.type_();
        if !T::accepts(&ty) {
            return Err(ColumnError::WrongType {
                column: column.name.clone(),
                sql_type: ty.name().to_owned(),
                rust_type: std::any::type_name::<T>(),
            });
        }
        let raw = self.values.value(self.row, i).flatten();
        T::from_sql_nullable(&ty, raw).map_err(|source| ColumnError::Decode {
            column: column.name.clone(),
            source,
        })
    }
}

/// The columns and values of a whole result, as cached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RowSet {
    pub(crate) columns: Vec<CachedColumn>,
    pub(crate) rows: Vec<Vec<Option<serde_bytes::ByteBuf>>>,
}

impl RowSet {
    /// Captures live rows; `columns` is the statement's result description.
    pub(crate) fn capture(
        columns: &[tokio_postgres::Column],
        rows: &[tokio_postgres::Row],
    ) -> Result<RowSet, tokio_postgres::Error> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let raw: Option<RawValue> = row.try_get(i)?;
                values.push(raw.map(|RawValue(bytes)| serde_bytes::ByteBuf::from(bytes)));
            }
            out.push(values);
        }
        Ok(RowSet {
            columns: columns.iter().map(CachedColumn::from_column).collect(),
            rows: out,
        })
    }
}

impl PartialEq for CachedRow {
    /// Same columns and the same values.
    fn eq(&self, other: &CachedRow) -> bool {
        self.columns == other.columns && self.values.row(self.row).eq(other.values.row(other.row))
    }
}

impl Eq for CachedRow {}

impl std::fmt::Debug for CachedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRow")
            .field("columns", &self.columns)
            .field("values", &self.values.row(self.row).collect::<Vec<_>>())
            .finish()
    }
}
