//! Names that end up inside replication commands, validated so nothing a
//! user configures can change the command's meaning.

use std::fmt;

use crate::error::ReplicationError;

/// A replication slot name: what PostgreSQL itself accepts, lower-case
/// letters, digits and underscores, at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    /// Validates a slot name.
    pub fn new(name: &str) -> Result<SlotName, ReplicationError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(SlotName(name.to_owned()))
        } else {
            Err(ReplicationError::Config(format!(
                "invalid replication slot name {name:?}: use 1-63 lower-case letters, digits or underscores"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SQL string literal: single quotes, inner quotes doubled.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(SlotName::new("cm_invalidator_1").is_ok());
        for bad in ["", "Upper", "a-b", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(SlotName::new(bad).is_err(), "{bad:?}");
        }
    }
}
