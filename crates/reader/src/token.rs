//! Read-your-writes tokens ([`WriteToken`]): a WAL position at or after a
//! write's commit, carried by a service across requests (a cookie, a
//! header) and given back to a read with [`crate::QueryOptions::after`].
//! Such a read is served from the cache only once the invalidator has
//! applied everything up to the token (`docs/freshness.md`).

use std::fmt;
use std::str::FromStr;

use tokio_postgres::Client;

use crate::error::ReaderError;

/// The statement that makes a token on any connection, from any client:
/// run it after the write's `COMMIT` returned. Its text form (`16/B374D848`)
/// is what [`WriteToken`] parses. The insert position, not the flush
/// position: with `synchronous_commit = off` a commit returns before its
/// record is flushed, while the insert position is past it as soon as it
/// was written.
pub const WRITE_TOKEN_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// A WAL position at or after a committed write: reads given it
/// ([`crate::QueryOptions::after`]) see that write. Displayed and parsed
/// in PostgreSQL's `pg_lsn` text form (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteToken(u64);

impl WriteToken {
    /// The token for the WAL position `lsn`.
    pub fn from_lsn(lsn: u64) -> WriteToken {
        WriteToken(lsn)
    }

    /// The WAL position.
    pub fn lsn(self) -> u64 {
        self.0
    }

    /// The later of two tokens: a read after both writes needs the later.
    pub fn max(self, other: Option<WriteToken>) -> WriteToken {
        other.map_or(self, |other| Ord::max(self, other))
    }
}

impl fmt::Display for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A string that is not a write token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a write token (expected a pg_lsn such as 16/B374D848): {0:?}")]
pub struct TokenParseError(String);

impl FromStr for WriteToken {
    type Err = TokenParseError;

    fn from_str(text: &str) -> Result<WriteToken, TokenParseError> {
        let error = || TokenParseError(text.chars().take(40).collect());
        let (high, low) = text.trim().split_once('/').ok_or_else(error)?;
        let hex = |part: &str| {
            let valid = !part.is_empty() && part.len() <= 8;
            valid
                .then(|| u32::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(error)
        };
        Ok(WriteToken(
            (u64::from(hex(high)?) << 32) | u64::from(hex(low)?),
        ))
    }
}

/// The token for everything committed on the server so far: run it on any
/// connection after a write's `COMMIT` returned ([`WRITE_TOKEN_SQL`]).
pub async fn write_token(client: &Client) -> Result<WriteToken, ReaderError> {
    let row = client.query_one(WRITE_TOKEN_SQL, &[]).await?;
    let text: String = row.try_get(0)?;
    text.parse()
        .map_err(|error: TokenParseError| ReaderError::Config(error.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_in_pg_lsn_text_form_and_order_by_position() {
        let token: WriteToken = "16/B374D848".parse().unwrap();
        assert_eq!(token.lsn(), 0x16_B374_D848);
        assert_eq!(token.to_string(), "16/B374D848");
        assert_eq!(WriteToken::from_lsn(0).to_string(), "0/0");
        let earlier: WriteToken = "16/B374D847".parse().unwrap();
        assert!(earlier < token);
        assert_eq!(earlier.max(Some(token)), token);
        assert_eq!(token.max(None), token);
        for bad in ["", "16", "/1", "1/", "x/1", "1/2/3", "123456789/1", "-1/2"] {
            assert!(bad.parse::<WriteToken>().is_err(), "{bad:?}");
        }
    }
}
