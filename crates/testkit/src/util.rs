//! Small helpers shared by the server types: random names, binaries, users, ports.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TestkitError;

/// Environment variable naming the PostgreSQL bin directory to use.
pub(crate) const ENV_PG_BIN: &str = "CM_PG_BIN";

/// `n` lowercase hex digits that differ between calls, threads and processes.
///
/// `RandomState` is seeded from the operating system's randomness once per
/// thread; the counter, pid and clock make each call differ from the last.
pub(crate) fn random_hex(n: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.write_u128(nanos);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(n);
    out
}

/// The effective user id of this process, read from `/proc/self/status`.
pub(crate) fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// Finds `name` on `PATH`, then in the given fallback directories.
pub(crate) fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The PostgreSQL bin directory: `$CM_PG_BIN`, else the highest-numbered
/// `/usr/lib/postgresql/*/bin` that holds `needed`.
pub(crate) fn find_pg_bin_dir(needed: &str) -> Result<PathBuf, TestkitError> {
    if let Some(value) = std::env::var_os(ENV_PG_BIN) {
        let dir = PathBuf::from(&value);
        if is_executable(&dir.join(needed)) {
            return Ok(dir);
        }
        return Err(TestkitError::BadEnv {
            var: ENV_PG_BIN,
            value: value.to_string_lossy().into_owned(),
            reason: format!("no executable `{needed}` in that directory"),
        });
    }
    let base = Path::new("/usr/lib/postgresql");
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = parse_version(&name) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if !is_executable(&bin.join(needed)) {
                continue;
            }
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| TestkitError::NotFound {
        what: format!("PostgreSQL `{needed}`"),
        detail: format!(
            "no /usr/lib/postgresql/*/bin/{needed}; install PostgreSQL (apt-get install postgresql) \
             or set {ENV_PG_BIN} to its bin directory"
        ),
    })
}

fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| TestkitError::io("reading the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// `uid` and `gid` of an operating-system user, by asking `id`.
pub(crate) fn user_ids(user: &str) -> Result<(u32, u32), TestkitError> {
    let one = |flag: &str| -> Result<u32, TestkitError> {
        let mut cmd = Command::new("id");
        cmd.arg(flag).arg(user);
        let out = run_output(&mut cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|_| TestkitError::NotFound {
            what: format!("operating-system user `{user}`"),
            detail: format!("`id {flag} {user}` printed `{}`", text.trim()),
        })
    };
    Ok((one("-u")?, one("-g")?))
}

/// A command line as a shell would show it (for error messages).
pub(crate) fn display_command(cmd: &Command) -> String {
    let mut parts = vec![shell_word(cmd.get_program())];
    parts.extend(cmd.get_args().map(shell_word));
    parts.join(" ")
}

fn shell_word(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion with stdin closed, capturing its output, and
/// fails with the command line and its stderr unless it exits successfully.
pub(crate) fn run_output(cmd: &mut Command) -> Result<Output, TestkitError> {
    let out = spawn_output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestkitError::Command {
            command: display_command(cmd),
            status: out.status.to_string(),
            stderr: stderr_text(&out),
            log_tail: None,
        })
    }
}

/// Runs `cmd` to completion with stdin closed, capturing its output, whatever its exit status.
pub(crate) fn spawn_output(cmd: &mut Command) -> Result<Output, TestkitError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TestkitError::Spawn {
            command: display_command(cmd),
            source,
        })
}

/// stderr of a finished command, or its stdout when stderr is empty.
pub(crate) fn stderr_text(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    if err.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        err.into_owned()
    }
}

/// The last `n` lines of a file, or a note saying why it could not be read.
pub(crate) fn file_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_length_and_differs() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(random_hex(40).len(), 40);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert!(parse_version("16") > parse_version("15"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        let mut cmd = Command::new("psql");
        cmd.args(["-c", "select 1", "-p", "5432"]);
        assert_eq!(display_command(&cmd), "psql -c 'select 1' -p 5432");
    }
}
