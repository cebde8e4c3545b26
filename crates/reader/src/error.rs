//! [`ReaderError`]: what a caller of the reader can see fail.
//!
//! Cache trouble is deliberately absent: a failing memcached degrades to a
//! database read and a counted metric, never to an error.

use thiserror::Error;

/// Why a read through the [`crate::CachingClient`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// The statement is not a plain `SELECT` (a write, DDL, a data-modifying
    /// CTE, `SELECT INTO`, several statements): the reader refuses it rather
    /// than pass a write through a read API.
    #[error("only SELECT statements can be read through the cache: {reason}")]
    NotASelect {
        /// What the statement is instead.
        reason: String,
    },
    /// The database refused or failed the statement: the same error an
    /// uncached `tokio_postgres::Client` call would return, for its
    /// `code()` and `as_db_error()`. It shows the server's message, detail
    /// and hint (`ERROR 42P01: relation "x" does not exist`), and is not
    /// returned again as `source()`, so a printed chain says it once.
    #[error("database: {}", cm_keys::describe_pg_error(.0))]
    Database(tokio_postgres::Error),
    /// `query_one` found no row.
    #[error("query returned no rows, expected exactly one")]
    NoRows,
    /// `query_one` or `query_opt` found more than one row.
    #[error("query returned {count} rows, expected at most one")]
    TooManyRows {
        /// How many rows came back.
        count: usize,
    },
    /// A result column could not be read from a [`crate::CachedRow`].
    #[error(transparent)]
    Column(#[from] ColumnError),
    /// `count` got something that is not one `int8`.
    #[error("count query did not return one bigint: {0}")]
    BadCount(String),
    /// The reader's configuration is inconsistent.
    #[error("bad reader configuration: {0}")]
    Config(String),
    /// The [`crate::ConnectionSource`] could not lend a connection (a pool
    /// that timed out or was closed); a refusal by the database itself is
    /// [`ReaderError::Database`].
    #[error("getting a database connection: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A read with a write token ran on a hot standby that had not
    /// replayed the token within the token wait: its result would predate
    /// the token's commit. Read from the primary, or wait longer.
    #[error(
        "the standby has replayed WAL up to {replayed} but not the write token {token} \
         within the token wait; read from the primary or raise token_wait"
    )]
    NotReplayed {
        /// The read's write token.
        token: crate::WriteToken,
        /// The standby's replay position at the last try.
        replayed: crate::WriteToken,
    },
}

impl From<tokio_postgres::Error> for ReaderError {
    fn from(error: tokio_postgres::Error) -> ReaderError {
        ReaderError::Database(error)
    }
}

/// Why [`crate::CachedRow::try_get`] could not produce a value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ColumnError {
    /// No column has this index or name.
    #[error("no column {0}")]
    NotFound(String),
    /// The Rust type cannot be read from the column's SQL type.
    #[error("column {column}: cannot convert SQL type {sql_type} to Rust type {rust_type}")]
    WrongType {
        /// Column name.
        column: String,
        /// The column's SQL type name.
        sql_type: String,
        /// The requested Rust type.
        rust_type: &'static str,
    },
    /// The value did not decode (including NULL into a non-`Option`).
    #[error("column {column}: {source}")]
    Decode {
        /// Column name.
        column: String,
        /// The `FromSql` error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
