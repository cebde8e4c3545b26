//! [`CachingClient`]: one tokio-postgres client whose reads go through the
//! cache; the simple program's entry point ([`crate::CachingPool`] is the
//! pooled one, and both share one read path).

use std::borrow::{Borrow, BorrowMut};
use std::sync::{Arc, Mutex};

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
use crate::token::{write_token, WriteToken};

/// The write token and whether the session is outside a transaction block
/// (so the write before it has committed), in one simple query.
const TOKEN_OUTSIDE_TRANSACTION_BLOCK: &str = "SELECT pg_current_wal_insert_lsn()::text, \
     statement_timestamp() = transaction_timestamp()";

/// The token of a [`TOKEN_OUTSIDE_TRANSACTION_BLOCK`] answer, if the write
/// before it committed.
fn token_if_committed(answer: &[tokio_postgres::SimpleQueryMessage]) -> Option<WriteToken> {
    answer.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) if row.get(1) == Some("t") => {
            row.get(0)?.parse().ok()
        }
        _ => None,
    })
}

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
///
/// Read-your-writes: a write made with [`CachingClient::execute`] (or noted
/// with [`CachingClient::note_write`] after a commit) gives the client a
/// [`WriteToken`], and every later read through this client waits for the
/// invalidator to apply it before it is served from the cache
/// (`docs/freshness.md`).
#[derive(Debug)]
pub struct CachingClient<C = Client> {
    client: C,
    cache: Arc<QueryCache>,
    /// The newest write token of this session.
    last_write: Mutex<Option<WriteToken>>,
}

impl<C: Borrow<Client>> CachingClient<C> {
    /// Wraps `client`; `cache` is shared by every client of the process.
    pub fn new(client: C, cache: Arc<QueryCache>) -> CachingClient<C> {
        CachingClient {
            client,
            cache,
            last_write: Mutex::new(None),
        }
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

    /// The reads below, with per-query options (and this session's write
    /// token, if it has one).
    pub fn with(&self, options: QueryOptions) -> CachedQuery<'_, Client> {
        let options = match self.last_write_token() {
            Some(token) => options.after(token),
            None => options,
        };
        CachedQuery::new(self.client.borrow(), &self.cache, options)
    }

    /// Runs a write (any statement; its rows are not returned) and returns
    /// the number of rows it changed. Outside a transaction block the
    /// statement commits on its own, and this session's reads then wait for
    /// its invalidation; inside one (`BEGIN` sent as SQL) the commit comes
    /// later: call [`CachingClient::note_write`] after it. The token is read
    /// in the same round trip as the write.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ReaderError> {
        let client = self.client.borrow();
        // Prepared first: a statement's Bind/Execute go out when its future
        // is first polled, so the token query is pipelined behind the write
        // and runs after it committed.
        let statement = client.prepare(sql).await?;
        let (changed, token) = tokio::join!(
            client.execute(&statement, params),
            client.simple_query(TOKEN_OUTSIDE_TRANSACTION_BLOCK)
        );
        let changed = changed?;
        if let Some(token) = token_if_committed(&token?) {
            self.remember_write(token);
        }
        Ok(changed)
    }

    /// Takes a token for everything committed so far (run it after a
    /// commit made any other way, e.g. [`CachingClient::transaction`]'s
    /// `commit`), remembers it for this session's reads and returns it, to
    /// carry to other sessions (a cookie, a header).
    pub async fn note_write(&self) -> Result<WriteToken, ReaderError> {
        let token = write_token(self.client.borrow()).await?;
        self.remember_write(token);
        Ok(token)
    }

    /// Makes this session's reads wait for `token` too (e.g. one carried
    /// in from another request); the later token wins.
    pub fn remember_write(&self, token: WriteToken) {
        let mut last = self.last_write.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(token.max(*last));
    }

    /// This session's newest write token.
    pub fn last_write_token(&self) -> Option<WriteToken> {
        *self.last_write.lock().unwrap_or_else(|e| e.into_inner())
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
