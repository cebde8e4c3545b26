//! [`StoreError`]: what a cache call can fail with, split by what the caller
//! can do about it.

use std::time::Duration;

/// Why a key was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The key is the empty string.
    Empty,
    /// The key is longer than memcached's 250-byte limit.
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key holds a space, a control character or a non-ASCII byte.
    ForbiddenByte {
        /// Byte offset of the first forbidden byte.
        position: usize,
        /// The byte itself.
        byte: u8,
    },
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProblem::Empty => f.write_str("the key is empty"),
            KeyProblem::TooLong { len } => {
                write!(f, "the key is {len} bytes long, the limit is 250")
            }
            KeyProblem::ForbiddenByte { position, byte } => write!(
                f,
                "byte {byte:#04x} at offset {position} is not a printable ASCII character"
            ),
        }
    }
}

/// Everything a [`CacheStore`](crate::CacheStore) call can fail with.
///
/// The first two variants are the caller's mistakes and are reported before
/// any I/O. `Timeout` and `Connection` mean the outcome may be unknown: the
/// request may or may not have been applied. Every operation of the store is
/// safe to retry (deletes are idempotent, a duplicated flush-list member is
/// harmless, a generation bumped twice is still bumped), so the invalidator
/// retries and never takes such an error for success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key cannot be sent to memcached; nothing was sent.
    #[error("invalid cache key {key:?}: {problem}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// The value is larger than the configured limit; nothing was sent.
    #[error("value of {len} bytes for key {key:?} exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key the value was meant for.
        key: String,
        /// The value's length in bytes.
        len: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The call did not finish within its timeout.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The store operation, e.g. `"delete_many"`.
        operation: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// A server could not be reached or dropped the connection.
    #[error("connection to memcached failed: {source}")]
    Connection {
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error (`SERVER_ERROR`, `CLIENT_ERROR`),
    /// e.g. out of memory or an item over its size limit.
    #[error("memcached refused the request: {message}")]
    Server {
        /// The server's message.
        message: String,
    },
    /// The server's answer made no sense (or the client library refused an
    /// argument this crate should have checked): a bug somewhere.
    #[error("memcached protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The server would not store a flush-list append, typically because
    /// the list reached the item size limit. The member is not registered:
    /// a reader must not store a result it could not register.
    #[error("append to flush list {key:?} was not stored")]
    NotStored {
        /// The flush-list key.
        key: String,
    },
    /// A compare-and-swap loop kept losing to concurrent writers.
    #[error("gave up on {key:?} after {attempts} conflicting attempts")]
    Contention {
        /// The contended key.
        key: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// A generation key holds something that is not a decimal `u64`.
    #[error("generation {key:?} holds {value:?}, not a decimal number")]
    CorruptGeneration {
        /// The generation key.
        key: String,
        /// The stored bytes, lossily decoded.
        value: String,
    },
    /// The operating system's random source failed.
    #[error("no random number for a new generation: {message}")]
    Random {
        /// The error from the random source.
        message: String,
    },
    /// A server listed for metadata (flush lists, generations, heartbeat)
    /// may evict items, so an invalidation could silently be lost; nothing
    /// is sent to it.
    #[error("memcached {server} cannot hold flush lists: it {message}")]
    EvictingServer {
        /// The server, as configured.
        server: String,
        /// What its settings say, and the fix.
        message: String,
    },
    /// The store was configured wrongly (no servers, unresolvable address).
    #[error("bad cache store configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}
