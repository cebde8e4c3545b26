//! Mapping the `memcache` client's errors onto [`StoreError`].

use std::time::Duration;

use memcache::exp::Error;

use crate::error::StoreError;

/// Maps one client error. An ambiguous failure (the request was written, the
/// answer never came) maps like its cause: the caller treats every
/// `Timeout`/`Connection` as "maybe applied" and retries.
pub(crate) fn map_error(operation: &'static str, timeout: Duration, error: Error) -> StoreError {
    match error {
        Error::Timeout { .. } => StoreError::Timeout {
            operation,
            after: timeout,
        },
        Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => StoreError::Timeout {
            operation,
            after: timeout,
        },
        Error::Io(io) => StoreError::Connection {
            source: Box::new(io),
        },
        Error::Ambiguous { source, .. } => map_error(operation, timeout, *source),
        Error::Server(message) => StoreError::Server { message },
        Error::Rejected(message) => StoreError::Server {
            message: format!("CLIENT_ERROR {message}"),
        },
        Error::Protocol(message) => StoreError::Protocol { message },
        other => StoreError::Protocol {
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_map_to_timeout_or_connection() {
        let t = Duration::from_millis(5);
        let refused = Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            map_error("op", t, refused),
            StoreError::Connection { .. }
        ));
        let timed_out = Error::Io(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            map_error("op", t, timed_out),
            StoreError::Timeout {
                operation: "op",
                ..
            }
        ));
        let ambiguous = Error::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(Error::Timeout { key: b"k".to_vec() }),
        };
        assert!(matches!(
            map_error("op", t, ambiguous),
            StoreError::Timeout { .. }
        ));
        assert!(matches!(
            map_error("op", t, Error::Server("out of memory".into())),
            StoreError::Server { .. }
        ));
    }
}
