//! Replica identity verdicts for published tables: what old values UPDATE
//! and DELETE will carry, and whether writes to the table fail once it is
//! published (PostgreSQL refuses UPDATE and DELETE on a published table
//! without a replica identity).

use cm_keys::TableName;
use serde::Serialize;
use tokio_postgres::Client;

/// One table's replica identity and what it means for invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityVerdict {
    /// The table.
    pub table: TableName,
    /// `d`, `n`, `f` or `i`.
    pub relreplident: String,
    /// What the identity gives us.
    pub verdict: Verdict,
}

/// What a table's replica identity gives the invalidator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// FULL: the whole old row, always.
    FullOldRow,
    /// DEFAULT with a PK or USING INDEX: old key columns only.
    KeyOnly,
    /// NOTHING: published UPDATE/DELETE fail on the primary.
    BrokenNothing,
    /// DEFAULT without a primary key: same as NOTHING.
    BrokenNoPrimaryKey,
    /// USING INDEX whose index was dropped.
    BrokenIdentityIndexMissing,
}

impl Verdict {
    /// True when published UPDATE/DELETE on the table fail (or, for a DELETE
    /// without old tuple, are silently dropped by pgoutput).
    pub fn is_broken(self) -> bool {
        matches!(
            self,
            Verdict::BrokenNothing
                | Verdict::BrokenNoPrimaryKey
                | Verdict::BrokenIdentityIndexMissing
        )
    }

    /// A sentence for humans.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::FullOldRow => "ok: full old row",
            Verdict::KeyOnly => "key-only: old non-key columns are not available",
            Verdict::BrokenNothing => {
                "BROKEN: REPLICA IDENTITY NOTHING; UPDATE/DELETE fail once published"
            }
            Verdict::BrokenNoPrimaryKey => {
                "BROKEN: DEFAULT identity without a primary key; UPDATE/DELETE fail once published"
            }
            Verdict::BrokenIdentityIndexMissing => "BROKEN: the replica identity index is missing",
        }
    }
}

/// The tables a publication covers, or, with `publication = None`, every
/// table FOR ALL TABLES would cover (ordinary and partitioned, permanent,
/// outside system schemas).
const TABLES_SQL: &str = "
WITH candidates AS (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE $1::text IS NULL AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    AND NOT c.relispartition
  UNION
  SELECT format('%I.%I', pt.schemaname, pt.tablename)::regclass::oid
  FROM pg_publication_tables pt WHERE pt.pubname = $1
)
SELECT n.nspname::text, c.relname::text, c.relreplident::text,
       pk.indexrelid IS NOT NULL, ri.indexrelid IS NOT NULL
FROM candidates JOIN pg_class c ON c.oid = candidates.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
ORDER BY 1, 2";

/// Verdicts for the tables of `publication`, or for every table FOR ALL
/// TABLES would publish when `publication` is `None`.
pub async fn identity_verdicts(
    client: &Client,
    publication: Option<&str>,
) -> Result<Vec<IdentityVerdict>, tokio_postgres::Error> {
    let rows = client.query(TABLES_SQL, &[&publication]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let relreplident: String = row.try_get(2)?;
        let has_pk: bool = row.try_get(3)?;
        let has_identity_index: bool = row.try_get(4)?;
        let verdict = match relreplident.as_str() {
            "f" => Verdict::FullOldRow,
            "n" => Verdict::BrokenNothing,
            "d" if !has_pk => Verdict::BrokenNoPrimaryKey,
            "i" if !has_identity_index => Verdict::BrokenIdentityIndexMissing,
            _ => Verdict::KeyOnly,
        };
        out.push(IdentityVerdict {
            table: TableName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
            relreplident,
            verdict,
        });
    }
    Ok(out)
}
