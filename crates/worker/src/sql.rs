//! Ordinary (non-replication) SQL connections.

use tokio_postgres::{Client, NoTls};

/// An ordinary SQL connection whose connection task runs in the background
/// (its end is logged at debug level; the next query reports the error).
pub async fn connect_sql(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %cm_keys::describe_pg_error(&error), "sql connection closed");
        }
    });
    Ok(client)
}
