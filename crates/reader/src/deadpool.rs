//! deadpool-postgres as a [`ConnectionSource`] (feature `deadpool`): a read
//! checks a connection out only when it reaches the database, and a miss
//! prepares through the connection's statement cache (`prepare_cached`), so
//! each statement is prepared once per pooled connection.

use std::future::Future;

use deadpool_postgres::{Object, Pool, PoolError};
use tokio_postgres::{Client, Statement};

use crate::error::ReaderError;
use crate::source::{ConnectionSource, SourceConnection};

impl ConnectionSource for Pool {
    type Connection<'a> = Object;

    async fn get(&self) -> Result<Object, ReaderError> {
        Pool::get(self).await.map_err(pool_error)
    }
}

impl SourceConnection for Object {
    fn client(&self) -> &Client {
        self
    }

    fn prepare(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(sql)
    }

    fn forget_prepared(&self, sql: &str) {
        self.statement_cache.remove(sql, &[]);
    }
}

/// The database's own error when it refused the connection, else the pool's.
fn pool_error(error: PoolError) -> ReaderError {
    match error {
        PoolError::Backend(error) => ReaderError::Database(error),
        other => ReaderError::Connection(Box::new(other)),
    }
}
