//! What a statement can read, from the catalog, whatever its parameter
//! values: the closure of the names its text mentions.
//!
//! An `EXPLAIN` plan shows only what the planner kept for one set of values:
//! it drops `UNION ALL` branches that are constant-false for them, children
//! excluded by `CHECK` constraints and pruned partitions, without always
//! saying so. So the dependencies come from the catalog instead, in one
//! query (`closure.sql`) run under the session's `search_path`:
//!
//! * every relation name the text mentions, resolved with `to_regclass`
//!   exactly as PostgreSQL resolves it (a view `api.addons` shadowing the
//!   table `app.addons` resolves to the view); names that resolve to nothing
//!   (CTE names, table functions) drop out;
//! * every function the text calls, by name, in the schemas the session
//!   searches (every overload: the catalog does not say which one the
//!   planner picks, so the strictest decides), and every user-defined
//!   operator with a symbol the text uses;
//! * then, recursively: what each view's `SELECT` rule references (every
//!   `UNION` branch), the `pg_inherits` children of every table (inheritance
//!   and partitions, at any depth), what row-level security policies
//!   reference, what SQL-standard function bodies (`BEGIN ATOMIC`)
//!   reference, and the function behind each user-defined operator.
//!
//! Built-in objects are pinned in PostgreSQL and have no `pg_depend` rows,
//! which is why built-in functions are found by name from the text.
//!
//! [`decide`] turns the closure into the tables and objects a result
//! depends on, or the reason it is never cached.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use cm_keys::{SchemaModel, TableName};
use tokio_postgres::Client;

use crate::sql::{Mentions, WrittenName};

/// The closure query; parameters: relation names as `regclass` text,
/// function schemas (NULL: searched), function names, operator symbols,
/// the publication (NULL: not checked).
static CLOSURE_SQL: LazyLock<String> = LazyLock::new(|| {
    include_str!("closure.sql").replace("/* publication_gap($5) */", &publication_gap_sql("$5"))
});

/// A SQL expression (text) that says why the publication named by the
/// parameter `publication_param` (such as `"$1"`) does not carry every
/// change of the relation `c` of namespace `n` in full: not in it, a row
/// filter, a column list, or actions it does not publish. NULL when it
/// does, when the parameter is NULL, and for partitioned tables. The
/// readers' closure and `cm-invalidator check` judge tables with it.
pub fn publication_gap_sql(publication_param: &str) -> String {
    include_str!("publication_gap.sql").replace("$PUB", publication_param)
}

/// Built-in STABLE functions that depend only on their arguments, on data
/// the statement already depends on, and on the session settings a
/// namespace stands for (`TimeZone`, `DateStyle`, `IntervalStyle`, `lc_*`,
/// `default_text_search_config`, `extra_float_digits`). Every other STABLE
/// built-in reads the clock (`now`, the one-argument `age`), the session or
/// role (`current_setting`, `pg_backend_pid`, `inet_client_port`,
/// `has_table_privilege`, `txid_current_snapshot`), or catalogs and
/// statistics nothing invalidates (`pg_get_viewdef`, `to_regclass`,
/// `pg_stat_*`), so a statement calling one is read through.
const SETTINGS_ONLY_BUILTINS: &[&str] = &[
    "anytextcat",
    "array_to_json",
    "array_to_string",
    "concat",
    "concat_ws",
    "convert",
    "convert_from",
    "convert_to",
    "date",
    "date_cmp_timestamptz",
    "date_eq_timestamptz",
    "date_ge_timestamptz",
    "date_gt_timestamptz",
    "date_le_timestamptz",
    "date_lt_timestamptz",
    "date_ne_timestamptz",
    "date_part",
    "date_trunc",
    "enum_first",
    "enum_last",
    "enum_range",
    "extract",
    "format",
    "generate_series",
    "getdatabaseencoding",
    "in_range",
    "interval_pl_timestamptz",
    "json_agg",
    "json_agg_transfn",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "json_object_agg_transfn",
    "json_populate_record",
    "json_populate_recordset",
    "json_to_record",
    "json_to_recordset",
    "json_to_tsvector",
    "jsonb_agg",
    "jsonb_agg_finalfn",
    "jsonb_agg_transfn",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg",
    "jsonb_object_agg_finalfn",
    "jsonb_object_agg_transfn",
    "jsonb_path_exists_tz",
    "jsonb_path_match_tz",
    "jsonb_path_query_array_tz",
    "jsonb_path_query_first_tz",
    "jsonb_path_query_tz",
    "jsonb_populate_record",
    "jsonb_populate_recordset",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_to_tsvector",
    "length",
    "make_timestamptz",
    "money",
    "numeric",
    "overlaps",
    "pg_char_to_encoding",
    "pg_collation_for",
    "pg_encoding_to_char",
    "pg_typeof",
    "phraseto_tsquery",
    "plainto_tsquery",
    "quote_literal",
    "quote_nullable",
    "row_to_json",
    "textanycat",
    "time",
    "timestamp",
    "timestamp_cmp_timestamptz",
    "timestamp_eq_timestamptz",
    "timestamp_ge_timestamptz",
    "timestamp_gt_timestamptz",
    "timestamp_le_timestamptz",
    "timestamp_lt_timestamptz",
    "timestamp_ne_timestamptz",
    "timestamptz",
    "timestamptz_cmp_date",
    "timestamptz_cmp_timestamp",
    "timestamptz_eq_date",
    "timestamptz_eq_timestamp",
    "timestamptz_ge_date",
    "timestamptz_ge_timestamp",
    "timestamptz_gt_date",
    "timestamptz_gt_timestamp",
    "timestamptz_le_date",
    "timestamptz_le_timestamp",
    "timestamptz_lt_date",
    "timestamptz_lt_timestamp",
    "timestamptz_mi_interval",
    "timestamptz_ne_date",
    "timestamptz_ne_timestamp",
    "timestamptz_pl_interval",
    "timetz",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "ts_headline",
    "ts_match_tq",
    "ts_match_tt",
    "websearch_to_tsquery",
    "xml_is_well_formed",
];

/// One relation of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClosureRelation {
    pub(crate) name: TableName,
    /// `pg_class.relkind`.
    pub(crate) kind: char,
    /// `relpersistence = 'p'` (not unlogged, not temporary).
    pub(crate) permanent: bool,
    /// It has `pg_inherits` children.
    pub(crate) has_children: bool,
    /// Why the publication does not carry every change of it in full (not
    /// in it, a row filter, a column list, actions left out); `None` when
    /// it does, for a partitioned table (which holds no rows of its own),
    /// or when no publication was given.
    pub(crate) publication_gap: Option<String>,
    /// The text names it directly.
    pub(crate) named: bool,
    /// A view whose query uses a SQL value function (`CURRENT_TIMESTAMP`,
    /// `CURRENT_USER`, ...): a value of the moment or of the session.
    pub(crate) session_value: bool,
}

/// One function of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClosureFunction {
    pub(crate) name: TableName,
    /// `pg_proc.provolatile`.
    pub(crate) volatility: char,
    /// A SQL-standard body (`BEGIN ATOMIC`), whose references are recorded
    /// in `pg_depend` and so are part of the closure.
    pub(crate) has_sql_body: bool,
    /// Its SQL-standard body or an argument default uses a SQL value
    /// function (`CURRENT_DATE`, `SESSION_USER`, ...).
    pub(crate) session_value: bool,
}

/// Everything a statement can read, per the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Closure {
    pub(crate) relations: Vec<ClosureRelation>,
    pub(crate) functions: Vec<ClosureFunction>,
}

/// Runs the closure query for `mentions` on `client` (so under its
/// `search_path`), checking publication membership against `publication`.
pub(crate) async fn closure(
    client: &Client,
    mentions: &Mentions,
    publication: Option<&str>,
) -> Result<Closure, tokio_postgres::Error> {
    let relations: Vec<String> = mentions.relations.iter().map(regclass_text).collect();
    let schemas: Vec<Option<&str>> = mentions
        .functions
        .iter()
        .map(|(schema, _)| schema.as_deref())
        .collect();
    let names: Vec<&str> = mentions.functions.iter().map(|(_, n)| n.as_str()).collect();
    let rows = client
        .query(
            CLOSURE_SQL.as_str(),
            &[
                &relations,
                &schemas,
                &names,
                &mentions.operators,
                &publication,
            ],
        )
        .await?;
    let mut out = Closure::default();
    for row in rows {
        let what: &str = row.try_get(0)?;
        let name = TableName::new(row.try_get::<_, String>(2)?, row.try_get::<_, String>(3)?);
        let kind = row.try_get::<_, String>(4)?.chars().next().unwrap_or('?');
        if what == "function" {
            out.functions.push(ClosureFunction {
                name,
                volatility: kind,
                has_sql_body: row.try_get(5)?,
                session_value: row.try_get(9)?,
            });
        } else {
            out.relations.push(ClosureRelation {
                name,
                kind,
                permanent: row.try_get(5)?,
                has_children: row.try_get(6)?,
                publication_gap: row.try_get(7)?,
                named: row.try_get(8)?,
                session_value: row.try_get(9)?,
            });
        }
    }
    Ok(out)
}

/// A written name as `to_regclass` text: each part quoted, since the text's
/// case folding was already applied.
fn regclass_text((schema, name): &WrittenName) -> String {
    let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    match schema {
        Some(schema) => format!("{}.{}", quote(schema), quote(name)),
        None => quote(name),
    }
}

/// Why a statement's results are never cached, from its closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotCacheable {
    /// A relation no invalidation reaches: a system catalog, a sequence, a
    /// foreign or unlogged table, or a table the schema model does not hold
    /// (ignored, or created since the model was read).
    UnknownRelation(String),
    /// A table whose changes the invalidator's publication does not carry
    /// in full (the table, then why): some never reach the worker.
    Unpublished(String, String),
    /// A function whose result or effects a cached copy would not reproduce.
    Function(String),
}

impl std::fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCacheable::UnknownRelation(what) => write!(f, "reads {what}"),
            NotCacheable::Unpublished(table, why) => {
                write!(f, "reads {table}, whose changes the worker may miss: {why}")
            }
            NotCacheable::Function(why) => f.write_str(why),
        }
    }
}

/// What a cacheable statement depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dependencies {
    /// Key identities of every table it can read (the partition root for a
    /// partition), sorted: their generations and "any change" lists.
    pub(crate) tables: Vec<TableName>,
    /// Views, materialized views and user-defined functions it reads
    /// through: their generations only (DDL bumps them; a materialized
    /// view's rows change only by `REFRESH`, which is DDL too).
    pub(crate) objects: Vec<TableName>,
    /// The one relation the text names, when the catalog proves it is a
    /// plain table without children and the closure holds nothing else:
    /// only then may the text's `WHERE` give row and predicate keys.
    pub(crate) sole_table: Option<TableName>,
}

/// Decides from the closure whether the statement may be cached, and on
/// what its results depend.
pub(crate) fn decide(model: &SchemaModel, closure: &Closure) -> Result<Dependencies, NotCacheable> {
    for function in &closure.functions {
        check_function(function)?;
    }
    check_session_values(closure)?;
    let mut tables = BTreeSet::new();
    let mut objects = BTreeSet::new();
    for relation in &closure.relations {
        match relation.kind {
            'r' | 'p' => {
                tables.insert(table_identity(model, relation)?);
            }
            'v' | 'm' => {
                objects.insert(relation.name.clone());
            }
            _ => {
                return Err(NotCacheable::UnknownRelation(format!(
                    "{} (relkind {})",
                    relation.name, relation.kind
                )))
            }
        }
    }
    for function in &closure.functions {
        if function.name.schema != "pg_catalog" {
            objects.insert(function.name.clone());
        }
    }
    let sole_table = match closure.relations.as_slice() {
        [only] if only.named && only.kind == 'r' && !only.has_children => model
            .table(&only.name)
            .filter(|t| t.partition_root.is_none())
            .map(|t| t.name.clone()),
        _ => None,
    };
    Ok(Dependencies {
        tables: tables.into_iter().collect(),
        objects: objects.into_iter().collect(),
        sole_table,
    })
}

/// A view or SQL-standard body that uses `CURRENT_TIMESTAMP`,
/// `CURRENT_USER` and the like (nodes of their own, not function calls)
/// gives a value of the moment or of the session: never cached, as in the
/// statement's own text.
fn check_session_values(closure: &Closure) -> Result<(), NotCacheable> {
    let views = closure
        .relations
        .iter()
        .map(|r| (r.session_value, "view", &r.name));
    let functions = closure
        .functions
        .iter()
        .map(|f| (f.session_value, "function", &f.name));
    match views.chain(functions).find(|(uses, _, _)| *uses) {
        Some((_, what, name)) => Err(NotCacheable::Function(format!(
            "reads {what} {name}, which uses a value of the moment or of the session \
             (CURRENT_TIMESTAMP, CURRENT_USER, ...)"
        ))),
        None => Ok(()),
    }
}

/// The key identity of a table of the closure, or why it cannot be cached.
fn table_identity(
    model: &SchemaModel,
    relation: &ClosureRelation,
) -> Result<TableName, NotCacheable> {
    let name = &relation.name;
    let table = model
        .table(name)
        .filter(|t| !t.unlogged && relation.permanent)
        .ok_or_else(|| NotCacheable::UnknownRelation(name.to_string()))?;
    if let Some(why) = &relation.publication_gap {
        return Err(NotCacheable::Unpublished(name.to_string(), why.clone()));
    }
    Ok(table.key_identity().clone())
}

/// VOLATILE: never cached (its value or its side effect would be skipped
/// on a hit). STABLE: only the built-ins of [`SETTINGS_ONLY_BUILTINS`] and
/// user functions with a SQL-standard body, whose reads are in the closure;
/// any other STABLE function may read tables nothing records. IMMUTABLE:
/// pure by PostgreSQL's own contract.
fn check_function(function: &ClosureFunction) -> Result<(), NotCacheable> {
    let name = &function.name;
    match function.volatility {
        'i' => Ok(()),
        's' if name.schema == "pg_catalog" => {
            if SETTINGS_ONLY_BUILTINS.contains(&name.name.as_str()) {
                Ok(())
            } else {
                Err(NotCacheable::Function(format!(
                    "calls {name}, a STABLE function of the moment, session or catalog"
                )))
            }
        }
        's' if function.has_sql_body => Ok(()),
        's' => Err(NotCacheable::Function(format!(
            "calls {name}, a STABLE function whose reads the catalog does not record \
             (only SQL-standard BEGIN ATOMIC bodies are followed)"
        ))),
        _ => Err(NotCacheable::Function(format!(
            "calls {name}, a VOLATILE function"
        ))),
    }
}
