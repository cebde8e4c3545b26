//! Logging: a tracing subscriber writing text or JSON lines to stderr.

use cm_invalidator::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the subscriber. `RUST_LOG`, when set and valid, replaces
/// `log.level` (which loading the configuration already validated).
pub fn init(log: &LogConfig) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let (filter, env_error) = match from_env.map(|value| EnvFilter::try_new(&value)) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (level_filter(log), Some(error)),
        None => (level_filter(log), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Some(error) = env_error {
        tracing::warn!(%error, level = %log.level, "RUST_LOG is not a tracing filter; using log.level");
    }
}

fn level_filter(log: &LogConfig) -> EnvFilter {
    EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"))
}
