//! The server-certificate check for each [`Verification`] level.
//!
//! rustls's own verifier always checks the name, which `verify-ca` must
//! not, and a client that verifies nothing still has to check the
//! handshake signatures. So one verifier serves all three levels, built
//! from rustls's public WebPKI functions: the chain
//! (`verify_server_cert_signed_by_trust_anchor`), then, for `verify-full`
//! only, the name (`verify_server_name`, subjectAltName entries only).
//! Failures become [`CertificateRejected`] inside the rustls error, so
//! callers can name the cause and the mode.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore};

use crate::error::CertificateRejected;
use crate::mode::SslMode;
use crate::settings::Verification;

/// Checks what `verification` asks for against `roots`.
#[derive(Debug)]
pub(crate) struct Verifier {
    verification: Verification,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// For messages: the mode and the `sslrootcert` value.
    mode: SslMode,
    root_label: String,
}

impl Verifier {
    pub(crate) fn new(
        verification: Verification,
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        mode: SslMode,
        root_label: String,
    ) -> Verifier {
        Verifier {
            verification,
            roots: Arc::new(roots),
            provider,
            mode,
            root_label,
        }
    }

    fn rejected(&self, error: Error, host: &ServerName<'_>) -> Error {
        let reason = match error {
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => CertificateRejected::WrongHost {
                host: host.to_str().into_owned(),
                detail: name_detail(&error),
            },
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                CertificateRejected::UnknownIssuer {
                    mode: self.mode,
                    root: self.root_label.clone(),
                }
            }
            other => CertificateRejected::Invalid {
                mode: self.mode,
                root: self.root_label.clone(),
                reason: other.to_string(),
            },
        };
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
    }
}

/// Which names the certificate holds, from rustls's error.
fn name_detail(error: &Error) -> String {
    let Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. }) =
        error
    else {
        return "the certificate does not name it in subjectAltName".to_owned();
    };
    if presented.is_empty() {
        return "the certificate names no host in subjectAltName".to_owned();
    }
    let names: Vec<&str> = presented.iter().map(|name| bare_name(name)).collect();
    format!("the certificate names {}", names.join(", "))
}

/// `127.0.0.1` for webpki's `IpAddress(127.0.0.1)`, `db` for `DnsName("db")`.
fn bare_name(presented: &str) -> &str {
    let inner = presented
        .strip_prefix("IpAddress(")
        .or_else(|| presented.strip_prefix("DnsName("))
        .and_then(|rest| rest.strip_suffix(')'));
    match inner {
        Some(inner) => inner.trim_matches('"'),
        None => presented,
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.verification == Verification::None {
            return Ok(ServerCertVerified::assertion());
        }
        let cert =
            ParsedCertificate::try_from(end_entity).map_err(|e| self.rejected(e, server_name))?;
        let algorithms = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            algorithms,
        )
        .map_err(|e| self.rejected(e, server_name))?;
        if self.verification == Verification::ChainAndHost {
            verify_server_name(&cert, server_name).map_err(|e| self.rejected(e, server_name))?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The [`CertificateRejected`] somewhere in `error`'s causes, if any.
pub(crate) fn find_rejection(
    error: &(dyn std::error::Error + 'static),
) -> Option<CertificateRejected> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = rejection_in(error) {
            return Some(found);
        }
        current = error.source();
    }
    None
}

fn rejection_in(error: &(dyn std::error::Error + 'static)) -> Option<CertificateRejected> {
    if let Some(rejected) = error.downcast_ref::<CertificateRejected>() {
        return Some(rejected.clone());
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| rejection_in(inner));
    }
    match error.downcast_ref::<Error>()? {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<CertificateRejected>().cloned()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_a_certificate_holds_are_said_plainly() {
        let error = Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("localhost").unwrap(),
            presented: vec![
                "IpAddress(127.0.0.1)".into(),
                "DnsName(\"db.example\")".into(),
            ],
        });
        assert_eq!(
            name_detail(&error),
            "the certificate names 127.0.0.1, db.example"
        );
        assert_eq!(bare_name("Unsupported(0x66)"), "Unsupported(0x66)");
    }
}
