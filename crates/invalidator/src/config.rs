//! The worker's configuration: a TOML file merged with environment variables
//! (`CM_INVALIDATOR_` prefix, `__` between levels, e.g.
//! `CM_INVALIDATOR_POSTGRES__URL`). Unknown keys and bad values are errors
//! that name the key. `config/invalidator.toml` documents every key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cm_worker::{SetupOptions, WorkerOptions};
use figment::providers::{Env, Format, Toml};
use figment::{Figment, Provider};
use serde::Deserialize;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "CM_INVALIDATOR_";

/// Everything the worker reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidatorConfig {
    /// The database, slot and publication.
    pub postgres: PostgresConfig,
    /// Where the cache lives.
    pub cache: CacheConfig,
    /// Worker tuning.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The table mapping (`[schema.tables."schema.table"]`); parsed by
    /// `cm-keys`, which reports its errors with their own paths.
    #[serde(default, rename = "schema")]
    _schema: Option<serde::de::IgnoredAny>,
}

/// `[postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (URL or key=value); the role needs REPLICATION.
    /// `sslmode` and `sslrootcert` work as in libpq (`docs/tls.md`).
    pub url: String,
    /// Replication slot; lower-case letters, digits, underscores.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication the slot streams.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Tables for `setup` to publish (`schema.table`); empty means FOR ALL TABLES.
    #[serde(default)]
    pub publish_tables: Vec<String>,
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// memcached servers for metadata (flush lists, generations, heartbeat,
    /// worker state), `host:port`, listed identically by every process. Each
    /// must run with `-M` (never evict): the store refuses one that evicts.
    pub servers: Vec<String>,
    /// memcached servers for results (`q:` keys), which may evict; empty:
    /// results live on `servers`. Readers must list the same ones: the
    /// invalidator deletes results there. See `docs/eviction.md`.
    #[serde(default)]
    pub result_servers: Vec<String>,
    /// Key prefix shared with the readers.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Timeout of one cache call, in milliseconds.
    #[serde(default = "default_cache_timeout_ms")]
    pub timeout_ms: u64,
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// How often to emit a heartbeat message through the WAL, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Keys one transaction may invalidate one by one; past it, the
    /// transaction coarsens to table generations.
    #[serde(default = "default_key_budget")]
    pub key_budget: usize,
    /// How often to send a status update to PostgreSQL, in milliseconds.
    #[serde(default = "default_status_ms")]
    pub status_interval_ms: u64,
    /// Longest wait between retries (memcached or PostgreSQL down, slot busy), in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Groups of transactions (commits that arrive together) whose
    /// invalidations may be applied concurrently; each transaction is
    /// acknowledged only after it and all earlier ones are done.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Heartbeats only while the DDL event triggers fire in every session
    /// (readers read through otherwise), and an epoch bump once they fire
    /// again. `false` for a database where they cannot be installed.
    #[serde(default = "default_require_ddl_triggers")]
    pub require_ddl_triggers: bool,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `/metrics` and `/healthz`; none disables the endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// `/healthz` fails when the slot lags more than this many bytes.
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// `/healthz` fails when the last heartbeat round trip is older, in milliseconds.
    #[serde(default = "default_max_heartbeat_age_ms")]
    pub max_heartbeat_age_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `cm_invalidator=debug,info`. The
    /// `RUST_LOG` environment variable, when set, replaces it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_slot() -> String {
    WorkerOptions::DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    WorkerOptions::DEFAULT_SLOT.into()
}
fn default_prefix() -> String {
    "cm".into()
}
fn default_cache_timeout_ms() -> u64 {
    500
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_key_budget() -> usize {
    WorkerOptions::DEFAULT_KEY_BUDGET
}
fn default_status_ms() -> u64 {
    millis(WorkerOptions::DEFAULT_STATUS_INTERVAL)
}
fn default_max_backoff_ms() -> u64 {
    millis(WorkerOptions::DEFAULT_MAX_BACKOFF)
}
fn default_require_ddl_triggers() -> bool {
    true
}
fn default_max_in_flight() -> usize {
    WorkerOptions::DEFAULT_MAX_IN_FLIGHT
}
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
fn default_max_lag_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_heartbeat_age_ms() -> u64 {
    30_000
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            heartbeat_interval_ms: default_heartbeat_ms(),
            key_budget: default_key_budget(),
            status_interval_ms: default_status_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_in_flight: default_max_in_flight(),
            require_ddl_triggers: default_require_ddl_triggers(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_lag_bytes: default_max_lag_bytes(),
            max_heartbeat_age_ms: default_max_heartbeat_age_ms(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

impl WorkerConfig {
    /// What heartbeats do about DDL event triggers that do not fire.
    pub fn ddl_trigger_policy(&self) -> cm_worker::DdlTriggerPolicy {
        if self.require_ddl_triggers {
            cm_worker::DdlTriggerPolicy::Required
        } else {
            cm_worker::DdlTriggerPolicy::Optional
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

/// A configuration that could not be loaded, naming where the bad value
/// came from (the file, or the environment variable) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: key {key}: {message}")]
pub struct ConfigError {
    /// `config file <path>`, or `environment variable CM_INVALIDATOR_...`
    /// when the key's value came from the environment.
    pub source_name: String,
    /// The dotted key path that was wrong (`(root)` for the whole document).
    pub key: String,
    /// What was wrong.
    pub message: String,
}

impl InvalidatorConfig {
    /// The figment for a file plus the environment; callers that need other
    /// sections of the same file (the schema mapping) extract from it too.
    pub fn figment(file: &Path) -> Figment {
        Figment::new()
            .merge(Toml::file_exact(file))
            .merge(env_provider())
    }

    /// Loads and validates the configuration from `file` and the environment.
    pub fn load(file: &Path) -> Result<InvalidatorConfig, ConfigError> {
        Self::from_figment(
            &Self::figment(file),
            &format!("config file {}", file.display()),
        )
    }

    /// Extracts the worker's sections (the schema mapping lives under
    /// `[schema]` and is read by `cm-keys`).
    pub fn from_figment(figment: &Figment, source_name: &str) -> Result<Self, ConfigError> {
        let error = |key: String, message: String| ConfigError {
            source_name: origin(figment, &key).unwrap_or_else(|| source_name.to_owned()),
            key,
            message,
        };
        let config: InvalidatorConfig = figment
            .extract()
            .map_err(|e| error(key_path(&e.path), e.kind.to_string()))?;
        config
            .validate()
            .map_err(|(key, message)| error(key.into(), message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.cache.servers.is_empty() {
            return Err(("cache.servers", "needs at least one host:port".into()));
        }
        if let Some(bad) = self.cache.servers.iter().find(|s| !s.contains(':')) {
            return Err(("cache.servers", format!("{bad:?} is not host:port")));
        }
        if let Some(bad) = self.cache.result_servers.iter().find(|s| !s.contains(':')) {
            return Err(("cache.result_servers", format!("{bad:?} is not host:port")));
        }
        if let Some(both) = self
            .cache
            .result_servers
            .iter()
            .find(|s| self.cache.servers.contains(s))
        {
            return Err((
                "cache.result_servers",
                format!("{both:?} is also in cache.servers; a server holds metadata or results, not both"),
            ));
        }
        if self.worker.key_budget == 0 {
            return Err(("worker.key_budget", "must be at least 1".into()));
        }
        if self.worker.max_in_flight == 0 {
            return Err(("worker.max_in_flight", "must be at least 1".into()));
        }
        if self.worker.heartbeat_interval_ms == 0 {
            return Err(("worker.heartbeat_interval_ms", "must be at least 1".into()));
        }
        cm_tls::TlsSettings::from_conninfo(&self.postgres.url)
            .map_err(|e| ("postgres.url", e.to_string()))?;
        cm_replication::SlotName::new(&self.postgres.slot)
            .map_err(|e| ("postgres.slot", e.to_string()))?;
        check_log_filter(&self.log.level).map_err(|e| ("log.level", e))?;
        Ok(())
    }

    /// The engine's options: `[postgres]` and `[worker]`. `abort_after_apply`
    /// is left off; the application sets it from its fault-injection
    /// variable.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            postgres_url: self.postgres.url.clone(),
            slot: self.postgres.slot.clone(),
            publication: self.postgres.publication.clone(),
            key_budget: self.worker.key_budget,
            status_interval: Duration::from_millis(self.worker.status_interval_ms),
            max_backoff: Duration::from_millis(self.worker.max_backoff_ms),
            max_in_flight: self.worker.max_in_flight,
            abort_after_apply: false,
        }
    }

    /// What `setup` creates: `[postgres]`.
    pub fn setup_options(&self) -> SetupOptions {
        SetupOptions {
            postgres_url: self.postgres.url.clone(),
            slot: self.postgres.slot.clone(),
            publication: self.postgres.publication.clone(),
            publish_tables: self.postgres.publish_tables.clone(),
        }
    }
}

/// Checks `log.level`: a level (`info`), or comma-separated directives
/// that each give a level (`cm_worker=debug,info`). The tracing filter
/// syntax also takes a bare target (`cm_worker`, meaning every level of
/// it), but then any typo is a target that matches nothing and the log
/// goes silent, so a directive without `=` must be a level here.
fn check_log_filter(filter: &str) -> Result<(), String> {
    let bad = |why: String| Err(format!("{filter:?} is not a log filter: {why}"));
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return bad("it is empty; write e.g. \"info\" or \"cm_worker=debug,info\"".into());
    }
    for directive in directives {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target.trim()), level.trim()),
            None => (None, directive),
        };
        if level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_err()
        {
            return bad(format!(
                "{level:?} in {directive:?} is not a level (trace, debug, info, warn, error, off)"
            ));
        }
        if target.is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace)) {
            return bad(format!("{directive:?} does not name a target"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .or_else(|e| bad(e.to_string()))
}

/// The environment variables: `CM_INVALIDATOR_<SECTION>__<KEY>`.
/// `CM_INVALIDATOR_CONFIG` names the file itself (a CLI option).
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__")
}

/// `environment variable CM_INVALIDATOR_...` when the value at the dotted
/// `key` came from the environment; `None` when it came from the file (or
/// nowhere: a missing key).
fn origin(figment: &Figment, key: &str) -> Option<String> {
    let found = figment.find_metadata(key)?;
    if found.name != env_provider().metadata().name {
        return None;
    }
    let variable = key.to_ascii_uppercase().replace('.', "__");
    Some(format!("environment variable {ENV_PREFIX}{variable}"))
}

/// A warning for a config file that holds a password (in `postgres.url`)
/// while group or others may read it; `None` when it holds none or only its
/// owner may read it (or it cannot be read, which loading reports).
pub fn exposed_password_warning(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let url: String = Figment::from(Toml::file_exact(file))
        .extract_inner("postgres.url")
        .ok()?;
    let parsed = cm_tls::Conninfo::parse(&url).ok()?;
    parsed.config().get_password()?;
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "config file {} holds a password (in postgres.url) and group or others may read it \
             (mode {mode:03o}): chmod 600 it, or pass the URL in {ENV_PREFIX}POSTGRES__URL",
            file.display()
        )
    })
}

fn key_path(path: &[String]) -> String {
    if path.is_empty() {
        "(root)".into()
    } else {
        path.join(".")
    }
}
