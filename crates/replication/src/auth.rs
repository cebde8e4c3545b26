//! Startup and authentication: trust, cleartext, md5 and SCRAM-SHA-256, with
//! postgres-protocol doing the cryptography.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::config::ReplicationConfig;
use crate::error::ReplicationError;
use crate::wire::{server_error, Backend, Wire};

/// Session settings pinned on every replication connection. pgoutput's text
/// values come from type output functions in *this* session, so these make
/// them match what the reader derives; the timeouts
/// must never cut a long-running stream.
pub const PINNED_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres \
     -c extra_float_digits=3 -c timezone=UTC -c statement_timeout=0 \
     -c idle_in_transaction_session_timeout=0";

/// What the server told us during startup.
pub(crate) struct Session {
    pub(crate) server_version: Option<String>,
}

/// Sends the startup packet, authenticates, and waits for ReadyForQuery.
pub(crate) async fn startup(
    wire: &mut Wire,
    config: &ReplicationConfig,
) -> Result<Session, ReplicationError> {
    let params = [
        ("user", config.user.as_str()),
        ("database", config.dbname.as_str()),
        ("replication", "database"),
        ("application_name", config.application_name.as_str()),
        ("client_encoding", "UTF8"),
        ("options", PINNED_OPTIONS),
    ];
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf)
        .map_err(|e| ReplicationError::Config(format!("startup parameters: {e}")))?;
    wire.send(&buf).await?;

    let mut scram: Option<ScramSha256> = None;
    let mut session = Session {
        server_version: None,
    };
    loop {
        let Backend::Message(message) = wire.read().await? else {
            return Err(ReplicationError::Protocol(
                "CopyBothResponse during startup".into(),
            ));
        };
        buf.clear();
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let password = password(config)?;
                frontend::password_message(password, &mut buf).map_err(auth_io)?;
                wire.send(&buf).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(config.user.as_bytes(), password(config)?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf).map_err(auth_io)?;
                wire.send(&buf).await?;
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<String> = body
                    .mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .map_err(auth_io)?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(ReplicationError::Auth(format!(
                        "server offers SASL mechanisms {mechanisms:?}; only {SCRAM_SHA_256} is supported"
                    )));
                }
                let state = ScramSha256::new(password(config)?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, state.message(), &mut buf)
                    .map_err(auth_io)?;
                scram = Some(state);
                wire.send(&buf).await?;
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram.as_mut().ok_or_else(|| {
                    ReplicationError::Protocol("SASL continue before SASL start".into())
                })?;
                state.update(body.data()).map_err(auth_io)?;
                frontend::sasl_response(state.message(), &mut buf).map_err(auth_io)?;
                wire.send(&buf).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let state = scram.as_mut().ok_or_else(|| {
                    ReplicationError::Protocol("SASL final before SASL start".into())
                })?;
                // Verifies the server's signature: a server that does not know
                // the password cannot fake a successful login.
                state.finish(body.data()).map_err(auth_io)?;
            }
            Message::ParameterStatus(body) => {
                if body.name().ok() == Some("server_version") {
                    session.server_version = body.value().ok().map(str::to_owned);
                }
            }
            Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
            Message::ReadyForQuery(_) => return Ok(session),
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => {
                return Err(ReplicationError::Auth(
                    "server asks for an authentication method we do not support \
                     (trust, password, md5 and scram-sha-256 are)"
                        .into(),
                ))
            }
        }
    }
}

fn password(config: &ReplicationConfig) -> Result<&[u8], ReplicationError> {
    config.password.as_deref().ok_or_else(|| {
        ReplicationError::Auth(format!(
            "server asks for a password for role {:?}, but the connection string has none",
            config.user
        ))
    })
}

fn auth_io(e: std::io::Error) -> ReplicationError {
    ReplicationError::Auth(e.to_string())
}
