//! [`TlsConnector`]: the rustls client configuration for one connection's
//! settings, usable by tokio-postgres ([`TlsConnector::make_tls_connect`])
//! and by clients that speak the protocol themselves
//! ([`TlsConnector::negotiate`]).

use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::client::TlsStream;

use crate::error::{TlsConfigError, TlsError};
use crate::mode::SslMode;
use crate::settings::{TlsSettings, Verification};
use crate::verify::{find_rejection, Verifier};

/// The server's answer to an SSLRequest that means "go ahead".
const TLS_ACCEPTED: u8 = b'S';

/// A stream after [`TlsConnector::negotiate`]: encrypted, or plain where
/// the mode allowed it.
#[derive(Debug)]
pub enum Negotiated<S> {
    /// `disable`, or `prefer` and the server does not offer TLS.
    Plain(S),
    /// TLS is on.
    Tls(Box<TlsStream<S>>),
}

/// A rustls client configuration for one connection's [`TlsSettings`].
#[derive(Clone)]
pub struct TlsConnector {
    settings: TlsSettings,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Builds the configuration, reading the root certificates the settings
    /// need (none for `disable`, or for `prefer` and `require` without
    /// `sslrootcert`).
    pub fn new(settings: &TlsSettings) -> Result<TlsConnector, TlsConfigError> {
        let verification = settings.verification();
        let roots = match (verification, settings.root_cert()) {
            (Verification::None, _) | (_, None) => RootCertStore::empty(),
            (_, Some(root)) => crate::roots::load(root)?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Verifier::new(verification, roots, Arc::clone(&provider));
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(TlsConnector {
            settings: settings.clone(),
            config: Arc::new(config),
        })
    }

    /// The settings this connector was built for.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// A `MakeTlsConnect` for `tokio_postgres::Config::connect`.
    pub fn make_tls_connect(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(ClientConfig::clone(&self.config))
    }

    /// Sends an SSLRequest on a fresh connection to `host` and, when the
    /// server agrees, runs the TLS handshake; when it declines, goes on in
    /// the clear under `prefer` and fails under `require` and stricter.
    /// Under `disable` the stream is returned untouched. Unix sockets must
    /// not come here: libpq never uses TLS on them.
    pub async fn negotiate<S>(&self, mut stream: S, host: &str) -> Result<Negotiated<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mode = self.settings.mode();
        if mode == SslMode::Disable {
            return Ok(Negotiated::Plain(stream));
        }
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|e| TlsError::ServerName {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        if !ssl_request(&mut stream, mode).await? {
            return match mode {
                SslMode::Prefer => Ok(Negotiated::Plain(stream)),
                _ => Err(TlsError::Unsupported(mode)),
            };
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        match connector.connect(server_name, stream).await {
            Ok(tls) => Ok(Negotiated::Tls(Box::new(tls))),
            Err(source) => Err(match find_rejection(&source, &self.settings, Some(host)) {
                Some(rejected) => TlsError::Rejected(rejected),
                None => TlsError::Handshake { mode, source },
            }),
        }
    }
}

/// Sends the SSLRequest and reads the one-byte answer: true for `S`.
async fn ssl_request<S>(stream: &mut S, mode: SslMode) -> Result<bool, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |source| TlsError::Handshake { mode, source };
    let mut request = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    stream.write_all(&request).await.map_err(failed)?;
    stream.flush().await.map_err(failed)?;
    let answer = stream.read_u8().await.map_err(failed)?;
    Ok(answer == TLS_ACCEPTED)
}
