//! The cached reads: a fixed catalogue of queries (lists by FK and by
//! predicate, gets by primary key and composite key, counts, joins, the
//! view, the partitioned table), each with `ORDER BY` so results compare
//! row by row; reader tasks pick queries and parameters from the seed.

use std::collections::BTreeSet;

use cm_reader::{CachedRow, CachingClient, RawValue};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::RngExt;
use tokio_postgres::types::ToSql;

use super::ops::Value;
use super::schema::{
    base, ADDONS, AUTHORS, CHANNELS, EVENTS, FRESH, KINDS, LANES, STATUSES, TAGS, VERSIONS,
};

/// How a query is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `query`: the rows.
    Rows,
    /// `count`: the number of rows.
    Count,
}

/// A parameter a query takes.
#[derive(Debug, Clone, Copy)]
enum Param {
    /// An author id.
    Author,
    /// An addon id.
    Addon,
    /// A version id.
    Version,
    /// An event id.
    Event,
    /// One of these text values.
    OneOf(&'static [&'static str]),
}

/// One query of the catalogue.
pub struct Query {
    /// The statement.
    pub sql: &'static str,
    /// Rows or count.
    pub shape: Shape,
    params: &'static [Param],
}

/// What the readers run.
pub const QUERIES: &[Query] = &[
    Query { sql: "SELECT id, author_id, status, name FROM addon WHERE author_id = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::Author] },
    Query { sql: "SELECT id, author_id, name FROM addon WHERE status = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(STATUSES)] },
    Query { sql: "SELECT id, author_id, status, name FROM addon WHERE id = $1", shape: Shape::Rows, params: &[Param::Addon] },
    Query { sql: "SELECT id, addon_id, number, channel FROM version WHERE addon_id = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::Addon] },
    Query { sql: "SELECT id, addon_id, number FROM version WHERE id = $1", shape: Shape::Rows, params: &[Param::Version] },
    Query { sql: "SELECT id, addon_id FROM version WHERE channel = $1 AND addon_id < $2 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(CHANNELS), Param::Addon] },
    Query { sql: "SELECT id, name, bio FROM author WHERE id = $1", shape: Shape::Rows, params: &[Param::Author] },
    Query { sql: "SELECT addon_id, tag, weight FROM addon_tag WHERE addon_id = $1 AND tag = $2", shape: Shape::Rows, params: &[Param::Addon, Param::OneOf(TAGS)] },
    Query { sql: "SELECT addon_id, tag, weight FROM addon_tag WHERE addon_id = $1 ORDER BY tag", shape: Shape::Rows, params: &[Param::Addon] },
    Query { sql: "SELECT id FROM addon WHERE status = $1", shape: Shape::Count, params: &[Param::OneOf(STATUSES)] },
    Query { sql: "SELECT addon_id, tag FROM addon_tag WHERE tag = $1", shape: Shape::Count, params: &[Param::OneOf(TAGS)] },
    Query { sql: "SELECT v.id, v.number, a.name, a.status FROM version v JOIN addon a ON a.id = v.addon_id WHERE a.author_id = $1 ORDER BY v.id", shape: Shape::Rows, params: &[Param::Author] },
    Query { sql: "SELECT id, name, status, author_name FROM addon_listing WHERE author_id = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::Author] },
    Query { sql: "SELECT id, name, author_name FROM addon_listing WHERE status = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(STATUSES)] },
    Query { sql: "SELECT kind, id, addon_id, payload FROM event WHERE addon_id = $1 ORDER BY kind, id", shape: Shape::Rows, params: &[Param::Addon] },
    Query { sql: "SELECT kind, id, payload FROM event WHERE kind = $1 AND id = $2", shape: Shape::Rows, params: &[Param::OneOf(KINDS), Param::Event] },
    Query { sql: "SELECT id FROM event WHERE kind = $1", shape: Shape::Count, params: &[Param::OneOf(KINDS)] },
    // The coverage constructs (schema::COVERAGE_SCHEMA), read with the
    // schema `api` first on the search path.
    Query { sql: "SELECT id, name FROM addon_public WHERE author_id = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::Author] },
    Query { sql: "SELECT id, kind, name FROM catalog_entry WHERE kind = $1 AND id < $2 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(&["addon", "version"]), Param::Addon] },
    Query { sql: "SELECT * FROM metric WHERE lane = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(&["a", "b"])] },
    Query { sql: "SELECT id, kind, v FROM reading WHERE kind = $1 ORDER BY id", shape: Shape::Rows, params: &[Param::OneOf(&["a", "b", "q", "z"])] },
    Query { sql: "SELECT status, n FROM addon_count ORDER BY status", shape: Shape::Rows, params: &[] },
];

/// What every reader and checker session runs first: `api` shadows
/// `public` once the coverage lane creates `api.addon`.
pub const SEARCH_PATH: &str = "SET search_path = api, public";

/// One read: the query's index in [`QUERIES`] and its parameters.
pub type Read = (usize, Vec<Value>);

/// An id of `seed` seed rows or a fresh one, of a random lane.
fn id(rng: &mut StdRng, seed: i32) -> i32 {
    let lane = rng.random_range(0..LANES);
    if rng.random_bool(0.75) {
        base(lane) + rng.random_range(1..=seed)
    } else {
        base(lane) + FRESH + rng.random_range(1..=600)
    }
}

/// A random read.
pub fn pick(rng: &mut StdRng) -> Read {
    let index = rng.random_range(0..QUERIES.len());
    let params = QUERIES[index]
        .params
        .iter()
        .map(|p| match p {
            Param::Author => Value::Int(id(rng, AUTHORS)),
            Param::Addon => Value::Int(id(rng, ADDONS)),
            Param::Version => Value::Int(id(rng, VERSIONS)),
            Param::Event => Value::Int(id(rng, EVENTS)),
            Param::OneOf(values) => {
                Value::Text(values.choose(rng).copied().unwrap_or_default().to_owned())
            }
        })
        .collect();
    (index, params)
}

/// A result in comparable form: a count, or rows of raw wire values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// What `count` returned.
    Count(i64),
    /// Each row's values as wire bytes (`None` for NULL).
    Rows(Vec<Vec<Option<Vec<u8>>>>),
}

fn boxed(params: &[Value]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params.iter().map(Value::to_sql).collect()
}

fn cached_rows(rows: &[CachedRow]) -> Vec<Vec<Option<Vec<u8>>>> {
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.raw(i).map(<[u8]>::to_vec)).collect())
        .collect()
}

/// Runs `read` through the cache.
pub async fn cached(client: &CachingClient, read: &Read) -> Result<Outcome, String> {
    let query = &QUERIES[read.0];
    let params = boxed(&read.1);
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
    match query.shape {
        Shape::Rows => client
            .query(query.sql, &refs)
            .await
            .map(|rows| Outcome::Rows(cached_rows(&rows))),
        Shape::Count => client.count(query.sql, &refs).await.map(Outcome::Count),
    }
    .map_err(|e| format!("cached {}: {e}", query.sql))
}

/// Runs `read` straight against PostgreSQL.
pub async fn direct(client: &tokio_postgres::Client, read: &Read) -> Result<Outcome, String> {
    let query = &QUERIES[read.0];
    let params = boxed(&read.1);
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
    let fail = |e: tokio_postgres::Error| format!("direct {}: {e}", query.sql);
    match query.shape {
        Shape::Rows => {
            let rows = client.query(query.sql, &refs).await.map_err(fail)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let raw: Option<RawValue> = row.try_get(i).map_err(fail)?;
                    values.push(raw.map(|RawValue(bytes)| bytes));
                }
                out.push(values);
            }
            Ok(Outcome::Rows(out))
        }
        Shape::Count => {
            let sql = format!("SELECT count(*) FROM ({}) AS c", query.sql);
            let row = client.query_one(sql.as_str(), &refs).await.map_err(fail)?;
            Ok(Outcome::Count(row.try_get(0).map_err(fail)?))
        }
    }
}

/// A reader task: `reads` cached reads from its own seeded generator, stops
/// early when `stop` is set and `minimum` reads are done. Returns the
/// distinct reads it made and how many it made.
pub async fn run_reader(
    client: CachingClient,
    mut rng: StdRng,
    minimum: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(BTreeSet<Read>, usize), String> {
    let mut seen = BTreeSet::new();
    let mut count = 0;
    while count < minimum || !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let read = pick(&mut rng);
        match cached(&client, &read).await {
            Ok(_) => {}
            // DDL between a statement's prepare and its execution: what
            // PostgreSQL answers any client that prepares; the check after
            // the fence reads everything again.
            Err(error) if error.contains("cached plan must not change result type") => {}
            Err(error) => return Err(error),
        }
        seen.insert(read);
        count += 1;
    }
    Ok((seen, count))
}
