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
    visit_statements, BinaryOperator, Expr, Ident, ObjectName, SetExpr, Statement, TableFactor,
    UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Words that PostgreSQL reads as a value of the moment or of the session
/// (SQL value functions, parsed without parentheses, that are not calls of
/// `pg_proc` functions): a statement using one is read through.
const SESSION_VALUE_WORDS: &[&str] = &[
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "system_user",
];

/// Date/time input strings that PostgreSQL turns into the time of the
/// moment (`'now'::timestamptz`, `date 'today'`): a statement holding one
/// as a literal is read through, whatever it is compared with.
const MOMENT_LITERALS: &[&str] = &["now", "today", "tomorrow", "yesterday"];

/// How [`analyse`] starts the reason for a text it cannot parse.
pub(crate) const NOT_UNDERSTOOD: &str = "statement text not understood";

/// A name as the text writes it: optional schema, name (case-folded
/// unless quoted).
pub(crate) type WrittenName = (Option<String>, String);

/// What the statement text names, for the catalog to resolve under the
/// session's `search_path` (see `closure.rs`): never trusted on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mentions {
    /// Every relation name (tables, views, CTE names, table functions).
    pub(crate) relations: Vec<WrittenName>,
    /// Every function called, in expressions or in `FROM`.
    pub(crate) functions: Vec<WrittenName>,
    /// Every operator symbol used.
    pub(crate) operators: Vec<String>,
}

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
    /// A plain read that may be cached, if the catalog agrees.
    Cacheable {
        /// The `WHERE` filter, when the statement is simple enough.
        filter: Option<Filter>,
        /// What the text names.
        mentions: Mentions,
    },
    /// A read that must not be cached (locking clause, `TABLESAMPLE`, a
    /// value of the moment or session, unparsable text); read through.
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
                Err(format!("{NOT_UNDERSTOOD} and not starting with SELECT"))
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
    let mut scan = MentionScan::default();
    let _ = query.visit(&mut scan);
    if let Some(reason) = scan.read_through {
        return Ok(SqlShape::ReadThrough(reason));
    }
    Ok(SqlShape::Cacheable {
        filter: filter(query),
        mentions: scan.mentions,
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

/// Collects the names a query mentions and the constructs that are never
/// cached whatever the catalog says.
#[derive(Default)]
struct MentionScan {
    mentions: Mentions,
    read_through: Option<&'static str>,
}

impl Visitor for MentionScan {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        match object_name(relation) {
            Some(name) => self.mentions.relations.push(name),
            None => self.read_through = Some("a relation name with more than two parts"),
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                sample: Some(_), ..
            } => {
                self.read_through = Some("TABLESAMPLE");
            }
            // `FROM f(...)`: a set-returning function, also visited as a
            // relation name (which the catalog will not resolve).
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function) => {
                let word = function.name.0.last().and_then(|p| p.as_ident()).map(fold);
                if word.is_some_and(|w| SESSION_VALUE_WORDS.contains(&w.as_str())) {
                    self.read_through = Some("a value of the moment or of the session");
                }
                self.function(&function.name);
            }
            Expr::Identifier(ident)
                if ident.quote_style.is_none()
                    && SESSION_VALUE_WORDS.contains(&ident.value.to_lowercase().as_str()) =>
            {
                self.read_through = Some("a value of the moment or of the session");
            }
            // `'book'::regclass` and the like look names up in the catalog:
            // no generation covers the answer (an oid changes on re-create).
            Expr::Cast { data_type, .. } if is_catalog_type(&data_type.to_string()) => {
                self.read_through = Some("a cast to a reg* type (a catalog lookup)");
            }
            Expr::TypedString(typed) if is_catalog_type(&typed.data_type.to_string()) => {
                self.read_through = Some("a cast to a reg* type (a catalog lookup)");
            }
            Expr::BinaryOp { op, .. } => self.operator(op.to_string()),
            Expr::UnaryOp { op, .. } => self.operator(op.to_string()),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, value: &Value) -> ControlFlow<()> {
        if let Value::SingleQuotedString(text) = value {
            if MOMENT_LITERALS.contains(&text.trim().to_lowercase().as_str()) {
                self.read_through = Some("a date/time literal meaning the moment ('now', 'today')");
            }
        }
        ControlFlow::Continue(())
    }
}

/// `regclass`, `regproc`, `regtype` and the other object identifier types
/// whose input and output functions read the catalog.
fn is_catalog_type(type_name: &str) -> bool {
    let name = type_name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    [
        "regclass",
        "regcollation",
        "regconfig",
        "regdictionary",
        "regnamespace",
        "regoper",
        "regoperator",
        "regproc",
        "regprocedure",
        "regrole",
        "regtype",
    ]
    .contains(&name)
}

impl MentionScan {
    fn function(&mut self, name: &ObjectName) {
        match object_name(name) {
            Some(name) => self.mentions.functions.push(name),
            None => self.read_through = Some("a function name with more than two parts"),
        }
    }

    /// Operator symbols only: `AND`, `IS`, `LIKE` and the like are syntax.
    fn operator(&mut self, symbol: String) {
        let symbol = symbol
            .trim_start_matches("OPERATOR(")
            .trim_end_matches(')')
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !symbol.is_empty()
            && !symbol.chars().any(char::is_alphanumeric)
            && !self.mentions.operators.contains(&symbol)
        {
            self.mentions.operators.push(symbol);
        }
    }
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
            SqlShape::Cacheable { filter, .. } => filter.map(|f| f.columns),
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
    }

    #[test]
    fn a_count_wrapper_keeps_the_inner_filter() {
        let c = cols("SELECT count(*) FROM (SELECT * FROM book WHERE author_id = $1) AS cm_count")
            .unwrap();
        assert_eq!(c["author_id"], vec![Operand::Param(0)]);
    }

    fn mentions(sql: &str) -> Mentions {
        match analyse(sql).unwrap() {
            SqlShape::Cacheable { mentions, .. } => mentions,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mentions_name_relations_functions_and_operators() {
        let m = mentions(
            "SELECT lower(t.x), s.f(1) FROM v JOIN s.t ON true, generate_series(1, 2) g \
             WHERE x IN (SELECT y FROM \"Q\") AND a ~* b AND c @@ d",
        );
        assert!(m.relations.contains(&(None, "v".into())));
        assert!(m.relations.contains(&(Some("s".into()), "t".into())));
        assert!(m.relations.contains(&(None, "Q".into())));
        for f in [(None, "lower"), (Some("s"), "f"), (None, "generate_series")] {
            let f = (f.0.map(str::to_owned), f.1.to_owned());
            assert!(m.functions.contains(&f), "{f:?} in {m:?}");
        }
        assert!(m.operators.contains(&"~*".to_owned()), "{m:?}");
        assert!(m.operators.contains(&"@@".to_owned()), "{m:?}");
        assert!(!m.operators.iter().any(|o| o.contains("AND")), "{m:?}");
    }

    #[test]
    fn values_of_the_moment_and_sampling_are_read_through() {
        for sql in [
            "SELECT * FROM book WHERE created > 'now'::timestamptz",
            "SELECT * FROM book WHERE d = date ' Today'",
            "SELECT current_user, * FROM book",
            "SELECT * FROM book WHERE owner = CURRENT_USER",
            "SELECT current_timestamp",
            "SELECT * FROM book WHERE d < CURRENT_DATE",
            "SELECT * FROM book TABLESAMPLE SYSTEM (10)",
            "SELECT 'book'::regclass::oid",
            "SELECT CAST('lower(text)' AS regprocedure)",
        ] {
            assert!(
                matches!(analyse(sql), Ok(SqlShape::ReadThrough(_))),
                "{sql}: {:?}",
                analyse(sql)
            );
        }
        // A user type whose name merely starts like one is fine.
        assert!(matches!(
            analyse("SELECT code::region FROM book"),
            Ok(SqlShape::Cacheable { .. })
        ));
        // A column that happens to be called like a keyword, quoted, is fine.
        assert!(matches!(
            analyse("SELECT \"user\" FROM book WHERE title = 'nowhere'"),
            Ok(SqlShape::Cacheable { .. })
        ));
    }
}
