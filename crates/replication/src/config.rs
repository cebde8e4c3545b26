//! Connection settings for a replication connection, parsed by
//! tokio-postgres's own `Config` parser (URL or `key=value` form), with
//! `sslmode` and `sslrootcert` read by `cm-tls` as libpq reads them.

use std::path::PathBuf;
use std::time::Duration;

use cm_tls::{Conninfo, TlsSettings};
use tokio_postgres::config::Host;

use crate::error::ReplicationError;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ReplicationConfig {
    /// The server: a TCP host or a Unix socket directory.
    pub target: Target,
    /// Role name; it needs the REPLICATION attribute (or superuser).
    pub user: String,
    /// Password for cleartext, md5 or SCRAM-SHA-256 authentication.
    pub password: Option<Vec<u8>>,
    /// Database; pg_hba matches it for `replication=database` connections.
    pub dbname: String,
    /// Shown in `pg_stat_replication`; keep it out of `synchronous_standby_names`.
    pub application_name: String,
    /// Bound on connecting, negotiating TLS and authenticating.
    pub connect_timeout: Duration,
    /// `sslmode` and `sslrootcert`; TLS applies to TCP targets only.
    pub tls: TlsSettings,
}

impl std::fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A TCP address or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Host name or address and port.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// The socket file `{dir}/.s.PGSQL.{port}`.
    Unix {
        /// Socket directory.
        dir: PathBuf,
        /// Port (part of the socket file name).
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Application name used when the connection string names none.
pub const DEFAULT_APPLICATION_NAME: &str = "cm-invalidator";

impl ReplicationConfig {
    /// Parses a `postgres://` URL or a `key=value` string. Only the first host
    /// is used. `sslmode` and `sslrootcert` mean what they mean to libpq
    /// (see `cm_tls`); a Unix socket never uses TLS.
    pub fn parse(conninfo: &str) -> Result<ReplicationConfig, ReplicationError> {
        let (config, tls) = Conninfo::parse(conninfo)
            .map_err(|e| ReplicationError::Config(e.to_string()))?
            .into_parts();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => Target::Tcp {
                host: host.clone(),
                port,
            },
            Some(Host::Unix(dir)) => Target::Unix {
                dir: dir.clone(),
                port,
            },
            None => Target::Unix {
                dir: PathBuf::from("/var/run/postgresql"),
                port,
            },
        };
        let user = config
            .get_user()
            .map(str::to_owned)
            .ok_or_else(|| ReplicationError::Config("connection string names no user".into()))?;
        Ok(ReplicationConfig {
            target,
            dbname: config.get_dbname().unwrap_or(&user).to_owned(),
            password: config.get_password().map(<[u8]>::to_vec),
            application_name: config
                .get_application_name()
                .unwrap_or(DEFAULT_APPLICATION_NAME)
                .to_owned(),
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
            user,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_key_value_strings() {
        let c = ReplicationConfig::parse("postgres://cm:secret@127.0.0.1:5433/app").unwrap();
        assert_eq!(
            c.target,
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 5433
            }
        );
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("cm", "app"));
        assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
        assert!(
            !format!("{c:?}").contains("secret"),
            "Debug hides the password"
        );

        let c =
            ReplicationConfig::parse("host=/tmp/sock port=5999 user=u dbname=d application_name=w")
                .unwrap();
        assert_eq!(c.target.to_string(), "/tmp/sock/.s.PGSQL.5999");
        assert_eq!(c.application_name, "w");
    }

    #[test]
    fn reads_the_tls_settings() {
        use cm_tls::{RootCert, SslMode};
        let c = ReplicationConfig::parse("postgres://cm@h/app").unwrap();
        assert_eq!(c.tls.mode(), SslMode::Prefer, "libpq's default");
        let c = ReplicationConfig::parse(
            "postgres://cm@h/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(c.tls.mode(), SslMode::VerifyFull);
        assert_eq!(
            c.tls.root_cert(),
            Some(&RootCert::File("/etc/ca.pem".into()))
        );
        let c = ReplicationConfig::parse("host=h user=u sslmode=require").unwrap();
        assert_eq!(c.tls.mode(), SslMode::Require);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let error = ReplicationConfig::parse("host=x user=u sslmode=verify").unwrap_err();
        assert!(error.to_string().contains("sslmode \"verify\""), "{error}");
        assert!(ReplicationConfig::parse("host=x dbname=d").is_err());
        assert!(ReplicationConfig::parse("not a conninfo ===").is_err());
    }
}
