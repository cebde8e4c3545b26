//! [`TlsSettings`]: one connection's `sslmode` and `sslrootcert`, checked
//! against each other as libpq checks them.

use crate::connector::TlsConnector;
use crate::error::TlsConfigError;
use crate::mode::{RootCert, SslMode};

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the connection is encrypted, but anyone in the middle can
    /// present a certificate (`prefer` and `require` without `sslrootcert`).
    None,
    /// The chain up to a root in `sslrootcert`, not the name (`verify-ca`,
    /// and `prefer` or `require` with an `sslrootcert` file).
    Chain,
    /// The chain and that the certificate names the host (`verify-full`).
    ChainAndHost,
}

/// A connection's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    mode: SslMode,
    root_cert: Option<RootCert>,
}

impl Default for TlsSettings {
    /// libpq's default: `prefer`, no root certificate.
    fn default() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
        }
    }
}

impl TlsSettings {
    /// Checks the pair: `verify-ca` and `verify-full` need a root
    /// certificate, and `sslrootcert=system` needs `verify-full`. With
    /// `mode` left out, the mode is `verify-full` for `sslrootcert=system`
    /// and `prefer` otherwise (libpq 16's defaults).
    pub fn new(
        mode: Option<SslMode>,
        root_cert: Option<RootCert>,
    ) -> Result<TlsSettings, TlsConfigError> {
        let mode = mode.unwrap_or(match root_cert {
            Some(RootCert::System) => SslMode::VerifyFull,
            _ => SslMode::Prefer,
        });
        match (mode, &root_cert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                Err(TlsConfigError::MissingRootCert(mode))
            }
            (mode, Some(RootCert::System)) if mode != SslMode::VerifyFull => {
                Err(TlsConfigError::WeakModeWithSystemRoots(mode))
            }
            _ => Ok(TlsSettings { mode, root_cert }),
        }
    }

    /// `sslmode=disable`.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            root_cert: None,
        }
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The root certificates, when given.
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.root_cert.as_ref()
    }

    /// What is checked of the server's certificate once TLS is on.
    pub fn verification(&self) -> Verification {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Verification::ChainAndHost,
            (SslMode::VerifyCa, _) => Verification::Chain,
            (SslMode::Prefer | SslMode::Require, Some(_)) => Verification::Chain,
            _ => Verification::None,
        }
    }

    /// The connector for these settings; reads the root certificates now.
    pub fn connector(&self) -> Result<TlsConnector, TlsConfigError> {
        TlsConnector::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Option<RootCert> {
        Some(RootCert::File("/ca.pem".into()))
    }

    #[test]
    fn verification_follows_libpq() {
        let verification = |mode, root| TlsSettings::new(Some(mode), root).unwrap().verification();
        assert_eq!(verification(SslMode::Prefer, None), Verification::None);
        assert_eq!(verification(SslMode::Require, None), Verification::None);
        // libpq: with a root certificate, require behaves like verify-ca.
        assert_eq!(verification(SslMode::Require, file()), Verification::Chain);
        assert_eq!(verification(SslMode::Prefer, file()), Verification::Chain);
        assert_eq!(verification(SslMode::VerifyCa, file()), Verification::Chain);
        assert_eq!(
            verification(SslMode::VerifyFull, file()),
            Verification::ChainAndHost
        );
    }

    #[test]
    fn verifying_modes_need_a_root_and_system_roots_need_verify_full() {
        let error = TlsSettings::new(Some(SslMode::VerifyFull), None).unwrap_err();
        assert!(error.to_string().contains("needs sslrootcert"), "{error}");
        let error = TlsSettings::new(Some(SslMode::Require), Some(RootCert::System)).unwrap_err();
        assert!(
            error.to_string().contains("weak sslmode require"),
            "{error}"
        );
        let system = TlsSettings::new(None, Some(RootCert::System)).unwrap();
        assert_eq!(system.mode(), SslMode::VerifyFull);
        assert_eq!(
            TlsSettings::new(None, None).unwrap(),
            TlsSettings::default()
        );
        assert_eq!(
            TlsSettings::new(None, file()).unwrap().mode(),
            SslMode::Prefer
        );
    }
}
