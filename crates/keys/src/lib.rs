//! The cache key contract shared by the reader library and the invalidator.
//!
//! Both sides must derive byte-identical keys for the same rows, or a cached
//! result outlives the data it was built from. This crate is the single
//! source of truth for that:
//!
//! * [`KeySpace`] makes every key: `{prefix}:{kind}:{hash}` (`key.rs`).
//! * [`canonical_from_text`] and [`canonical_from_binary`] bring a SQL value
//!   seen as pgoutput text or as a binary wire value to one
//!   [`CanonicalValue`]; types without a safe canonical form are refused
//!   (`value.rs` lists them).
//! * [`Table`] and [`SchemaModel`]: primary keys, foreign keys, replica
//!   identity, partition roots and predicate column sets, discovered from the
//!   catalog ([`discover`]) and adjusted by the user's TOML mapping
//!   ([`SchemaConfig`], [`SchemaModel::build`]).
//! * [`derive()`]: one row change to its [`Invalidation`], with
//!   [`images_from_pgoutput`] to build the row images from pgoutput tuples
//!   (the invalidator's side); [`keys_for_row`] and [`image_from_binary`]
//!   give the reader the keys of a row it read.
//! * [`Heartbeat`] and [`WorkerState`]: the records the invalidator writes
//!   and readers check (`records.rs`).
//! * [`describe_pg_error`]: the one line every crate shows for a PostgreSQL
//!   error (the server's message, not just `db error`).
//!
//! ```
//! use cm_keys::{canonical_from_text, oid, KeySpace, TableName};
//!
//! let space = KeySpace::new("shop")?;
//! let book = TableName::new("public", "book");
//! let id = canonical_from_text(oid::INT4, "42")?;
//! let key = space.object(&book, &[("id", Some(&id))]);
//! assert!(key.as_str().starts_with("shop:f:") && key.as_str().len() == 39);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What this crate must never do
//!
//! * Let a user value or a table name reach a key unhashed: keys are ASCII,
//!   short and free of spaces and control characters whatever the data holds.
//! * Put anything database-specific (name, host, port, oids) into a key:
//!   replicas must share keys.
//! * Guess: a value it cannot canonicalise, or a key input it does not have,
//!   turns into a table generation bump, never into a missing key.
//! * Do network IO, except the read-only catalog queries in [`discover`].
//! * Change a key's hash silently: golden tests pin the scheme.

mod catalog;
mod config;
mod config_tables;
mod datetime;
mod derive;
mod image;
mod key;
mod model;
mod pg_error;
mod records;
mod schema;
mod value;

pub use catalog::{discover, CatalogError};
pub use config::{ConfigError, ForeignKeyConfig, SchemaConfig, TableConfig};
pub use derive::{
    derive, derive_row_keys, keys_for_row, ChangeKind, Invalidation, RowImage, TableKeys, Value,
};
pub use image::{image_from_binary, images_from_pgoutput, ImageError, RowImages};
pub use key::{Key, KeyKind, KeySpace, PrefixError, MAX_PREFIX_LEN};
pub use pg_error::describe_pg_error;
pub use records::{Heartbeat, WorkerState};
pub use schema::{
    Column, ColumnSet, ForeignKey, ForeignKeySource, KeySource, ReplicaIdentity, SchemaModel,
    Table, TableName, TablePolicy,
};
pub use value::{
    canonical_from_binary, canonical_from_text, oid, CanonicalError, CanonicalValue, TypeFamily,
};
