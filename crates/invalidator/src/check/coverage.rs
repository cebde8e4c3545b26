//! What `check` says about coverage: which relations readers cache with
//! row-level precision, which only as a whole, and which they read through,
//! each with the reason (see README, "Correctness model").
//!
//! The readers decide per statement from the catalog (`cm-reader`'s
//! closure): a statement is read through when it can read a table the
//! publication does not carry in full (not in it, a row filter, a column
//! list, actions left out: some changes never reach the worker), an unlogged or
//! foreign table, a sequence or a system catalog (nothing in the WAL), or
//! calls a VOLATILE function or a STABLE one whose reads are not recorded.
//! These findings list the schema's relations and functions in those
//! classes, so an operator sees what will never be served from the cache.

use tokio_postgres::Client;

use cm_keys::{SchemaModel, TableName, TablePolicy};

use super::{finding, Finding, Status};

/// User relations that readers never cache, with the reason; the tables
/// they cache only as a whole. The publication's gaps are judged by the
/// readers' own expression ([`cm_reader::publication_gap_sql`]).
fn relations_sql() -> String {
    format!(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
                EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid),
                {}
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'f', 'm')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cachemachine')
           AND n.nspname NOT LIKE 'pg\\_%'
           AND c.relpersistence <> 't'
         ORDER BY 1, 2",
        cm_reader::publication_gap_sql("$1")
    )
}

/// User functions that make any statement calling them read through.
const FUNCTIONS_SQL: &str = "
SELECT n.nspname::text || '.' || p.proname::text,
       CASE p.provolatile WHEN 'v' THEN 'VOLATILE'
                          ELSE 'STABLE without a BEGIN ATOMIC body' END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'cachemachine')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND p.prokind IN ('f', 'a', 'w')
  AND (p.provolatile = 'v' OR (p.provolatile = 's' AND p.prosqlbody IS NULL))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')
ORDER BY 1";

/// The coverage findings for `publication`; `model` (when it could be
/// built) says which tables the mapping invalidates as a whole.
pub(super) async fn coverage_findings(
    client: &Client,
    publication: &str,
    model: Option<&SchemaModel>,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for row in client.query(&relations_sql(), &[&publication]).await? {
        let name = TableName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
        let kind: String = row.try_get(2)?;
        let persistence: String = row.try_get(3)?;
        let has_children: bool = row.try_get(4)?;
        let publication_gap: Option<String> = row.try_get(5)?;
        let whole_table = model
            .and_then(|m| m.table(&name))
            .is_some_and(|t| t.policy == TablePolicy::WholeTable);
        out.extend(relation_finding(
            &name,
            &kind,
            &persistence,
            has_children,
            publication_gap.as_deref(),
            whole_table,
            publication,
        ));
    }
    for row in client.query(FUNCTIONS_SQL, &[]).await? {
        let name: String = row.try_get(0)?;
        let why: String = row.try_get(1)?;
        out.push(finding(
            Status::Ok,
            format!("coverage {name}()"),
            format!(
                "read through: {why}; a cached copy would skip its effects or miss what it reads"
            ),
        ));
    }
    Ok(out)
}

/// One relation's coverage, or `None` for a published table cached row by
/// row (the normal case, not listed).
fn relation_finding(
    name: &TableName,
    kind: &str,
    persistence: &str,
    has_children: bool,
    publication_gap: Option<&str>,
    whole_table: bool,
    publication: &str,
) -> Option<Finding> {
    let (status, detail) = match kind {
        "f" => (
            Status::Ok,
            "read through: a foreign table's changes are not in this database's WAL".to_owned(),
        ),
        "m" => (
            Status::Ok,
            "cached as a whole until REFRESH MATERIALIZED VIEW (a DDL event the triggers report)"
                .to_owned(),
        ),
        _ if persistence == "u" => (
            Status::Warn,
            "read through: an unlogged table's changes are not in the WAL".to_owned(),
        ),
        _ if publication_gap.is_some() => (
            Status::Warn,
            format!(
                "read through: {} (publication {publication}), so some of its changes never \
                 reach the worker (publish every change of it, without a row filter or a \
                 column list, to cache it)",
                publication_gap.unwrap_or_default()
            ),
        ),
        _ if has_children => (
            Status::Ok,
            "cached as a whole: reading it reads its children (inheritance or partitions), so \
             any change to it or a child invalidates every result over it"
                .to_owned(),
        ),
        _ if whole_table => (
            Status::Ok,
            "cached as a whole (policy = \"whole_table\" in the mapping)".to_owned(),
        ),
        _ => return None,
    };
    Some(finding(status, format!("coverage {name}"), detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tables_not_cached_row_by_row_are_listed() {
        let table = TableName::new("s", "t");
        let list = |kind, persistence, children, gap| {
            relation_finding(&table, kind, persistence, children, gap, false, "p")
        };
        assert!(list("r", "p", false, None).is_none());
        let unpublished = list("r", "p", false, Some("published with a row filter"))
            .map(|f| (f.status, f.detail));
        assert!(
            matches!(&unpublished, Some((Status::Warn, d))
                if d.contains("published with a row filter (publication p)")),
            "{unpublished:?}"
        );
        assert!(list("r", "u", false, None).is_some_and(|f| f.detail.contains("unlogged")));
        assert!(list("p", "p", true, None).is_some_and(|f| f.detail.contains("as a whole")));
        let gap = Some("not in the publication");
        assert!(list("m", "p", false, gap).is_some_and(|f| f.detail.contains("REFRESH")));
        assert!(relation_finding(&table, "r", "p", false, None, true, "p")
            .is_some_and(|f| f.detail.contains("whole_table")));
    }
}
