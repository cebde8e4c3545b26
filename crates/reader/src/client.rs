//! [`CachingClient`]: one tokio-postgres client whose reads go through the
//! cache; the simple program's entry point ([`crate::CachingPool`] is the
//! pooled one, and both share one read path).

use std::borrow::{Borrow, BorrowMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::{Client, Row, Statement, Transaction};

use crate::cache::QueryCache;
use crate::error::ReaderError;
use crate::fill::Outcome;
use crate::metrics::MetricsSnapshot;
use crate::options::QueryOptions;
use crate::query::{reads_without_options, CachedQuery};
use crate::row::CachedRow;
use crate::source::{ConnectionSource, SourceConnection};
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
/// A miss prepares its statement once per client: the client keeps the
/// statements it prepared ([`PreparedClient`]), as a pooled connection's
/// statement cache does.
///
/// Read-your-writes: a write made with [`CachingClient::execute`] (or noted
/// with [`CachingClient::note_write`] after a commit) gives the client a
/// [`WriteToken`], and every later read through this client waits for the
/// invalidator to apply it before it is served from the cache
/// (`docs/freshness.md`).
#[derive(Debug)]
pub struct CachingClient<C = Client> {
    source: PreparedClient<C>,
    cache: Arc<QueryCache>,
    /// The newest write token of this session.
    last_write: Mutex<Option<WriteToken>>,
}

impl<C: Borrow<Client>> CachingClient<C> {
    /// Wraps `client`; `cache` is shared by every client of the process.
    pub fn new(client: C, cache: Arc<QueryCache>) -> CachingClient<C> {
        let capacity = cache.options().statement_cache_capacity;
        CachingClient {
            source: PreparedClient::new(client, capacity),
            cache,
            last_write: Mutex::new(None),
        }
    }

    /// The underlying client, for anything that must not be cached.
    pub fn client(&self) -> &Client {
        self.source.client.borrow()
    }

    /// Gives the underlying client back.
    pub fn into_inner(self) -> C {
        self.source.client
    }

    /// The shared cache state.
    pub fn cache(&self) -> &Arc<QueryCache> {
        &self.cache
    }

    /// The shared counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.cache.metrics()
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
        let client = self.client();
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
        let token = write_token(self.client()).await?;
        self.remember_write(token);
        Ok(token)
    }

    /// Makes this session's reads wait for `token` too (e.g. one carried
    /// in from another request); the later token wins.
    pub fn remember_write(&self, token: WriteToken) {
        let mut last = self
            .last_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = Some(token.max(*last));
    }

    /// This session's newest write token.
    pub fn last_write_token(&self) -> Option<WriteToken> {
        *self
            .last_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a transaction on the underlying client. Its reads never touch
    /// the cache: they must see the transaction's own writes and snapshot.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, ReaderError>
    where
        C: BorrowMut<Client>,
    {
        let client: &mut Client = self.source.client.borrow_mut();
        Ok(client.transaction().await?)
    }
}

impl<C: Borrow<Client> + Send + Sync> CachingClient<C> {
    /// The reads below, with per-query options (and this session's write
    /// token, if it has one).
    pub fn with(&self, options: QueryOptions) -> CachedQuery<'_, PreparedClient<C>> {
        let options = match self.last_write_token() {
            Some(token) => options.after(token),
            None => options,
        };
        CachedQuery::new(&self.source, &self.cache, options)
    }

    reads_without_options!();
}

/// The connection source of a [`CachingClient`]: its one client and the
/// statements a miss prepared on it, by SQL text, so the next miss of the
/// same text runs the prepared statement without preparing it again.
///
/// A prepared statement the server refuses (its result type changed with
/// DDL, or it was deallocated) or whose parameter types differ from the
/// learned ones is forgotten and prepared again, once, as with a pool's
/// statement cache. Bounded by
/// [`ReaderOptions::statement_cache_capacity`](crate::ReaderOptions::statement_cache_capacity):
/// when full, it is emptied (the statements are closed as they drop) and
/// refilled by the next misses.
pub struct PreparedClient<C = Client> {
    client: C,
    capacity: usize,
    statements: Mutex<HashMap<String, Statement>>,
}

impl<C> PreparedClient<C> {
    fn new(client: C, capacity: usize) -> PreparedClient<C> {
        PreparedClient {
            client,
            capacity,
            statements: Mutex::new(HashMap::new()),
        }
    }

    fn statements(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C> std::fmt::Debug for PreparedClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedClient")
            .field("prepared", &self.statements().len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<C: Borrow<Client> + Send + Sync> ConnectionSource for PreparedClient<C> {
    type Connection<'a>
        = &'a PreparedClient<C>
    where
        C: 'a;

    async fn get(&self) -> Result<&PreparedClient<C>, ReaderError> {
        Ok(self)
    }
}

impl<C: Borrow<Client> + Send + Sync> SourceConnection for &PreparedClient<C> {
    fn client(&self) -> &Client {
        self.client.borrow()
    }

    async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client().prepare(sql).await?;
        let mut statements = self.statements();
        if statements.len() >= self.capacity {
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn forget_prepared(&self, sql: &str) {
        self.statements().remove(sql);
    }
}
