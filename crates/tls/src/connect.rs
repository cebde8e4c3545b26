//! [`connect`]: an SQL connection with tokio-postgres over this crate's TLS.

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::Conninfo;
use crate::error::{ConnectError, TlsConfigError, TlsError};
use crate::verify::find_rejection;

/// The stream under a [`TlsConnection`]: TLS or plain, as negotiated.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// The connection half that [`connect`] returns; spawn it (or poll it) for
/// the client to work.
pub type TlsConnection = Connection<Socket, TlsStream>;

/// Connects to the server `conninfo` names, with `sslmode` and
/// `sslrootcert` honoured as libpq does (see the crate docs).
pub async fn connect(conninfo: &str) -> Result<(Client, TlsConnection), ConnectError> {
    Conninfo::parse(conninfo)?.connect().await
}

impl Conninfo {
    /// The `MakeTlsConnect` for these settings, for code that connects
    /// with the `Config` itself (a connection pool's manager, say). Errors
    /// then come from tokio-postgres, not as [`ConnectError`].
    pub fn make_tls_connect(&self) -> Result<MakeRustlsConnect, TlsConfigError> {
        Ok(self.tls().connector()?.make_tls_connect())
    }

    /// Connects with these settings.
    pub async fn connect(&self) -> Result<(Client, TlsConnection), ConnectError> {
        let connector = self.tls().connector()?;
        self.config()
            .connect(connector.make_tls_connect())
            .await
            .map_err(|error| classify(error, self))
    }
}

/// Names TLS failures as such: a rejected certificate, or a server that
/// declined TLS under a mode that requires it (tokio-postgres says only
/// "server does not support TLS"). Anything else stays a tokio-postgres
/// error.
fn classify(error: tokio_postgres::Error, conninfo: &Conninfo) -> ConnectError {
    if let Some(rejected) = find_rejection(&error, conninfo.tls(), None) {
        return ConnectError::Tls(TlsError::Rejected(rejected));
    }
    let declined = std::error::Error::source(&error)
        .is_some_and(|cause| cause.to_string() == "server does not support TLS");
    if declined {
        return ConnectError::Tls(TlsError::Unsupported(conninfo.tls().mode()));
    }
    ConnectError::Postgres(error)
}
