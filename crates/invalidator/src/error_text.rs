//! The one line `cm-invalidator` prints for a failed command: the error and
//! its causes, each said once.
//!
//! Error types here show their cause's text in their own message and also
//! return it as `source()`, and tokio-postgres shows only `db error` while
//! its source holds the server's message. Printing every link would repeat
//! text (`db error: db error: FATAL ...`); printing the first alone could hide
//! the server's message. [`render_chain`] prints each distinct text once and
//! a PostgreSQL error as the server's message.

use std::error::Error;

use cm_keys::describe_pg_error;

/// The chain, outermost first, as `outer: cause: root`, leaving out any link
/// whose text the line already holds.
pub fn render_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for error in chain {
        let postgres = error.downcast_ref::<tokio_postgres::Error>();
        let piece = postgres.map_or_else(|| error.to_string(), describe_pg_error);
        if !piece.is_empty() && !line.contains(&piece) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&piece);
        }
        if postgres.is_some() {
            // describe_pg_error already covers its causes.
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("resolving memcached servers: {0}")]
    struct Resolve(#[from] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("config key cache.servers: {0}")]
    struct Start(#[from] Resolve);

    fn chain<'a>(error: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
        std::iter::successors(Some(error), |&e| e.source()).collect()
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::other("failed to lookup address information");
        let error = Start(Resolve(io));
        let line = render_chain(chain(&error));
        assert_eq!(
            line,
            "config key cache.servers: resolving memcached servers: \
             failed to lookup address information"
        );
    }

    #[test]
    fn a_context_without_its_cause_gets_the_cause_appended() {
        let error = anyhow::Error::new(std::io::Error::other("connection refused"))
            .context("connecting to postgres.url");
        assert_eq!(
            render_chain(error.chain()),
            "connecting to postgres.url: connection refused"
        );
    }
}
