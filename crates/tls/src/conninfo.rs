//! [`Conninfo`]: a libpq-style connection string read into a
//! tokio-postgres `Config` plus [`TlsSettings`].

use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as PgSslMode, SslNegotiation};
use tokio_postgres::Config;

use crate::error::TlsConfigError;
use crate::mode::{RootCert, SslMode};
use crate::settings::TlsSettings;
use crate::split::take_params;

/// Parameters read here rather than by tokio-postgres.
const OURS: &[&str] = &["sslmode", "sslrootcert"];
/// libpq TLS parameters that are refused with a clear error (tokio-postgres
/// would call them unknown options).
const UNSUPPORTED: &[&str] = &["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// A connection string (`postgres://` URL or `key=value` pairs), with
/// `sslmode` and `sslrootcert` read as libpq reads them and everything else
/// by tokio-postgres.
#[derive(Debug, Clone)]
pub struct Conninfo {
    config: Config,
    tls: TlsSettings,
}

impl Conninfo {
    /// Parses `conninfo`. The `Config`'s own `ssl_mode` is set to what
    /// tokio-postgres must do: `disable` for `disable` and for a string that
    /// names only Unix sockets (which never use TLS, as in libpq), `prefer`
    /// for `prefer`, `require` for `require`, `verify-ca` and `verify-full`.
    pub fn parse(conninfo: &str) -> Result<Conninfo, TlsConfigError> {
        let (tls, rest) = take_tls_settings(conninfo)?;
        let mut config = Config::from_str(&rest).map_err(TlsConfigError::Conninfo)?;
        if config.get_ssl_negotiation() == SslNegotiation::Direct {
            return Err(TlsConfigError::DirectNegotiation);
        }
        config.ssl_mode(postgres_ssl_mode(&config, tls.mode()));
        Ok(Conninfo { config, tls })
    }

    /// The tokio-postgres configuration (without the TLS parameters).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Both parts.
    pub fn into_parts(self) -> (Config, TlsSettings) {
        (self.config, self.tls)
    }
}

impl FromStr for Conninfo {
    type Err = TlsConfigError;

    fn from_str(conninfo: &str) -> Result<Conninfo, TlsConfigError> {
        Conninfo::parse(conninfo)
    }
}

impl TlsSettings {
    /// Reads only the TLS parameters of `conninfo`, leaving the rest
    /// unchecked: for validating a configuration before connecting.
    pub fn from_conninfo(conninfo: &str) -> Result<TlsSettings, TlsConfigError> {
        Ok(take_tls_settings(conninfo)?.0)
    }
}

/// The TLS settings and the rest of the string, for tokio-postgres.
fn take_tls_settings(conninfo: &str) -> Result<(TlsSettings, String), TlsConfigError> {
    let mut names = OURS.to_vec();
    names.extend_from_slice(UNSUPPORTED);
    let split = take_params(conninfo, &names)?;
    let (mut mode, mut root_cert) = (None, None);
    // The last occurrence wins, as in libpq.
    for (key, value) in split.taken {
        match key.as_str() {
            "sslmode" => mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => root_cert = Some(RootCert::parse(&value)?),
            _ => return Err(TlsConfigError::Unsupported(key)),
        }
    }
    Ok((TlsSettings::new(mode, root_cert)?, split.rest))
}

/// What tokio-postgres must do with the SSLRequest; verification is the
/// connector's business.
fn postgres_ssl_mode(config: &Config, mode: SslMode) -> PgSslMode {
    let hosts = config.get_hosts();
    let only_sockets = !hosts.is_empty()
        && config.get_hostaddrs().is_empty()
        && hosts.iter().all(|host| matches!(host, Host::Unix(_)));
    match mode {
        _ if only_sockets => PgSslMode::Disable,
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Verification;

    fn parse(conninfo: &str) -> Conninfo {
        Conninfo::parse(conninfo).unwrap()
    }

    fn error(conninfo: &str) -> String {
        Conninfo::parse(conninfo).unwrap_err().to_string()
    }

    #[test]
    fn every_mode_reads_from_a_url_and_from_key_value_pairs() {
        for (mode, pg) in [
            (SslMode::Disable, PgSslMode::Disable),
            (SslMode::Prefer, PgSslMode::Prefer),
            (SslMode::Require, PgSslMode::Require),
            (SslMode::VerifyCa, PgSslMode::Require),
            (SslMode::VerifyFull, PgSslMode::Require),
        ] {
            let url =
                format!("postgres://u@db.example:5433/app?sslmode={mode}&sslrootcert=/ca.pem");
            let kv = format!("host=db.example user=u sslmode={mode} sslrootcert='/ca.pem'");
            for conninfo in [url, kv] {
                let c = parse(&conninfo);
                assert_eq!(c.tls().mode(), mode, "{conninfo}");
                assert_eq!(c.config().get_ssl_mode(), pg, "{conninfo}");
                assert_eq!(c.tls().root_cert(), Some(&RootCert::File("/ca.pem".into())));
                assert_eq!(c.config().get_user(), Some("u"));
            }
        }
    }

    #[test]
    fn the_defaults_are_libpqs() {
        let c = parse("postgres://u@h/app");
        assert_eq!(c.tls().mode(), SslMode::Prefer);
        assert_eq!(c.config().get_ssl_mode(), PgSslMode::Prefer);
        assert_eq!(c.tls().verification(), Verification::None);
        let c = parse("postgres://u@h/app?sslrootcert=system");
        assert_eq!(c.tls().mode(), SslMode::VerifyFull);
        assert_eq!(c.tls().root_cert(), Some(&RootCert::System));
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let c = parse("host=/var/run/postgresql user=u sslmode=require");
        assert_eq!(c.tls().mode(), SslMode::Require);
        assert_eq!(c.config().get_ssl_mode(), PgSslMode::Disable);
        let c = parse("postgres://u@%2Ftmp/app?sslmode=require");
        assert_eq!(c.config().get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(error("postgres://h/db?sslmode=verify").contains("sslmode \"verify\""));
        assert!(error("host=h sslmode=allow").contains("\"allow\""));
        assert!(error("host=h sslmode=verify-full").contains("needs sslrootcert"));
        assert!(error("postgres://h/db?sslrootcert=").contains("sslrootcert is empty"));
        assert!(error("host=h sslrootcert=system sslmode=verify-ca").contains("weak sslmode"));
        assert!(error("host=h sslcert=/c.pem").contains("sslcert is not supported"));
        assert!(error("host=h sslnegotiation=direct sslmode=require").contains("direct"));
        assert!(
            error("host=h bogus=1").contains("bogus"),
            "tokio-postgres names it"
        );
    }

    #[test]
    fn the_tls_parameters_alone_can_be_checked() {
        let tls = TlsSettings::from_conninfo("not a conninfo").unwrap();
        assert_eq!(tls, TlsSettings::default());
        let error = TlsSettings::from_conninfo("postgres://h/db?sslmode=verify-ca").unwrap_err();
        assert!(error.to_string().contains("needs sslrootcert"), "{error}");
    }

    #[test]
    fn the_password_never_shows_in_an_error() {
        let text = error("postgres://u:hunter2@h/db?sslmode=nope");
        assert!(!text.contains("hunter2"), "{text}");
        let text = error("host=h password=hunter2 port=notaport");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
