//! A walsender connection before streaming: replication commands over the
//! simple-query protocol (the only one the walsender accepts for them).

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use cm_pgoutput::Lsn;

use crate::auth::startup;
use crate::config::ReplicationConfig;
use crate::error::{ReplicationError, SQLSTATE_UNDEFINED_OBJECT};
use crate::names::{quote_literal, SlotName};
use crate::preflight::{slot_query, verify_slot, SlotInfo};
use crate::stream::{ReplicationStream, StartOptions};
use crate::wire::{server_error, Backend, Wire};

/// What IDENTIFY_SYSTEM reports. Persist `system_id` and `timeline` next to
/// any position: if either changes (a restored backup, a promoted standby),
/// LSNs may repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The connected database.
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// Every commit after this position will be delivered.
    pub consistent_point: Lsn,
}

/// A connection in `replication=database` mode, authenticated and idle.
pub struct ReplicationConnection {
    wire: Wire,
    server_version: Option<String>,
}

/// One result row of a simple query, as text.
pub type TextRow = Vec<Option<String>>;

impl ReplicationConnection {
    /// Connects (over TLS as `config.tls` says), authenticates, with the
    /// session settings of [`crate::PINNED_OPTIONS`], within
    /// `config.connect_timeout`.
    pub async fn connect(config: &ReplicationConfig) -> Result<Self, ReplicationError> {
        let connecting = async {
            let mut wire = Wire::connect(&config.target, &config.tls).await?;
            let session = startup(&mut wire, config).await?;
            Ok(ReplicationConnection {
                wire,
                server_version: session.server_version,
            })
        };
        tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| ReplicationError::Io {
                target: config.target.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", config.connect_timeout),
                ),
            })?
    }

    /// The server's major version (`15` for "15.18 (Debian ...)"), when it said.
    pub fn server_major_version(&self) -> Option<u32> {
        let version = self.server_version.as_deref()?;
        let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Runs one command with the simple-query protocol and returns its rows as
    /// text. An ErrorResponse becomes [`ReplicationError::Server`].
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<TextRow>, ReplicationError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)
            .map_err(|e| ReplicationError::Config(format!("query text: {e}")))?;
        self.wire.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.wire.read().await? {
                Backend::Message(Message::DataRow(row)) => rows.push(text_row(&row)?),
                Backend::Message(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                Backend::Message(Message::ReadyForQuery(_)) => break,
                Backend::CopyBothResponse => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected CopyBothResponse to {sql:?}"
                    )))
                }
                Backend::Message(_) => {}
            }
        }
        match error {
            Some(error) => Err(error),
            None => Ok(rows),
        }
    }

    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, "IDENTIFY_SYSTEM")?;
        Ok(SystemIdentity {
            system_id: column(row, 0, "IDENTIFY_SYSTEM.systemid")?.to_owned(),
            timeline: parse(column(row, 1, "IDENTIFY_SYSTEM.timeline")?, "timeline")?,
            xlogpos: parse(column(row, 2, "IDENTIFY_SYSTEM.xlogpos")?, "xlogpos")?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// CREATE_REPLICATION_SLOT ... LOGICAL pgoutput, permanent (never
    /// TEMPORARY: a crash would lose the position), with no snapshot (the
    /// invalidator loads nothing; it flushes the cache after creating the slot).
    pub async fn create_slot(&mut self, slot: &SlotName) -> Result<CreatedSlot, ReplicationError> {
        let snapshot = match self.server_major_version() {
            Some(v) if v < 15 => "NOEXPORT_SNAPSHOT",
            _ => "(SNAPSHOT 'nothing')",
        };
        let sql = format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput {snapshot}");
        let rows = self.simple_query(&sql).await?;
        let row = single_row(&rows, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            slot_name: column(row, 0, "CREATE_REPLICATION_SLOT.slot_name")?.to_owned(),
            consistent_point: parse(
                column(row, 1, "CREATE_REPLICATION_SLOT.consistent_point")?,
                "consistent_point",
            )?,
        })
    }

    /// DROP_REPLICATION_SLOT; with `wait`, waits for an active consumer to go.
    pub async fn drop_slot(&mut self, slot: &SlotName, wait: bool) -> Result<(), ReplicationError> {
        let wait = if wait { " WAIT" } else { "" };
        match self
            .simple_query(&format!("DROP_REPLICATION_SLOT {slot}{wait}"))
            .await
        {
            Err(e) if e.sqlstate() == Some(SQLSTATE_UNDEFINED_OBJECT) => {
                Err(ReplicationError::SlotMissing {
                    slot: slot.to_string(),
                })
            }
            other => other.map(drop),
        }
    }

    /// Checks the slot and publications over this connection (the walsender
    /// accepts plain SQL in database mode): see [`crate::preflight::check_before_streaming`].
    pub async fn check_slot(
        &mut self,
        slot: &SlotName,
        publications: &[String],
    ) -> Result<SlotInfo, ReplicationError> {
        let rows = self
            .simple_query(&slot_query(&quote_literal(slot.as_str())))
            .await?;
        let info = rows
            .first()
            .map(|row| SlotInfo::from_text(row))
            .transpose()?;
        let dbname_rows = self.simple_query("SELECT current_database()").await?;
        let dbname = dbname_rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .unwrap_or_default();
        let mut missing = Vec::new();
        for publication in publications {
            let sql = format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                quote_literal(publication)
            );
            if self.simple_query(&sql).await?.is_empty() {
                missing.push(publication.clone());
            }
        }
        verify_slot(slot, info, &dbname, &missing)
    }

    /// START_REPLICATION SLOT ... LOGICAL: refuses a slot that fails
    /// [`Self::check_slot`] (two_phase on, invalidated, wrong plugin or
    /// database, missing publication), then switches the connection to
    /// CopyBoth and hands it to a [`ReplicationStream`].
    pub async fn start_replication(
        mut self,
        options: StartOptions,
    ) -> Result<ReplicationStream, ReplicationError> {
        self.check_slot(&options.slot, &options.publications)
            .await?;
        let sql = start_command(&options, self.server_major_version());
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf)
            .map_err(|e| ReplicationError::Config(format!("START_REPLICATION: {e}")))?;
        self.wire.send(&buf).await?;
        loop {
            match self.wire.read().await? {
                Backend::CopyBothResponse => break,
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(start_error(server_error(&body), &options.slot))
                }
                Backend::Message(Message::NoticeResponse(_)) => {}
                Backend::Message(_) => {
                    return Err(ReplicationError::Protocol(
                        "unexpected reply to START_REPLICATION".into(),
                    ))
                }
            }
        }
        Ok(ReplicationStream::spawn(self.wire, options))
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.wire.send(&buf).await;
    }
}

/// The START_REPLICATION command. Options by server version: proto_version 1
/// everywhere (we need nothing newer), `messages` from PG14 on (heartbeats
/// and fences); never `streaming`, never `two_phase` (both would deliver
/// changes before they commit).
fn start_command(options: &StartOptions, major: Option<u32>) -> String {
    let publications: Vec<String> = options
        .publications
        .iter()
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect();
    let mut plugin_options = format!(
        "proto_version '1', publication_names {}",
        quote_literal(&publications.join(","))
    );
    if major.is_none_or(|v| v >= 14) {
        plugin_options.push_str(", messages 'true'");
    }
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} ({plugin_options})",
        options.slot, options.start_lsn
    )
}

/// Maps START_REPLICATION errors that need an operator to their own variants.
fn start_error(error: ReplicationError, slot: &SlotName) -> ReplicationError {
    let ReplicationError::Server(server) = &error else {
        return error;
    };
    let slot = slot.to_string();
    match server.code.as_str() {
        SQLSTATE_UNDEFINED_OBJECT if server.message.contains("replication slot") => {
            ReplicationError::SlotMissing { slot }
        }
        "55000"
            if server
                .message
                .contains("cannot read from logical replication slot") =>
        {
            ReplicationError::SlotLost {
                slot,
                reason: server
                    .detail
                    .clone()
                    .unwrap_or_else(|| server.message.clone()),
            }
        }
        _ => error,
    }
}

fn text_row(
    row: &postgres_protocol::message::backend::DataRowBody,
) -> Result<TextRow, ReplicationError> {
    let buffer = row.buffer();
    row.ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()
        .map_err(|e| ReplicationError::Protocol(format!("malformed DataRow: {e}")))
}

fn single_row<'a>(rows: &'a [TextRow], command: &str) -> Result<&'a TextRow, ReplicationError> {
    match rows {
        [row] => Ok(row),
        _ => Err(ReplicationError::Protocol(format!(
            "{command} returned {} rows, expected 1",
            rows.len()
        ))),
    }
}

fn column<'a>(row: &'a TextRow, index: usize, what: &str) -> Result<&'a str, ReplicationError> {
    row.get(index)
        .and_then(Option::as_deref)
        .ok_or_else(|| ReplicationError::Protocol(format!("{what} missing")))
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ReplicationError> {
    text.parse()
        .map_err(|_| ReplicationError::Protocol(format!("{what} {text:?} does not parse")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_command_quotes_publications_and_picks_options_by_version() {
        let options = StartOptions::new(SlotName::new("cm_slot").unwrap(), ["pub", "we\"ird'"]);
        assert_eq!(
            start_command(&options, Some(15)),
            "START_REPLICATION SLOT cm_slot LOGICAL 0/0 (proto_version '1', \
             publication_names '\"pub\",\"we\"\"ird''\"', messages 'true')"
        );
        assert!(!start_command(&options, Some(13)).contains("messages"));
    }
}
