//! Where a cached read gets its database connection: [`ConnectionSource`]
//! (a pool, or one client) lends a [`SourceConnection`]. The read path asks
//! for one only when it must reach the database (learning a statement, a
//! miss, a read-through), so a hit never waits for a connection.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::{Client, Statement};

use crate::error::ReaderError;

/// Lends database connections to the reader: a connection pool, or a single
/// [`Client`] (which lends itself).
///
/// Implemented for [`Client`], for `&S` and `Arc<S>` of any source, and,
/// with the `deadpool` feature, for `deadpool_postgres::Pool`. Another pool
/// plugs in through a newtype:
///
/// ```
/// use cm_reader::{ConnectionSource, ReaderError, SourceConnection};
///
/// /// One connection behind a lock: a pool of size one.
/// struct Locked(tokio::sync::Mutex<tokio_postgres::Client>);
///
/// struct Guard<'a>(tokio::sync::MutexGuard<'a, tokio_postgres::Client>);
///
/// impl SourceConnection for Guard<'_> {
///     fn client(&self) -> &tokio_postgres::Client {
///         &self.0
///     }
/// }
///
/// impl ConnectionSource for Locked {
///     type Connection<'a> = Guard<'a>;
///     async fn get(&self) -> Result<Guard<'_>, ReaderError> {
///         Ok(Guard(self.0.lock().await))
///     }
/// }
/// ```
pub trait ConnectionSource: Send + Sync {
    /// A lent connection; dropping it gives it back.
    type Connection<'a>: SourceConnection + 'a
    where
        Self: 'a;

    /// A connection, waiting for one while none is free.
    fn get(&self) -> impl Future<Output = Result<Self::Connection<'_>, ReaderError>> + Send;
}

/// A connection lent by a [`ConnectionSource`].
pub trait SourceConnection: Send + Sync {
    /// The client to run statements on.
    fn client(&self) -> &Client;

    /// Prepares `sql` for a miss. A pool with a statement cache answers from
    /// it (deadpool's `prepare_cached`; a [`crate::CachingClient`]'s own
    /// [`crate::PreparedClient`]), so a statement is prepared once per
    /// connection; the default prepares it every time.
    fn prepare(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.client().prepare(sql)
    }

    /// Drops `sql` from the connection's statement cache, if it has one: the
    /// server refused the cached statement (its result type changed with
    /// DDL, or it was deallocated) or its parameter types changed.
    fn forget_prepared(&self, sql: &str) {
        let _ = sql;
    }
}

impl ConnectionSource for Client {
    type Connection<'a> = &'a Client;

    async fn get(&self) -> Result<&Client, ReaderError> {
        Ok(self)
    }
}

impl SourceConnection for &Client {
    fn client(&self) -> &Client {
        self
    }
}

impl<S: ConnectionSource> ConnectionSource for &S {
    type Connection<'a>
        = S::Connection<'a>
    where
        Self: 'a;

    fn get(&self) -> impl Future<Output = Result<Self::Connection<'_>, ReaderError>> + Send {
        (**self).get()
    }
}

impl<S: ConnectionSource> ConnectionSource for Arc<S> {
    type Connection<'a>
        = S::Connection<'a>
    where
        Self: 'a;

    fn get(&self) -> impl Future<Output = Result<Self::Connection<'_>, ReaderError>> + Send {
        (**self).get()
    }
}

/// A connection taken from its source at the first need, then kept for the
/// rest of one read.
pub(crate) struct LazyConnection<'s, S: ConnectionSource> {
    source: &'s S,
    connection: Option<S::Connection<'s>>,
}

impl<'s, S: ConnectionSource> LazyConnection<'s, S> {
    pub(crate) fn new(source: &'s S) -> LazyConnection<'s, S> {
        LazyConnection {
            source,
            connection: None,
        }
    }

    /// The connection, taken from the source now if not yet.
    pub(crate) async fn get(&mut self) -> Result<&S::Connection<'s>, ReaderError> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.source.get().await?,
        };
        Ok(self.connection.insert(connection))
    }

    /// The connection itself, to give back as soon as the caller drops it.
    pub(crate) async fn into_connection(self) -> Result<S::Connection<'s>, ReaderError> {
        match self.connection {
            Some(connection) => Ok(connection),
            None => self.source.get().await,
        }
    }
}
