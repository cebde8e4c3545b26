//! Ordinary (non-replication) SQL connections, with TLS as the connection
//! string's `sslmode` and `sslrootcert` say (`cm_tls`).

use cm_tls::ConnectError;
use tokio_postgres::Client;

/// An ordinary SQL connection whose connection task runs in the background
/// (its end is logged at debug level; the next query reports the error).
/// TLS follows libpq's rules; a certificate that fails verification, or a
/// server without TLS under `sslmode=require`, is an error that says so.
pub async fn connect_sql(url: &str) -> Result<Client, ConnectError> {
    let (client, connection) = cm_tls::connect(url).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %cm_keys::describe_pg_error(&error), "sql connection closed");
        }
    });
    Ok(client)
}
