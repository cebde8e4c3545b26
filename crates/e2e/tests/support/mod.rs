//! Support for the randomized end-to-end test: schema, generated writes,
//! the three writer clients, the cached readers and the invalidator process.
// Each test binary uses its own part of the support code.
#![allow(dead_code)]

pub mod delay;
pub mod invalidator;
pub mod ops;
pub mod readers;
pub mod schema;
pub mod writers;

/// A plain tokio-postgres connection (a client that knows nothing of the
/// cache), its connection task spawned.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
