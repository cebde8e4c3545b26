//! Certificates for a cluster started with [`PgClusterBuilder::tls`]: a
//! throwaway CA, and a server certificate for `127.0.0.1` signed by it.
//!
//! [`PgClusterBuilder::tls`]: crate::PgClusterBuilder::tls

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TestkitError;

/// The only name the server certificate holds (an IP subjectAltName):
/// connecting to `localhost` under `sslmode=verify-full` must fail.
pub const TLS_SERVER_NAME: &str = "127.0.0.1";

/// PEM texts: the CA's certificate, the server's certificate and its key.
pub(crate) struct Certificates {
    pub(crate) ca_pem: String,
    pub(crate) server_pem: String,
    pub(crate) server_key_pem: String,
}

/// A new CA and a server certificate for [`TLS_SERVER_NAME`] signed by it.
pub(crate) fn generate() -> Result<Certificates, TestkitError> {
    let failed = |e: rcgen::Error| TestkitError::Certificate(e.to_string());
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cm-testkit throwaway CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let server_key = KeyPair::generate().map_err(failed)?;
    let mut server = CertificateParams::new(vec![TLS_SERVER_NAME.to_owned()]).map_err(failed)?;
    server
        .distinguished_name
        .push(DnType::CommonName, TLS_SERVER_NAME);
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(failed)?;
    Ok(Certificates {
        ca_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}
