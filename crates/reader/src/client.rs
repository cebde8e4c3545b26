//! [`CachingClient`]: one tokio-postgres client whose reads go through the
//! cache; the simple program's entry point ([`crate::CachingPool`] is the
//! pooled one, and both share one read path).

use std::borrow::{Borrow, BorrowMut};
use std::sync::Arc;

use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::{Client, Row, Transaction};

use crate::cache::QueryCache;
use crate::error::ReaderError;
use crate::fill::Outcome;
use crate::metrics::MetricsSnapshot;
use crate::options::QueryOptions;
use crate::query::{reads_without_options, CachedQuery};
use crate::row::CachedRow;

/// A client whose `SELECT`s are served from the cache when valid.
///
/// `C` is anything that lends a `tokio_postgres::Client`: the client itself,
/// `Arc<Client>`, `Box<Client>`, `&Client` or `&mut Client`. With a
/// connection pool, use [`crate::CachingPool`] instead: it takes a
/// connection only for what a hit cannot answer.
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
    pub fn with(&self, options: QueryOptions) -> CachedQuery<'_, Client> {
        CachedQuery::new(self.client.borrow(), &self.cache, options)
    }

    reads_without_options!();

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
