//! Key validation: a key that memcached would reject or misparse never
//! leaves this process.
//!
//! Keys come from the key scheme (`{prefix}:{kind}:{hash}`), which keeps them
//! short and printable; this check is the last line of defence. Only printable
//! ASCII (`0x21..=0x7e`) is allowed, so the client never falls back to base64
//! keys (`b` flag): other language bindings then see the same key bytes on
//! the wire, and the flush-list delimiter (a space) can never occur in a key.

use cm_keys::KeyKind;

use crate::error::{KeyProblem, StoreError};

/// memcached's key length limit in bytes.
pub const MAX_KEY_LEN: usize = 250;

/// Checks one key: non-empty, at most [`MAX_KEY_LEN`] bytes, printable ASCII
/// without spaces.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let problem = if key.is_empty() {
        Some(KeyProblem::Empty)
    } else if key.len() > MAX_KEY_LEN {
        Some(KeyProblem::TooLong { len: key.len() })
    } else {
        key.bytes()
            .position(|b| !b.is_ascii_graphic())
            .map(|position| KeyProblem::ForbiddenByte {
                position,
                byte: key.as_bytes()[position],
            })
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(StoreError::InvalidKey {
            key: key.to_string(),
            problem,
        }),
    }
}

/// Checks every key; the first bad one is the error.
pub(crate) fn validate_keys(keys: &[&str]) -> Result<(), StoreError> {
    keys.iter().try_for_each(|key| validate_key(key))
}

/// Whether `key` is a result (a `q:` key of the scheme, or its lease
/// placeholder): the only kind a store may evict. Everything else, including
/// keys the scheme did not build, is metadata, which must never be evicted:
/// an evicted flush list loses its members' invalidations.
pub(crate) fn is_result_key(key: &str) -> bool {
    KeyKind::of_key(key) == Some(KeyKind::Result)
}

/// Checks a value against the configured size limit.
pub(crate) fn validate_value(key: &str, value: &[u8], limit: usize) -> Result<(), StoreError> {
    if value.len() > limit {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn problem(key: &str) -> Option<KeyProblem> {
        match validate_key(key) {
            Ok(()) => None,
            Err(StoreError::InvalidKey { problem, .. }) => Some(problem),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn scheme_keys_are_accepted() {
        assert_eq!(problem("cm:q:0123456789abcdef"), None);
        assert_eq!(problem(&"k".repeat(MAX_KEY_LEN)), None);
        assert_eq!(problem("~!@#$%^&*()_+{}|:\"<>?"), None);
    }

    #[test]
    fn empty_long_and_unprintable_keys_are_refused() {
        assert_eq!(problem(""), Some(KeyProblem::Empty));
        assert_eq!(
            problem(&"k".repeat(MAX_KEY_LEN + 1)),
            Some(KeyProblem::TooLong { len: 251 })
        );
        assert_eq!(
            problem("a b"),
            Some(KeyProblem::ForbiddenByte {
                position: 1,
                byte: b' '
            })
        );
        for bad in ["a\r\nb", "a\tb", "a\0", "\u{7f}", "é"] {
            assert!(
                matches!(problem(bad), Some(KeyProblem::ForbiddenByte { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_scheme_result_keys_count_as_results() {
        assert!(is_result_key("cm:q:0123"));
        for metadata in [
            "cm:f:0123",
            "cm:g:0123",
            "cm:hb:0123",
            "cm:w:0123",
            "q:1",
            "hb",
        ] {
            assert!(!is_result_key(metadata), "{metadata}");
        }
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        assert!(validate_value("k", &[0; 10], 10).is_ok());
        assert!(matches!(
            validate_value("k", &[0; 11], 10),
            Err(StoreError::ValueTooLarge {
                len: 11,
                limit: 10,
                ..
            })
        ));
    }
}
