//! The two libpq parameters this crate implements: `sslmode` and
//! `sslrootcert`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::TlsConfigError;

/// libpq's `sslmode`, less `allow` (plain first, TLS only if refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is verified only when `sslrootcert`
    /// names a file (as libpq does: then it behaves like `verify-ca`).
    Require,
    /// TLS, and the certificate must chain to a root in `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// True for the modes that fail rather than talk in the clear.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsConfigError;

    fn from_str(value: &str) -> Result<SslMode, TlsConfigError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(TlsConfigError::BadSslMode(other.to_owned())),
        }
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RootCert {
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
    /// `system`: the platform's trusted roots (on Linux the OpenSSL
    /// store, e.g. `/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    System,
}

impl RootCert {
    /// Reads an `sslrootcert` value: `system`, else a file path.
    pub fn parse(value: &str) -> Result<RootCert, TlsConfigError> {
        match value {
            "" => Err(TlsConfigError::EmptyRootCert),
            "system" => Ok(RootCert::System),
            path => Ok(RootCert::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(path) => write!(f, "{}", path.display()),
            RootCert::System => f.write_str("system"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_and_print_as_libpq_spells_them() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.as_str().parse::<SslMode>().ok(), Some(mode));
        }
        let error = "allow".parse::<SslMode>().err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("\"allow\"")),
            "{error:?}"
        );
        assert!("VERIFY-FULL".parse::<SslMode>().is_err(), "case matters");
    }

    #[test]
    fn root_cert_is_system_or_a_path() {
        assert_eq!(RootCert::parse("system").ok(), Some(RootCert::System));
        assert_eq!(
            RootCert::parse("/etc/ca.pem").ok(),
            Some(RootCert::File("/etc/ca.pem".into()))
        );
        assert!(RootCert::parse("").is_err());
    }
}
