//! The server-certificate check for each [`Verification`] level.
//!
//! rustls's own verifier always checks the name, which `verify-ca` must
//! not, and a client that verifies nothing still has to check the
//! handshake signatures. So one verifier serves all three levels, built
//! from rustls's public WebPKI functions: the chain
//! (`verify_server_cert_signed_by_trust_anchor`), then, for `verify-full`
//! only, the name (`verify_server_name`, subjectAltName entries only).
//! Failures are rustls's own errors (so the alert the server sees is the
//! right one, and a pool that shows rustls's message shows a plain one);
//! [`find_rejection`] turns them into a [`CertificateRejected`] that names
//! the cause, the mode and the roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore};

use crate::error::CertificateRejected;
use crate::settings::{TlsSettings, Verification};

/// Checks what `verification` asks for against `roots`.
#[derive(Debug)]
pub(crate) struct Verifier {
    verification: Verification,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    pub(crate) fn new(
        verification: Verification,
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
    ) -> Verifier {
        Verifier {
            verification,
            roots: Arc::new(roots),
            provider,
        }
    }
}

/// What a rustls certificate error means under `settings`, connecting to
/// `host` (when the error does not say).
fn rejection(
    error: &CertificateError,
    settings: &TlsSettings,
    host: Option<&str>,
) -> CertificateRejected {
    let mode = settings.mode();
    let root = settings
        .root_cert()
        .map_or_else(|| "(none)".to_owned(), ToString::to_string);
    match error {
        CertificateError::NotValidForNameContext { expected, .. } => {
            CertificateRejected::WrongHost {
                host: expected.to_str().into_owned(),
                detail: name_detail(error),
            }
        }
        CertificateError::NotValidForName => CertificateRejected::WrongHost {
            host: host.unwrap_or("(unknown)").to_owned(),
            detail: name_detail(error),
        },
        CertificateError::UnknownIssuer => CertificateRejected::UnknownIssuer { mode, root },
        other => CertificateRejected::Invalid {
            mode,
            root,
            reason: other.to_string(),
        },
    }
}

/// Which names the certificate holds, from rustls's error.
fn name_detail(error: &CertificateError) -> String {
    let CertificateError::NotValidForNameContext { presented, .. } = error else {
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
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            algorithms,
        )?;
        if self.verification == Verification::ChainAndHost {
            verify_server_name(&cert, server_name)?;
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

/// The certificate rejection somewhere in `error`'s causes, if any, as
/// [`CertificateRejected`] under `settings`; `host` is the host connected
/// to, when known.
pub(crate) fn find_rejection(
    error: &(dyn std::error::Error + 'static),
    settings: &TlsSettings,
    host: Option<&str>,
) -> Option<CertificateRejected> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = certificate_error(error) {
            return Some(rejection(found, settings, host));
        }
        current = error.source();
    }
    None
}

/// The rustls certificate error `error` is or wraps (tokio-rustls hands
/// rustls errors on inside an `io::Error`).
fn certificate_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CertificateError> {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| certificate_error(inner));
    }
    match error.downcast_ref::<Error>()? {
        Error::InvalidCertificate(found) => Some(found),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_a_certificate_holds_are_said_plainly() {
        let error = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("localhost").unwrap(),
            presented: vec![
                "IpAddress(127.0.0.1)".into(),
                "DnsName(\"db.example\")".into(),
            ],
        };
        assert_eq!(
            name_detail(&error),
            "the certificate names 127.0.0.1, db.example"
        );
        assert_eq!(bare_name("Unsupported(0x66)"), "Unsupported(0x66)");
    }
}
