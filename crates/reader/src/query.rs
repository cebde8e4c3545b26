//! [`CachedQuery`]: the reads of [`crate::CachingClient`] and
//! [`crate::CachingPool`] with per-query options, all through the one read
//! path (`read.rs`).

use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::Row;

use crate::cache::QueryCache;
use crate::entry::ROWS_KIND;
use crate::error::ReaderError;
use crate::fill::Outcome;
use crate::options::QueryOptions;
use crate::packed::PackedRows;
use crate::read::read_cached;
use crate::row::{CachedRow, RowSet};
use crate::source::{ConnectionSource, SourceConnection};

/// Reads with options; made by `with` on [`crate::CachingClient`] or
/// [`crate::CachingPool`]. `S` is where connections come from.
#[derive(Debug)]
pub struct CachedQuery<'a, S> {
    source: &'a S,
    cache: &'a QueryCache,
    options: QueryOptions,
}

impl<'a, S: ConnectionSource> CachedQuery<'a, S> {
    pub(crate) fn new(source: &'a S, cache: &'a QueryCache, options: QueryOptions) -> Self {
        CachedQuery {
            source,
            cache,
            options,
        }
    }

    /// The rows of a `SELECT`, from the cache when valid.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<CachedRow>, ReaderError> {
        Ok(self.query_with_outcome(sql, params).await?.0)
    }

    /// Like [`CachedQuery::query`], and how the rows were served (for a
    /// request log, say).
    pub async fn query_with_outcome(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<CachedRow>, Outcome), ReaderError> {
        let (rows, outcome) = self.cached(sql, params, ROWS_KIND, pack).await?;
        Ok((rows.into_rows(), outcome))
    }

    /// Exactly one row, or [`ReaderError::NoRows`] / [`ReaderError::TooManyRows`].
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<CachedRow, ReaderError> {
        self.query_opt(sql, params)
            .await?
            .ok_or(ReaderError::NoRows)
    }

    /// At most one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<CachedRow>, ReaderError> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            count => Err(ReaderError::TooManyRows { count }),
        }
    }

    /// The number of rows the `SELECT` returns (run as
    /// `SELECT count(*) FROM (<sql>)`), from the cache when valid.
    pub async fn count(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<i64, ReaderError> {
        // Refuse writes before wrapping: the wrapper would hide them.
        if let Err(reason) = crate::sql::analyse(sql) {
            let connection = self.source.get().await?;
            return Err(crate::learned::not_a_read(connection.client(), sql, reason).await);
        }
        let inner = sql.trim().trim_end_matches(';');
        // The newline ends a trailing `--` comment before the parenthesis.
        let wrapped = format!("SELECT count(*) FROM ({inner}\n) AS cm_count");
        let (rows, _) = self.cached(&wrapped, params, ROWS_KIND, pack).await?;
        match rows.into_rows().as_slice() {
            [row] => row
                .try_get::<i64>(0)
                .map_err(|e| ReaderError::BadCount(e.to_string())),
            other => Err(ReaderError::BadCount(format!("{} rows", other.len()))),
        }
    }

    /// The rows mapped to `T` by `map`; the `Vec<T>` is what is cached.
    pub async fn query_as<T, F>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: F,
    ) -> Result<Vec<T>, ReaderError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(&Row) -> Result<T, tokio_postgres::Error>,
    {
        let kind = format!("as:{}", std::any::type_name::<T>());
        let make = |rows: &[Row], _: RowSet| rows.iter().map(&map).collect();
        Ok(self.cached(sql, params, &kind, make).await?.0)
    }

    async fn cached<P, M>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        kind: &str,
        make: M,
    ) -> Result<(P, Outcome), ReaderError>
    where
        P: Serialize + DeserializeOwned,
        M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
    {
        read_cached(
            self.source,
            self.cache,
            &self.options,
            sql,
            params,
            kind,
            make,
        )
        .await
    }
}

/// The payload of `query` and `count`: the result packed for the hit path.
fn pack(_: &[Row], set: RowSet) -> Result<PackedRows, tokio_postgres::Error> {
    Ok(PackedRows::from_set(&set))
}

/// The reads without options, for a type with a `with` method returning a
/// [`CachedQuery`]: [`crate::CachingClient`] and [`crate::CachingPool`].
macro_rules! reads_without_options {
    () => {
        /// The rows of a `SELECT`, from the cache when valid.
        pub async fn query(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Vec<CachedRow>, ReaderError> {
            self.with(QueryOptions::new()).query(sql, params).await
        }

        /// Like `query`, and how the rows were served (hit, miss, bypass).
        pub async fn query_with_outcome(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<(Vec<CachedRow>, Outcome), ReaderError> {
            self.with(QueryOptions::new())
                .query_with_outcome(sql, params)
                .await
        }

        /// Exactly one row, or [`ReaderError::NoRows`] / [`ReaderError::TooManyRows`].
        pub async fn query_one(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<CachedRow, ReaderError> {
            self.with(QueryOptions::new()).query_one(sql, params).await
        }

        /// At most one row.
        pub async fn query_opt(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Option<CachedRow>, ReaderError> {
            self.with(QueryOptions::new()).query_opt(sql, params).await
        }

        /// The number of rows the `SELECT` returns (run as
        /// `SELECT count(*) FROM (<sql>)`), from the cache when valid.
        pub async fn count(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<i64, ReaderError> {
            self.with(QueryOptions::new()).count(sql, params).await
        }

        /// The rows mapped to `T` by `map`; the `Vec<T>` is what is cached.
        pub async fn query_as<T, F>(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
            map: F,
        ) -> Result<Vec<T>, ReaderError>
        where
            T: Serialize + DeserializeOwned,
            F: Fn(&Row) -> Result<T, tokio_postgres::Error>,
        {
            self.with(QueryOptions::new())
                .query_as(sql, params, map)
                .await
        }
    };
}

pub(crate) use reads_without_options;
