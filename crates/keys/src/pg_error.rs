//! One-line descriptions of tokio-postgres errors for operators.
//!
//! `tokio_postgres::Error` displays only its kind (`db error`), and keeps
//! the server's message in its source; printing both repeats it, printing
//! the first alone hides it. [`describe_pg_error`] gives the line to show.

/// The server's severity, SQLSTATE, message, detail and hint for an error
/// the server sent (`ERROR 42P01: relation "x" does not exist (hint: ...)`);
/// for any other error its kind and causes (`error connecting to server:
/// Connection refused (os error 111)`).
pub fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let piece = error.to_string();
        if !text.contains(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        cause = error.source();
    }
    text
}
