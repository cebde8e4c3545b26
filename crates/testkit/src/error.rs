//! The one error type of the test kit.

use std::io;
use std::time::Duration;

/// Everything that can go wrong while starting, using or stopping a test server.
///
/// Every variant says what was being done, so that a failing test's output
/// explains itself without a debugger: the command line that failed and its
/// stderr, what was being waited for, or which environment variable was bad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A command ran but exited unsuccessfully.
    #[error("command `{command}` failed ({status})\n--- stderr ---\n{stderr}{}", log_section(.log_tail))]
    Command {
        /// The command line, roughly as a shell would show it.
        command: String,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
        /// What it wrote to stderr (and stdout, when stderr was empty).
        stderr: String,
        /// The last lines of the server log, when a server was involved.
        log_tail: Option<String>,
    },

    /// A command could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the operating system refused.
        #[source]
        source: io::Error,
    },

    /// A psql script against a test database failed.
    #[error("psql against database `{dbname}` failed ({status})\n--- stderr ---\n{stderr}\n--- sql ---\n{sql}")]
    Psql {
        /// The database the script ran in.
        dbname: String,
        /// How psql ended.
        status: String,
        /// What psql wrote to stderr.
        stderr: String,
        /// The script that was fed to psql.
        sql: String,
    },

    /// Something did not become ready in time.
    #[error("timed out after {waited:?} waiting for {what}{}", detail_section(.detail))]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last error seen while waiting, or a log tail.
        detail: String,
    },

    /// An environment variable that configures the kit holds an unusable value.
    #[error("environment variable {var} has a bad value `{value}`: {reason}")]
    BadEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A connection URL could not be understood.
    #[error("bad PostgreSQL URL `{url}`: {reason}")]
    BadUrl {
        /// The URL, with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A program or directory the kit needs is missing.
    #[error("{what} not found: {detail}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// Where it was looked for, and how to fix it.
        detail: String,
    },

    /// A server answered a query with something the kit cannot read.
    #[error("unexpected answer to {what}: `{got}`")]
    Unexpected {
        /// What was asked.
        what: String,
        /// What came back.
        got: String,
    },

    /// The throwaway TLS certificates could not be generated.
    #[error("generating the test TLS certificates: {0}")]
    Certificate(String),

    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

fn log_section(log_tail: &Option<String>) -> String {
    match log_tail {
        Some(tail) if !tail.trim().is_empty() => format!("\n--- server log (tail) ---\n{tail}"),
        Some(_) => "\n--- server log is empty ---".to_string(),
        None => String::new(),
    }
}

fn detail_section(detail: &str) -> String {
    if detail.trim().is_empty() {
        String::new()
    } else {
        format!("\n{detail}")
    }
}
