//! [`InspectionReport`]: what a consistency check found.

use serde::Serialize;

/// The outcome of one [`crate::inspect::inspect`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InspectionReport {
    /// The fence's LSN: every write committed before it was invalidated
    /// before any result was checked.
    pub fence_lsn: String,
    /// Distinct `q:` keys found in the inspection registry.
    pub registered: usize,
    /// Results a reader would serve now that were re-run and compared.
    pub checked: usize,
    /// Registered results not checked, all reasons together (see
    /// [`InspectionReport::skipped_by_reason`]). Every registered result
    /// is either checked or skipped: `registered == checked + skipped`.
    pub skipped: usize,
    /// Why results were skipped.
    pub skipped_by_reason: SkipCounts,
    /// Results a reader would serve that differ from the database.
    pub stale: Vec<StaleEntry>,
    /// Results whose query failed when re-run (dropped table, changed
    /// type, a recorded session setting PostgreSQL no longer accepts...):
    /// neither fresh nor stale.
    pub failed: Vec<FailedEntry>,
}

impl InspectionReport {
    /// Whether any stale result was found.
    pub fn has_stale(&self) -> bool {
        !self.stale.is_empty()
    }
}

/// Counts of registered results that were not checked, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkipCounts {
    /// The result is gone: expired, evicted, invalidated or never stored.
    pub not_cached: usize,
    /// The result is there but a reader would not serve it: its epoch or a
    /// table generation no longer matches.
    pub not_servable: usize,
    /// The value is not a row set the checker can compare: a `query_as`
    /// result is what the caller's mapping closure made of the rows (a
    /// serialized `Vec<T>`), and neither the closure nor the rows it read
    /// are stored, so nothing the database returns can be compared with
    /// it. (`cached`/`cached_with` values have no statement at all and are
    /// not registered.)
    pub not_rows: usize,
    /// The value does not decode as this version's entry.
    pub unreadable: usize,
    /// The result differed, then changed or went away before the
    /// confirming second look: a concurrent write, not a stale entry.
    pub changed_during_check: usize,
    /// The result was filled as a role (`current_user`) the checker cannot
    /// `SET ROLE` to (its session user is not a member, or the role is
    /// gone): checked as the checker's own role it could differ only by
    /// privileges and row-level security, a false positive.
    pub role_not_assumable: usize,
    /// Not looked at: the check had its `sample` of results.
    pub not_sampled: usize,
}

impl SkipCounts {
    /// The sum of all reasons.
    pub fn total(&self) -> usize {
        self.not_cached
            + self.not_servable
            + self.not_rows
            + self.unreadable
            + self.changed_during_check
            + self.role_not_assumable
            + self.not_sampled
    }
}

/// One parameter as recorded: its type oid and binary value in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportParam {
    /// The type oid the statement was prepared with.
    pub type_oid: u32,
    /// The binary wire value in lowercase hex; `None` for NULL.
    pub hex: Option<String>,
}

/// A cached result that differs from what its query returns now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleEntry {
    /// The `q:` key.
    pub key: String,
    /// The query's namespace.
    pub namespace: String,
    /// The statement.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<ReportParam>,
    /// The session state it was re-run under, as `set_config` names and
    /// values (`role` first): the reader's, recorded when it learned the
    /// statement. Empty for results filled before readers recorded it,
    /// which were re-run in the checker's own session.
    pub session: Vec<(String, String)>,
    /// The first difference (row counts and the first differing row).
    pub diff: String,
}

/// A cached result whose query failed when re-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedEntry {
    /// The `q:` key.
    pub key: String,
    /// The statement.
    pub sql: String,
    /// The database's error.
    pub error: String,
}
