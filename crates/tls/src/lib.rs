//! TLS for PostgreSQL connections: libpq's `sslmode` semantics over rustls,
//! for tokio-postgres SQL connections and for clients that speak the wire
//! protocol themselves (the walsender connection of `cm-replication`).
//!
//! A connection string (`postgres://` URL or `key=value` pairs) may carry
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`)
//! and `sslrootcert` (a PEM file, or `system` for the platform's roots).
//! [`Conninfo::parse`] reads those two as libpq does and leaves every
//! other parameter to tokio-postgres's own parser; [`connect`] opens an SQL
//! connection with them; [`TlsConnector::negotiate`] runs the SSLRequest
//! and the handshake on a stream a client opened itself.
//!
//! The rules, as in libpq (`docs/tls.md` has the full table):
//!
//! * `prefer` (the default) uses TLS when the server offers it and goes on
//!   in the clear when it does not; `require` and stricter fail instead,
//!   naming the mode.
//! * `prefer` and `require` verify nothing, unless `sslrootcert` names a
//!   file: then the chain is verified, as with `verify-ca`.
//! * `verify-ca` verifies the chain up to a root in `sslrootcert`;
//!   `verify-full` also checks that the certificate names the host
//!   (subjectAltName). Both need `sslrootcert`; `sslrootcert=system` needs
//!   `verify-full` and makes it the default.
//! * Unix-domain sockets never use TLS.
//!
//! rustls with the `ring` provider does the cryptography; this crate sets
//! no process-wide provider.
//!
//! What this crate must never do: send a password or a query before the
//! mode's verification passed, fall back to a plain connection under
//! `require` or stricter (or after a failed handshake), accept a
//! certificate that fails the check the mode asks for, or show a password
//! in an error.

mod connect;
mod connector;
mod conninfo;
mod error;
mod mode;
mod roots;
mod settings;
mod split;
mod verify;

pub use connect::{connect, TlsConnection, TlsStream};
pub use connector::{Negotiated, TlsConnector};
pub use conninfo::Conninfo;
pub use error::{CertificateRejected, ConnectError, TlsConfigError, TlsError};
pub use mode::{RootCert, SslMode};
pub use settings::{TlsSettings, Verification};
