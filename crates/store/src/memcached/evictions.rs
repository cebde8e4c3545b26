//! The check that a metadata server never evicts: memcached's
//! `stats settings` reports `STAT evictions off` when it runs with `-M`
//! (`--disable-evictions`: a write that needs memory it does not have is
//! answered `SERVER_ERROR out of memory` instead of evicting an item).
//!
//! The `memcache` crate's meta client has no `stats` command, so this module
//! speaks the text protocol itself over a short-lived TCP connection.
//!
//! [`EvictionCheck`] remembers which metadata servers passed. The store
//! checks every server when it connects; a server it cannot reach then (not
//! up yet) is checked before the first operation that needs it, so no
//! operation ever touches a metadata server that has not passed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::router::StableRendezvous;
use crate::error::StoreError;

/// What a server's `stats settings` says about evictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictionSetting {
    /// `STAT evictions on`: it evicts when a slab class is full.
    On,
    /// `STAT evictions off`: it refuses writes instead (`-M`).
    Off,
    /// No `evictions` line: not a memcached we can vouch for (a proxy, an
    /// old or foreign server).
    Unreported,
}

/// Asks `server` for its eviction setting, within `timeout`.
pub(crate) async fn eviction_setting(
    server: &str,
    timeout: Duration,
) -> Result<EvictionSetting, StoreError> {
    match tokio::time::timeout(timeout, eviction_setting_unbounded(server)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout {
            operation: "checking that a metadata server does not evict",
            after: timeout,
        }),
    }
}

/// Asks `server` for its eviction setting; the caller bounds the wait.
async fn eviction_setting_unbounded(server: &str) -> Result<EvictionSetting, StoreError> {
    ask_stats_settings(server)
        .await
        .map_err(|source| StoreError::Connection {
            source: Box::new(std::io::Error::new(
                source.kind(),
                format!("stats settings on {server}: {source}"),
            )),
        })
}

/// Sends `stats settings` and reads `STAT <name> <value>` lines up to `END`.
async fn ask_stats_settings(server: &str) -> std::io::Result<EvictionSetting> {
    let mut stream = TcpStream::connect(server).await?;
    stream.write_all(b"stats settings\r\n").await?;
    let mut lines = BufReader::new(stream).lines();
    let mut setting = EvictionSetting::Unreported;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end();
        if line == "END" {
            return Ok(setting);
        }
        match line.strip_prefix("STAT evictions ") {
            Some("on") => setting = EvictionSetting::On,
            Some("off") => setting = EvictionSetting::Off,
            _ => {}
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the connection closed before END",
    ))
}

/// The error for a metadata server that may evict, naming it and the fix.
fn refusal(server: &str, setting: EvictionSetting) -> StoreError {
    let found = match setting {
        EvictionSetting::On => "evicts items when full (`stats settings` reports `evictions on`)",
        _ => "does not report its eviction setting (`stats settings` has no `evictions` line)",
    };
    StoreError::EvictingServer {
        server: server.to_string(),
        message: format!(
            "{found}; flush lists and generations must never be evicted: \
             start it with -M, or list it under result servers only"
        ),
    }
}

/// Which metadata servers have passed the check.
#[derive(Debug)]
pub(crate) struct EvictionCheck {
    servers: Vec<String>,
    passed: Vec<AtomicBool>,
    all_passed: AtomicBool,
}

impl EvictionCheck {
    /// Checks every server now, concurrently. A server that evicts (or does
    /// not say) is an error; one that cannot be reached is left to be
    /// checked at its first use.
    pub(crate) async fn connect(
        servers: &[String],
        timeout: Duration,
    ) -> Result<EvictionCheck, StoreError> {
        let check = EvictionCheck {
            servers: servers.to_vec(),
            passed: servers.iter().map(|_| AtomicBool::new(false)).collect(),
            all_passed: AtomicBool::new(false),
        };
        let answers = futures_util::future::join_all(
            servers
                .iter()
                .map(|server| eviction_setting(server, timeout)),
        )
        .await;
        for (index, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(setting) => check.record(index, setting)?,
                Err(StoreError::Connection { .. } | StoreError::Timeout { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        check.note_if_all_passed();
        Ok(check)
    }

    /// Checks, before their first use, the servers that own these keys and
    /// have not passed yet; a no-op once every server has passed. Runs
    /// inside the calling store operation, whose timeout bounds it.
    pub(crate) async fn admit<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), StoreError> {
        if self.all_passed.load(Ordering::Acquire) {
            return Ok(());
        }
        for key in keys {
            let index = StableRendezvous::server_index(key.as_bytes(), &self.servers);
            if !self.has_passed(index) {
                let server = self.servers.get(index).map_or("", String::as_str);
                let setting = eviction_setting_unbounded(server).await?;
                self.record(index, setting)?;
            }
        }
        self.note_if_all_passed();
        Ok(())
    }

    fn has_passed(&self, index: usize) -> bool {
        self.passed
            .get(index)
            .is_some_and(|passed| passed.load(Ordering::Acquire))
    }

    fn record(&self, index: usize, setting: EvictionSetting) -> Result<(), StoreError> {
        if setting != EvictionSetting::Off {
            let server = self.servers.get(index).map_or("", String::as_str);
            return Err(refusal(server, setting));
        }
        if let Some(passed) = self.passed.get(index) {
            passed.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn note_if_all_passed(&self) {
        if (0..self.servers.len()).all(|index| self.has_passed(index)) {
            self.all_passed.store(true, Ordering::Release);
        }
    }
}
