//! [`CachingClient`]: a tokio-postgres client whose reads go through the
//! cache, and [`CachedQuery`], the same reads with per-query options.

use std::borrow::{Borrow, BorrowMut};
use std::sync::Arc;

use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::{Client, Row, SimpleQueryMessage, Transaction};

use crate::cache::QueryCache;
use crate::dependencies::{self, row_keys};
use crate::entry::ROWS_KIND;
use crate::error::ReaderError;
use crate::fill::Fetched;
use crate::metrics::MetricsSnapshot;
use crate::options::QueryOptions;
use crate::packed::PackedRows;
use crate::row::{CachedRow, RowSet};

/// A client whose `SELECT`s are served from the cache when valid.
///
/// `C` is anything that lends a `tokio_postgres::Client`: the client itself,
/// `Arc<Client>`, `Box<Client>`, `&Client` or `&mut Client` (so a pooled
/// connection such as a `deadpool_postgres::Object` is wrapped as
/// `CachingClient::new(&**object, cache)`).
///
/// Transactions are never cached: use [`CachingClient::transaction`], whose
/// reads go straight to the database. A transaction opened by sending
/// `BEGIN` as a statement through the underlying client is found on a miss:
/// the fill checks, in the same round trip as its query, that the session is
/// outside a transaction block, and stores nothing otherwise (so a rolled
/// back write can never be served to anyone). A hit cannot check without a
/// database round trip, which would cost what the cache saves: inside such
/// a block, a hit returns the committed, cached result, as a read on another
/// connection would, without the block's own uncommitted writes.
#[derive(Debug)]
pub struct CachingClient<C = Client> {
    client: C,
    cache: Arc<QueryCache>,
}

impl<C: Borrow<Client>> CachingClient<C> {
    /// Wraps `client`; `cache` is shared by every client of the process.
    pub fn new(client: C, cache: Arc<QueryCache>) -> CachingClient<C> {
        CachingClient { client, cache }
    }

    /// The underlying client, for anything that must not be cached.
    pub fn client(&self) -> &Client {
        self.client.borrow()
    }

    /// Gives the underlying client back.
    pub fn into_inner(self) -> C {
        self.client
    }

    /// The shared cache state.
    pub fn cache(&self) -> &Arc<QueryCache> {
        &self.cache
    }

    /// The shared counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.cache.metrics()
    }

    /// The reads below, with per-query options.
    pub fn with(&self, options: QueryOptions) -> CachedQuery<'_, C> {
        CachedQuery {
            client: self,
            options,
        }
    }

    /// The rows of a `SELECT`, from the cache when valid.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<CachedRow>, ReaderError> {
        self.with(QueryOptions::new()).query(sql, params).await
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

    /// Starts a transaction on the underlying client. Its reads never touch
    /// the cache: they must see the transaction's own writes and snapshot.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, ReaderError>
    where
        C: BorrowMut<Client>,
    {
        let client: &mut Client = self.client.borrow_mut();
        Ok(client.transaction().await?)
    }
}

/// Reads with options; made by [`CachingClient::with`].
#[derive(Debug)]
pub struct CachedQuery<'a, C> {
    client: &'a CachingClient<C>,
    options: QueryOptions,
}

impl<C: Borrow<Client>> CachedQuery<'_, C> {
    /// See [`CachingClient::query`].
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<CachedRow>, ReaderError> {
        let rows = self.cached(sql, params, ROWS_KIND, pack).await?;
        Ok(rows.into_rows())
    }

    /// See [`CachingClient::query_one`].
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<CachedRow, ReaderError> {
        self.query_opt_inner(sql, params)
            .await?
            .ok_or(ReaderError::NoRows)
    }

    /// See [`CachingClient::query_opt`].
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<CachedRow>, ReaderError> {
        self.query_opt_inner(sql, params).await
    }

    async fn query_opt_inner(
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

    /// See [`CachingClient::count`].
    pub async fn count(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<i64, ReaderError> {
        // Refuse writes before wrapping: the wrapper would hide them.
        if let Err(reason) = crate::sql::analyse(sql) {
            let client: &Client = self.client.client.borrow();
            return Err(crate::learned::not_a_read(client, sql, reason).await);
        }
        let inner = sql.trim().trim_end_matches(';');
        // The newline ends a trailing `--` comment before the parenthesis.
        let wrapped = format!("SELECT count(*) FROM ({inner}\n) AS cm_count");
        let rows = self
            .cached(&wrapped, params, ROWS_KIND, pack)
            .await?
            .into_rows();
        match rows.as_slice() {
            [row] => row
                .try_get::<i64>(0)
                .map_err(|e| ReaderError::BadCount(e.to_string())),
            other => Err(ReaderError::BadCount(format!("{} rows", other.len()))),
        }
    }

    /// See [`CachingClient::query_as`].
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
        self.cached(sql, params, &kind, |rows, _| {
            rows.iter().map(&map).collect()
        })
        .await
    }

    /// The common path: the learned statement, the cache plan, lookup or
    /// fill. `make` turns the live result into the payload to cache.
    async fn cached<P, M>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        kind: &str,
        make: M,
    ) -> Result<P, ReaderError>
    where
        P: Serialize + DeserializeOwned,
        M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
    {
        let client: &Client = self.client.client.borrow();
        let cache = &self.client.cache;
        let info = if self.options.no_cache {
            if let Err(reason) = crate::sql::analyse(sql) {
                return Err(crate::learned::not_a_read(client, sql, reason).await);
            }
            None
        } else {
            let info = cache
                .statement(client, &self.options.namespace, sql)
                .await?;
            Some(info)
        };
        let plan = info.as_deref().and_then(|info| {
            let serialised = dependencies::serialise_params(&info.param_types, params)?;
            cache.plan_for(info, &self.options, kind, sql, serialised)
        });
        let Some(plan) = plan else {
            cache.metrics.bypasses();
            let (payload, _) = read(client, cache, sql, params, make, None).await?;
            return Ok(payload);
        };
        let model = info.as_deref().map(|info| &*info.model);
        cache
            .get_or_fill(&plan, || async {
                let (payload, keys) = read(client, cache, sql, params, make, model).await?;
                Ok::<_, ReaderError>(Fetched {
                    payload,
                    cacheable: keys.is_some(),
                    post_query: keys.unwrap_or_default(),
                })
            })
            .await
    }
}

/// Whether the statement runs in a transaction of its own. Outside a
/// transaction block, a simple-protocol query starts its own transaction at
/// its own start, so both timestamps are the same instant; inside a block
/// (`BEGIN` sent as SQL) the block started earlier. The extended protocol
/// would not do: there the transaction starts at Parse and the statement
/// timestamp moves at Bind. A simple query is sent at its first poll, so it
/// adds no round trip when pipelined with the query.
const OUTSIDE_TRANSACTION_BLOCK: &str = "SELECT statement_timestamp() = transaction_timestamp()";

/// Runs the statement; for a fill (`model` given), also the keys of the
/// rows' objects and their FK parents. `None` keys mean "do not store": the
/// column origins could not be looked up (the neighbour links would be
/// missing), or the session is inside a transaction block, whose reads may
/// hold uncommitted writes that a rollback would leave cached forever.
async fn read<P, M>(
    client: &Client,
    cache: &QueryCache,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    make: M,
    model: Option<&cm_keys::SchemaModel>,
) -> Result<(P, Option<Vec<cm_keys::Key>>), ReaderError>
where
    M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
{
    let statement = client.prepare(sql).await?;
    let Some(model) = model else {
        let rows = client.query(&statement, params).await?;
        let set = RowSet::capture(statement.columns(), &rows)?;
        return Ok((make(&rows, set)?, None));
    };
    // Checked before and after, pipelined in this order on the connection:
    // a block opened or closed by another user of the same client between
    // the checks shows in one of them.
    let (before, rows, after) = tokio::join!(
        client.simple_query(OUTSIDE_TRANSACTION_BLOCK),
        client.query(&statement, params),
        client.simple_query(OUTSIDE_TRANSACTION_BLOCK),
    );
    let rows = rows?;
    let outside = [before, after].iter().all(answered_true);
    let set = RowSet::capture(statement.columns(), &rows)?;
    let mut post_query = None;
    if !outside {
        cache.metrics.in_transaction_fills();
        tracing::debug!(sql, "inside a transaction block: the result is not stored");
    } else {
        match cache.origins(client, model, statement.columns()).await {
            Ok(origins) => {
                post_query = Some(
                    row_keys(&cache.space, model, &origins, &set)
                        .into_iter()
                        .collect(),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "looking up result column names failed; not caching");
            }
        }
    }
    let payload = make(&rows, set)?;
    Ok((payload, post_query))
}

/// Whether a one-value simple query answered `t`; anything else (an error
/// included) is taken as "no".
fn answered_true(answer: &Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>) -> bool {
    let Ok(messages) = answer else {
        return false;
    };
    messages
        .iter()
        .any(|message| matches!(message, SimpleQueryMessage::Row(row) if row.get(0) == Some("t")))
}

/// The payload of `query` and `count`: the result packed for the hit path.
fn pack(_: &[Row], set: RowSet) -> Result<PackedRows, tokio_postgres::Error> {
    Ok(PackedRows::from_set(&set))
}
