//! What the statement text says, parsed with `sqlparser` (PostgreSQL
//! dialect): whether it is a plain read, which relations it names, and the
//! equality conjunctions of a single-table `WHERE`.
//!
//! The filter is only trusted when the statement is one `SELECT` over one
//! table with no joins and no `WITH`: then every row of that table that can
//! change the result satisfies every top-level `AND`ed conjunct, so the
//! conjuncts `col = $n`, `col = literal` and `col IN (...)` name all such rows
//! by value. Anything else (joins, set operations, `OR` at the top, casts on
//! either side, functions) yields no filter, and the caller falls back to the
//! table-wide dependency.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, BinaryOperator, Expr, Ident, ObjectName,
    SetExpr, Statement, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Functions whose result changes between calls: a statement calling one is
/// read through, never cached.
const VOLATILE_FUNCTIONS: &[&str] = &[
    "now",
    "random",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v4",
    "txid_current",
    "pg_current_xact_id",
    "pg_sleep",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "current_setting",
    "set_config",
    "pg_advisory_lock",
    "pg_try_advisory_lock",
    "dblink",
];

/// A value a filter column is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operand {
    /// `$n`, as a 0-based parameter index.
    Param(usize),
    /// An integer literal, as written (sign included).
    Number(String),
    /// A single-quoted string literal.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
}

/// The equality conjunctions of a single-table `WHERE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The table's schema, if the statement names one.
    pub(crate) schema: Option<String>,
    /// The table's name as written (case-folded unless quoted).
    pub(crate) table: String,
    /// For each column, the values of its first equality or `IN` conjunct.
    pub(crate) columns: BTreeMap<String, Vec<Operand>>,
}

/// What the statement text tells the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlShape {
    /// A plain read that may be cached.
    Cacheable {
        /// The `WHERE` filter, when the statement is simple enough.
        filter: Option<Filter>,
    },
    /// A read that must not be cached (locking clause, volatile function,
    /// unparsable text); read through.
    ReadThrough(&'static str),
}

/// Analyses `sql`; `Err` (with the reason) for anything but one read-only
/// query.
pub(crate) fn analyse(sql: &str) -> Result<SqlShape, String> {
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => statements,
        // The parser does not know every PostgreSQL construct. A text it
        // cannot read is only passed on uncached, and only if it starts like
        // a read; the database has the last word on what it is.
        Err(_) => {
            let first = sql.trim_start().get(..6).unwrap_or("").to_ascii_lowercase();
            return if first == "select" {
                Ok(SqlShape::ReadThrough("statement text not understood"))
            } else {
                Err("statement text not understood and not starting with SELECT".into())
            };
        }
    };
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(match statements.len() {
            1 => "not a query".into(),
            n => format!("{n} statements"),
        });
    };
    // A data-modifying CTE (or any nested write) is a write.
    let mut nested_write = false;
    let _ = visit_statements(query, |statement| {
        if !matches!(statement, Statement::Query(_)) {
            nested_write = true;
        }
        ControlFlow::<()>::Continue(())
    });
    if nested_write || contains_write(&query.body) {
        return Err("the query writes (data-modifying WITH)".into());
    }
    if let Some(with) = &query.with {
        if with
            .cte_tables
            .iter()
            .any(|cte| contains_write(&cte.query.body))
        {
            return Err("the query writes (data-modifying WITH)".into());
        }
    }
    if let SetExpr::Select(select) = query.body.as_ref() {
        if select.into.is_some() {
            return Err("SELECT INTO creates a table".into());
        }
    }
    if !query.locks.is_empty() {
        return Ok(SqlShape::ReadThrough("locking clause"));
    }
    if calls_volatile_function(query) {
        return Ok(SqlShape::ReadThrough("volatile function"));
    }
    Ok(SqlShape::Cacheable {
        filter: filter(query),
    })
}

fn contains_write(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::SetOperation { left, right, .. } => contains_write(left) || contains_write(right),
        SetExpr::Query(q) => contains_write(&q.body),
        _ => false,
    }
}

fn calls_volatile_function(query: &sqlparser::ast::Query) -> bool {
    let mut found = false;
    let _ = visit_expressions(query, |expr| {
        if let Expr::Function(function) = expr {
            if let Some(name) = function.name.0.last().and_then(|p| p.as_ident()) {
                if VOLATILE_FUNCTIONS.contains(&fold(name).as_str()) {
                    found = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    // `CURRENT_TIMESTAMP` and friends without parentheses parse as identifiers
    // or as functions depending on the dialect; the text check catches both.
    let lower = query.to_string().to_ascii_lowercase();
    found
        || [
            "current_timestamp",
            "current_date",
            "current_time",
            "localtime",
        ]
        .iter()
        .any(|name| lower.contains(name))
}

/// Every relation the statement names, as (schema, name), case-folded.
pub(crate) fn relations(sql: &str) -> Vec<(Option<String>, String)> {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let _ = visit_relations(&statements, |name| {
        if let Some(parsed) = object_name(name) {
            out.push(parsed);
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn object_name(name: &ObjectName) -> Option<(Option<String>, String)> {
    let parts: Option<Vec<String>> = name.0.iter().map(|p| p.as_ident().map(fold)).collect();
    match parts?.as_slice() {
        [table] => Some((None, table.clone())),
        [schema, table] => Some((Some(schema.clone()), table.clone())),
        _ => None,
    }
}

fn filter(query: &sqlparser::ast::Query) -> Option<Filter> {
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    // `SELECT count(*) FROM (<query>) AS x`: an unfiltered read of one
    // derived table depends on exactly the rows the inner query does.
    if let TableFactor::Derived { subquery, .. } = &from.relation {
        return match select.selection {
            None => filter(subquery),
            Some(_) => None,
        };
    }
    let TableFactor::Table {
        name, alias, args, ..
    } = &from.relation
    else {
        return None;
    };
    if args.is_some() {
        return None;
    }
    let (schema, table) = object_name(name)?;
    let qualifier = alias.as_ref().map(|a| fold(&a.name));
    let mut columns: BTreeMap<String, Vec<Operand>> = BTreeMap::new();
    let mut conjuncts = Vec::new();
    if let Some(selection) = &select.selection {
        flatten_and(selection, &mut conjuncts);
    }
    let column = |expr: &Expr| -> Option<String> {
        match expr {
            Expr::Identifier(ident) => Some(fold(ident)),
            Expr::CompoundIdentifier(parts) => {
                let folded: Vec<String> = parts.iter().map(fold).collect();
                match folded.as_slice() {
                    [q, c]
                        if qualifier.as_deref() == Some(q.as_str())
                            || (qualifier.is_none() && *q == table) =>
                    {
                        Some(c.clone())
                    }
                    [s, t, c]
                        if qualifier.is_none()
                            && *t == table
                            && schema.as_deref().is_some_and(|schema| schema == s) =>
                    {
                        Some(c.clone())
                    }
                    _ => None,
                }
            }
            Expr::Nested(inner) => column_of(inner),
            _ => None,
        }
    };
    for conjunct in conjuncts {
        let found = match conjunct {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (column(left), column(right)) {
                (Some(c), None) => operand(right).map(|o| (c, vec![o])),
                (None, Some(c)) => operand(left).map(|o| (c, vec![o])),
                _ => None,
            },
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                let values: Option<Vec<Operand>> = list.iter().map(operand).collect();
                column(expr).zip(values)
            }
            _ => None,
        };
        if let Some((c, values)) = found {
            columns.entry(c).or_insert(values);
        }
    }
    Some(Filter {
        schema,
        table,
        columns,
    })
}

/// A bare column name inside parentheses.
fn column_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(fold(ident)),
        Expr::Nested(inner) => column_of(inner),
        _ => None,
    }
}

fn flatten_and<'e>(expr: &'e Expr, out: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            flatten_and(left, out);
            flatten_and(right, out);
        }
        Expr::Nested(inner) => flatten_and(inner, out),
        other => out.push(other),
    }
}

fn operand(expr: &Expr) -> Option<Operand> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(Operand::Param)
            }
            Value::Number(n, false) => Some(Operand::Number(n.to_string())),
            Value::SingleQuotedString(s) => Some(Operand::Text(s.clone())),
            Value::Boolean(b) => Some(Operand::Bool(*b)),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match operand(expr)? {
            Operand::Number(n) => Some(Operand::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Nested(inner) => operand(inner),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cols(sql: &str) -> Option<BTreeMap<String, Vec<Operand>>> {
        match analyse(sql).unwrap() {
            SqlShape::Cacheable { filter } => filter.map(|f| f.columns),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn equality_conjunctions_are_found_on_one_table() {
        let c = cols(
            "SELECT * FROM book b WHERE b.author_id = $1 AND (status IN ('a', 'b')) AND id > 3",
        )
        .unwrap();
        assert_eq!(c["author_id"], vec![Operand::Param(0)]);
        assert_eq!(
            c["status"],
            vec![Operand::Text("a".into()), Operand::Text("b".into())]
        );
        assert!(!c.contains_key("id"));
        let c = cols("select count(*) from public.book where 42 = \"Id\" and flag = true").unwrap();
        assert_eq!(c["Id"], vec![Operand::Number("42".into())]);
        assert_eq!(c["flag"], vec![Operand::Bool(true)]);
    }

    #[test]
    fn or_joins_and_casts_give_no_usable_equalities() {
        assert!(cols("SELECT * FROM book WHERE author_id = $1 OR id = 2")
            .unwrap()
            .is_empty());
        assert!(
            cols("SELECT * FROM book JOIN author a ON a.id = author_id WHERE author_id = $1")
                .is_none()
        );
        assert!(cols("SELECT * FROM book WHERE author_id = $1::int8")
            .unwrap()
            .is_empty());
        assert!(cols("SELECT * FROM book x WHERE book.author_id = 1")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn writes_are_refused_and_locking_reads_pass_through() {
        for sql in [
            "UPDATE book SET id = 1",
            "WITH d AS (DELETE FROM book RETURNING *) SELECT * FROM d",
            "SELECT * INTO t2 FROM book",
            "SELECT 1; SELECT 2",
            "CREATE TABLE t (id int)",
        ] {
            assert!(analyse(sql).is_err(), "{sql}");
        }
        assert!(matches!(
            analyse("SELECT * FROM book FOR UPDATE"),
            Ok(SqlShape::ReadThrough(_))
        ));
        assert!(matches!(
            analyse("SELECT now(), * FROM book"),
            Ok(SqlShape::ReadThrough(_))
        ));
    }

    #[test]
    fn a_count_wrapper_keeps_the_inner_filter() {
        let c = cols("SELECT count(*) FROM (SELECT * FROM book WHERE author_id = $1) AS cm_count")
            .unwrap();
        assert_eq!(c["author_id"], vec![Operand::Param(0)]);
    }

    #[test]
    fn relations_include_views_and_subqueries() {
        let r = relations("SELECT * FROM v JOIN s.t ON true WHERE x IN (SELECT y FROM \"Q\")");
        assert!(r.contains(&(None, "v".into())));
        assert!(r.contains(&(Some("s".into()), "t".into())));
        assert!(r.contains(&(None, "Q".into())));
    }
}
