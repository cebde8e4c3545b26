//! The trusted roots named by `sslrootcert`: a PEM file, or the platform's
//! store.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::error::TlsConfigError;
use crate::mode::RootCert;

/// Reads the roots; a file that cannot be read or holds no usable
/// certificate is an error naming it.
pub(crate) fn load(root: &RootCert) -> Result<RootCertStore, TlsConfigError> {
    match root {
        RootCert::File(path) => from_file(path),
        RootCert::System => from_platform(),
    }
}

fn from_file(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let bad = |reason: String| TlsConfigError::RootCertFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let mut store = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        store
            .add(cert)
            .map_err(|e| bad(format!("certificate {} is not usable: {e}", index + 1)))?;
    }
    Ok(store)
}

fn from_platform() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        let why = if errors.is_empty() {
            "the store is empty; install ca-certificates or set SSL_CERT_FILE".to_owned()
        } else {
            errors.join("; ")
        };
        return Err(TlsConfigError::NoSystemRoots(why));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let missing = RootCert::File("/nonexistent/ca.pem".into());
        let error = load(&missing).unwrap_err().to_string();
        assert_eq!(
            error,
            "sslrootcert /nonexistent/ca.pem: cannot read it: No such file or directory (os error 2)"
        );

        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"not a certificate\n").unwrap();
        let error = load(&RootCert::File(file.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds no certificate"), "{error}");
    }

    #[test]
    fn a_generated_ca_loads() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(ca.pem().as_bytes()).unwrap();
        let store = load(&RootCert::File(file.path().to_owned())).unwrap();
        assert_eq!(store.len(), 1);
    }
}
