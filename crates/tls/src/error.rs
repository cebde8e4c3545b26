//! What can go wrong: bad settings ([`TlsConfigError`]), the TLS exchange
//! with a server ([`TlsError`], [`CertificateRejected`]), and a whole
//! tokio-postgres connection attempt ([`ConnectError`]).

use std::path::PathBuf;

use crate::mode::SslMode;

/// The connection string or its TLS settings cannot be used. Each variant
/// names the parameter that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// `sslmode` has a value libpq does not know.
    #[error(
        "sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full \
         (allow is not supported: it would send credentials in the clear first)"
    )]
    BadSslMode(String),
    /// `sslrootcert` is empty.
    #[error("sslrootcert is empty: give a PEM file path, or `system` for the platform's roots")]
    EmptyRootCert,
    /// A value is not valid UTF-8 once percent-decoded.
    #[error("connection parameter {0} is not valid UTF-8 once percent-decoded")]
    NotUtf8(String),
    /// A libpq TLS parameter this crate does not implement.
    #[error(
        "connection parameter {0} is not supported (client certificates and CRLs are not \
         implemented; only sslmode and sslrootcert are)"
    )]
    Unsupported(String),
    /// `sslnegotiation=direct` (PostgreSQL 17's direct TLS) was asked for.
    #[error(
        "sslnegotiation=direct is not supported (the walsender connection negotiates with an \
         SSLRequest); leave sslnegotiation out"
    )]
    DirectNegotiation,
    /// `verify-ca` or `verify-full` without a root certificate to verify against.
    #[error(
        "sslmode={0} needs sslrootcert: a PEM file with the CA that signed the server's \
         certificate, or `system` for the platform's roots"
    )]
    MissingRootCert(SslMode),
    /// `sslrootcert=system` with a mode that does not check the host name.
    #[error("weak sslmode {0} may not be used with sslrootcert=system (use verify-full)")]
    WeakModeWithSystemRoots(SslMode),
    /// tokio-postgres refused the rest of the connection string.
    #[error("connection string: {}", describe_postgres_error(.0))]
    Conninfo(tokio_postgres::Error),
    /// The `sslrootcert` file could not be read or holds no certificate.
    #[error("sslrootcert {}: {reason}", path.display())]
    RootCertFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// `sslrootcert=system`, but the platform store had no usable certificate.
    #[error("sslrootcert=system: no usable root certificate in the platform store ({0})")]
    NoSystemRoots(String),
    /// rustls refused to build a client configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's certificate failed the verification the `sslmode` asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateRejected {
    /// The chain is good but the certificate does not name the host.
    #[error("TLS: certificate not valid for host {host:?} (sslmode=verify-full): {detail}")]
    WrongHost {
        /// The host name or address connected to.
        host: String,
        /// Which names the certificate does hold.
        detail: String,
    },
    /// No CA in `sslrootcert` signed the certificate.
    #[error(
        "TLS: the server's certificate is not signed by a CA in sslrootcert={root} \
         (sslmode={mode})"
    )]
    UnknownIssuer {
        /// The mode in force.
        mode: SslMode,
        /// The root certificates used.
        root: String,
    },
    /// Anything else wrong with the certificate (expired, bad usage...).
    #[error(
        "TLS: the server's certificate was rejected (sslmode={mode}, sslrootcert={root}): {reason}"
    )]
    Invalid {
        /// The mode in force.
        mode: SslMode,
        /// The root certificates used.
        root: String,
        /// rustls's reason.
        reason: String,
    },
}

/// Negotiating TLS on an open connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server answered the SSLRequest with no, and the mode requires TLS.
    #[error("server does not support TLS but sslmode={0}")]
    Unsupported(SslMode),
    /// The server's certificate failed verification.
    #[error(transparent)]
    Rejected(#[from] CertificateRejected),
    /// The host cannot be a TLS server name.
    #[error("TLS: {host:?} is not a valid server name: {reason}")]
    ServerName {
        /// The host.
        host: String,
        /// Why not.
        reason: String,
    },
    /// The SSLRequest exchange or the handshake failed otherwise.
    #[error("TLS handshake (sslmode={mode}): {source}")]
    Handshake {
        /// The mode in force.
        mode: SslMode,
        /// The I/O or TLS protocol error.
        #[source]
        source: std::io::Error,
    },
}

impl TlsError {
    /// Errors that only the operator can fix (the server's TLS setup or the
    /// connection string), as opposed to a broken connection that a retry
    /// may get past.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            TlsError::Unsupported(_) | TlsError::Rejected(_) | TlsError::ServerName { .. }
        )
    }
}

/// Opening an SQL connection with [`crate::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string or its TLS settings are unusable.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// TLS was required and refused, or the certificate failed verification.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Anything else: the server is unreachable, refused the login, ...
    #[error("{}", describe_postgres_error(.0))]
    Postgres(tokio_postgres::Error),
}

impl ConnectError {
    /// The tokio-postgres error, when the failure was not about TLS.
    pub fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Postgres(error) => Some(error),
            _ => None,
        }
    }

    /// True for errors that only the operator can fix: a bad connection
    /// string, a missing root certificate, TLS refused by the server, or a
    /// certificate that fails verification.
    pub fn is_misconfiguration(&self) -> bool {
        match self {
            ConnectError::Config(_) => true,
            ConnectError::Tls(error) => error.is_misconfiguration(),
            ConnectError::Postgres(_) => false,
        }
    }
}

/// The server's fields for an error it sent (`FATAL 28P01: password
/// authentication failed ...`), else the error and its causes, each said once.
fn describe_postgres_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let piece = error.to_string();
        if !text.contains(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        cause = error.source();
    }
    text
}
