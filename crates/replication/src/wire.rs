//! The byte pipe: one socket, one read buffer, backend messages out.
//!
//! postgres-protocol parses every backend message we need except
//! CopyBothResponse (`W`), which only replication connections receive; that
//! one is framed here by its header and its body ignored (the format codes
//! carry nothing we use).

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{Header, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use cm_tls::{Negotiated, TlsSettings};

use crate::config::Target;
use crate::error::{ReplicationError, ServerError};

/// Anything we can speak the protocol over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A backend message as the client sees it.
pub(crate) enum Backend {
    /// Any message postgres-protocol knows.
    Message(Message),
    /// `W`: START_REPLICATION succeeded; CopyData flows both ways now.
    CopyBothResponse,
}

/// A connected socket with its read buffer.
pub(crate) struct Wire {
    io: Box<dyn Io>,
    buf: BytesMut,
    target: String,
}

impl Wire {
    /// Opens a TCP or Unix-socket connection (TCP_NODELAY: status updates
    /// are tiny). On TCP, TLS is negotiated as `tls` says before anything
    /// else is sent; a Unix socket never uses TLS, as in libpq.
    pub(crate) async fn connect(
        target: &Target,
        tls: &TlsSettings,
    ) -> Result<Wire, ReplicationError> {
        let io_err = |source| ReplicationError::Io {
            target: target.to_string(),
            source,
        };
        let io: Box<dyn Io> = match target {
            Target::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io_err)?;
                stream.set_nodelay(true).map_err(io_err)?;
                let connector = tls
                    .connector()
                    .map_err(|e| ReplicationError::Config(e.to_string()))?;
                match connector.negotiate(stream, host).await? {
                    Negotiated::Plain(stream) => Box::new(stream),
                    Negotiated::Tls(stream) => stream,
                }
            }
            Target::Unix { .. } => Box::new(
                UnixStream::connect(target.to_string())
                    .await
                    .map_err(io_err)?,
            ),
        };
        Ok(Wire {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            target: target.to_string(),
        })
    }

    fn io_error(&self, source: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            target: self.target.clone(),
            source,
        }
    }

    /// Writes a complete, already encoded frontend message (or several).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), ReplicationError> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| self.io_error(e))?;
        self.io.flush().await.map_err(|e| self.io_error(e))
    }

    /// Reads the next backend message. Cancel-safe: bytes read before a
    /// cancellation stay in the buffer for the next call.
    pub(crate) async fn read(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    /// The next backend message if it is already complete in the buffer;
    /// never waits for the socket.
    pub(crate) fn read_buffered(&mut self) -> Result<Option<Backend>, ReplicationError> {
        self.parse_buffered()
    }

    fn parse_buffered(&mut self) -> Result<Option<Backend>, ReplicationError> {
        let header = Header::parse(&self.buf).map_err(|e| self.io_error(e))?;
        let Some(header) = header else {
            return Ok(None);
        };
        if header.tag() != b'W' {
            let message = Message::parse(&mut self.buf).map_err(|e| self.io_error(e))?;
            return Ok(message.map(Backend::Message));
        }
        // Header::parse refused lengths below 4, so this cannot underflow.
        let total = 1 + header.len() as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(total);
        Ok(Some(Backend::CopyBothResponse))
    }
}

/// Turns an ErrorResponse body into a [`ServerError`].
pub(crate) fn server_error(
    body: &postgres_protocol::message::backend::ErrorResponseBody,
) -> ReplicationError {
    use fallible_iterator::FallibleIterator;
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    loop {
        match fields.next() {
            Ok(Some(field)) => {
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    b'S' => error.severity = value,
                    b'C' => error.code = value,
                    b'M' => error.message = value,
                    b'D' => error.detail = Some(value),
                    b'H' => error.hint = Some(value),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                return ReplicationError::Protocol(format!("malformed ErrorResponse: {e}"));
            }
        }
    }
    ReplicationError::Server(error)
}
