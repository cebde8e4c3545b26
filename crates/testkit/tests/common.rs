//! Helpers shared by the integration tests (included with `mod common;`).

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// Whether a process exists and is not a zombie.
///
/// The postmaster is reparented to whatever reaps orphans here, which in a
/// container may never reap it, so a zombie counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "x")
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Whether a path exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
