//! The one read path of every cached read, whatever lends the connection
//! ([`crate::CachingClient`], [`crate::CachingPool`]): [`read_cached`] finds
//! the learned statement and the cache plan and runs the lookup before any
//! connection is taken; only learning, a miss or a read-through takes one
//! from the [`ConnectionSource`], and [`read_database`] runs the statement on
//! it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_types::{ToSql, Type};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement as PgStatement};
use tracing::field::display;
use tracing::Instrument;

use crate::cache::QueryCache;
use crate::dependencies::{self, row_keys};
use crate::error::ReaderError;
use crate::fill::{CachePlan, Fetched, Outcome};
use crate::learned::LearnedStatement;
use crate::options::QueryOptions;
use crate::row::RowSet;
use crate::source::{ConnectionSource, LazyConnection, SourceConnection};
use crate::telemetry::{ReadOutcome, ReadThrough, ReadTrace};
use crate::token::WriteToken;

/// One read, in its `cached_read` span: the learned statement (learned on a
/// connection from `source` the first time), the cache plan, then the
/// lookup, and the database only on a miss or a read-through. `make` turns
/// the live result into the payload to cache. The read's telemetry ends in
/// [`ReadTrace::finish`], on every path that reaches an outcome.
pub(crate) async fn read_cached<S, P, M>(
    source: &S,
    cache: &QueryCache,
    options: &QueryOptions,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    kind: &str,
    make: M,
) -> Result<(P, Outcome), ReaderError>
where
    S: ConnectionSource,
    P: Serialize + DeserializeOwned,
    M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
{
    let trace = ReadTrace::start();
    trace.statement(sql);
    let span = trace.span().clone();
    let read = Read {
        cache,
        options,
        sql,
        params,
        kind,
    };
    let result = read
        .traced(LazyConnection::new(source), trace, make)
        .instrument(span.clone())
        .await;
    if let Err(error) = &result {
        span.record("error", display(error));
    }
    result
}

/// One read's statement, parameters and settings.
struct Read<'a> {
    cache: &'a QueryCache,
    options: &'a QueryOptions,
    sql: &'a str,
    params: &'a [&'a (dyn ToSql + Sync)],
    kind: &'a str,
}

impl Read<'_> {
    /// The learned statement, the plan, then the lookup or a read-through,
    /// ending `trace`.
    async fn traced<S, P, M>(
        &self,
        mut connection: LazyConnection<'_, S>,
        trace: ReadTrace,
        make: M,
    ) -> Result<(P, Outcome), ReaderError>
    where
        S: ConnectionSource,
        P: Serialize + DeserializeOwned,
        M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
    {
        let info = self.learned(&mut connection).await?;
        let plan = match info.as_deref() {
            None => Err(ReadOutcome::ReadThrough(ReadThrough::NoCache)),
            Some(info) => self.plan(info, &trace),
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(outcome) => return self.read_through(connection, trace, outcome, make).await,
        };
        let fill = info.as_deref().map(|info| Fill {
            model: Some(&*info.model),
            learned_types: Some(info.param_types.as_slice()),
        });
        let (cache, sql, params) = (self.cache, self.sql, self.params);
        let token = self.token_wait();
        cache
            .get_or_fill(&plan, trace, move || async move {
                // Taken here and dropped before the result is registered and
                // stored: a pool gets its connection back as soon as the
                // statement has run.
                let connection = connection.into_connection().await?;
                let statement = Statement {
                    sql,
                    params,
                    fill,
                    token,
                };
                let read = read_database(&connection, cache, statement, make).await?;
                Ok::<_, ReaderError>(Fetched {
                    payload: read.payload,
                    cacheable: read.keys.is_some(),
                    post_query: read.keys.unwrap_or_default(),
                    replayed: read.replayed,
                })
            })
            .await
    }

    /// The learned statement, learned on `connection` the first time;
    /// `None` for `no_cache` (whose text is still refused if not a read).
    async fn learned<S: ConnectionSource>(
        &self,
        connection: &mut LazyConnection<'_, S>,
    ) -> Result<Option<Arc<LearnedStatement>>, ReaderError> {
        let (cache, namespace, sql) = (self.cache, &self.options.namespace, self.sql);
        if self.options.no_cache {
            if let Err(reason) = crate::sql::analyse(sql) {
                let client = connection.get().await?.client();
                return Err(crate::learned::not_a_read(client, sql, reason).await);
            }
            return Ok(None);
        }
        Ok(Some(match cache.learned(namespace, sql) {
            Some(info) => info,
            None => {
                let client = connection.get().await?.client();
                cache.learn(client, namespace, sql).await?
            }
        }))
    }

    /// The cache plan of this execution of `info`, or why it is read
    /// through. Records the tables read on `trace`.
    fn plan<'a>(
        &'a self,
        info: &'a LearnedStatement,
        trace: &ReadTrace,
    ) -> Result<CachePlan<'a>, ReadOutcome> {
        trace.tables(info.reads.as_ref().map_or(&[], |r| &r.dependencies.tables));
        let serialised = dependencies::serialise_params(&info.param_types, self.params)
            .ok_or(ReadOutcome::ReadThrough(ReadThrough::Unkeyable))?;
        self.cache
            .plan_for(info, self.options, self.kind, self.sql, serialised)
    }

    /// The read's write token and how long its database read may wait for
    /// a standby to replay it.
    fn token_wait(&self) -> Option<(WriteToken, Duration)> {
        let wait = self
            .options
            .token_wait
            .unwrap_or(self.cache.options.token_wait);
        self.options.after.map(|token| (token, wait))
    }

    /// The database without the cache, for `outcome`'s reason.
    async fn read_through<S, P, M>(
        &self,
        mut connection: LazyConnection<'_, S>,
        trace: ReadTrace,
        outcome: ReadOutcome,
        make: M,
    ) -> Result<(P, Outcome), ReaderError>
    where
        S: ConnectionSource,
        M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
    {
        self.cache.metrics.bypasses();
        let result = match connection.get().await {
            Ok(connection) => {
                let statement = Statement {
                    sql: self.sql,
                    params: self.params,
                    fill: None,
                    token: self.token_wait(),
                };
                read_database(connection, self.cache, statement, make).await
            }
            Err(error) => Err(error),
        };
        let outcome = trace.finish(outcome);
        result.map(|read| (read.payload, outcome))
    }
}

/// What a fill needs besides the statement: the model to derive the rows'
/// keys with, and the parameter types the statement was learned with.
#[derive(Clone, Copy)]
struct Fill<'a> {
    model: Option<&'a cm_keys::SchemaModel>,
    learned_types: Option<&'a [Type]>,
}

/// The text a fill prepares, and a connection's statement cache keeps it
/// by: the statement, with the cache's count of schema changes seen
/// ([`QueryCache::schema_changes_seen`]) in a trailing comment once there
/// was one. A prepared statement keeps the relations its names resolved
/// to when it was prepared, and PostgreSQL does not re-resolve them when
/// DDL creates a relation that now shadows one on the `search_path` (a view
/// in an earlier schema): once the schema version moved, every statement
/// must be prepared afresh, and a new text is a new cache entry, in our
/// client's cache and in a pool's alike.
fn statement_text(sql: &str, schema_changes: u64) -> std::borrow::Cow<'_, str> {
    match schema_changes {
        0 => sql.into(),
        changes => format!("{sql}\n/* cm schema change {changes} */").into(),
    }
}

/// Whether the statement runs in a transaction of its own, and the replay
/// position when the server is a hot standby (NULL on a primary). Outside a
/// transaction block, a simple-protocol query starts its own transaction at
/// its own start, so both timestamps are the same instant; inside a block
/// (`BEGIN` sent as SQL) the block started earlier. The extended protocol
/// would not do: there the transaction starts at Parse and the statement
/// timestamp moves at Bind. A simple query is sent at its first poll, so it
/// adds no round trip when pipelined with the query. The replay position
/// taken before the query is one its snapshot has reached
/// (`docs/freshness.md`).
const OUTSIDE_TRANSACTION_BLOCK: &str =
    "SELECT statement_timestamp() = transaction_timestamp(), pg_last_wal_replay_lsn()::text";

/// What [`read_database`] read: the payload; for a fill, the keys of the
/// rows' objects and FK parents (`None`: do not store) and the standby's
/// replay position.
struct DatabaseRead<P> {
    payload: P,
    keys: Option<Vec<cm_keys::Key>>,
    replayed: Option<u64>,
}

/// One statement to run on the database: its text and parameters, what a
/// fill needs, and the read's write token with its wait.
struct Statement<'a> {
    sql: &'a str,
    params: &'a [&'a (dyn ToSql + Sync)],
    fill: Option<Fill<'a>>,
    token: Option<(WriteToken, Duration)>,
}

/// How often a read with a write token runs its statement again on a
/// standby that has not replayed the token yet.
const REPLAY_POLL: Duration = Duration::from_millis(1);

/// Runs the statement on `connection`; for a fill (`fill` with a model),
/// also the keys of the rows' objects and their FK parents. `None` keys
/// mean "do not store": the column origins could not be looked up (the
/// neighbour links would be missing), or the session is inside a
/// transaction block, whose reads may hold uncommitted writes that a
/// rollback would leave cached forever.
///
/// With a write token, a standby that had not replayed it when the
/// statement ran is asked again until it has, up to the token's wait; then
/// the read fails with [`ReaderError::NotReplayed`] rather than return a
/// result from before the token's commit (`docs/freshness.md`).
async fn read_database<C, P, M>(
    connection: &C,
    cache: &QueryCache,
    statement: Statement<'_>,
    make: M,
) -> Result<DatabaseRead<P>, ReaderError>
where
    C: SourceConnection,
    M: FnOnce(&[Row], RowSet) -> Result<P, tokio_postgres::Error>,
{
    let Statement {
        sql,
        params,
        fill,
        token,
    } = statement;
    let learned_types = fill.and_then(|fill| fill.learned_types);
    let model = fill.and_then(|fill| fill.model);
    // The checks (transaction block, replay position) run for a fill, and
    // for any read with a token.
    let check = model.is_some() || token.is_some();
    let until = token.map(|(token, wait)| (token, Instant::now() + wait));
    let (statement, executed) = loop {
        let executed = match fill {
            Some(_) => {
                let text = statement_text(sql, cache.schema_changes_seen());
                execute(connection, &text, params, learned_types, check).await
            }
            // A read-through is prepared on its own, never from a cache:
            // with no learned statement there is no schema version to key
            // it by.
            None => run_unprepared(connection.client(), sql, params, check).await,
        };
        let (statement, executed) = executed.map_err(ReaderError::from)?;
        match (until, executed.replayed) {
            (Some((token, until)), Some(replayed)) if replayed < token.lsn() => {
                if Instant::now() >= until {
                    return Err(ReaderError::NotReplayed {
                        token,
                        replayed: WriteToken::from_lsn(replayed),
                    });
                }
                tokio::time::sleep(REPLAY_POLL).await;
            }
            _ => break (statement, executed),
        }
    };
    let client = connection.client();
    let set = RowSet::capture(statement.columns(), &executed.rows)?;
    let Some(model) = model else {
        return Ok(DatabaseRead {
            payload: make(&executed.rows, set)?,
            keys: None,
            replayed: None,
        });
    };
    let mut post_query = None;
    if !executed.outside_transaction_block {
        cache.metrics.in_transaction_fills();
        tracing::debug!(sql, "inside a transaction block: the result is not stored");
    } else {
        match cache.origins(client, model, statement.columns()).await {
            Ok(origins) => {
                post_query = Some(
                    row_keys(&cache.space, model, &origins, &set)
                        .into_iter()
                        .collect(),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "looking up result column names failed; not caching");
            }
        }
    }
    let payload = make(&executed.rows, set)?;
    Ok(DatabaseRead {
        payload,
        keys: post_query,
        replayed: executed.replayed,
    })
}

/// The rows, and for a fill whether the session was outside a transaction
/// block before and after them, and the standby's replay position before
/// them (`None` on a primary).
struct Executed {
    rows: Vec<Row>,
    outside_transaction_block: bool,
    replayed: Option<u64>,
}

/// Prepares (through the connection's statement cache, if any) and runs the
/// statement. A cached statement the server refuses (its result type
/// changed, or it was deallocated), or whose parameter types differ from
/// the learned ones, is dropped from the cache and prepared again, once.
async fn execute<C: SourceConnection>(
    connection: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    learned_types: Option<&[Type]>,
    check: bool,
) -> Result<(PgStatement, Executed), tokio_postgres::Error> {
    let mut statement = connection.prepare(sql).await?;
    if learned_types.is_some_and(|types| types != statement.params()) {
        connection.forget_prepared(sql);
        statement = connection.prepare(sql).await?;
    }
    match run(connection.client(), &statement, params, check).await {
        Err(error) if refused_prepared_statement(&error) => {
            connection.forget_prepared(sql);
            let statement = connection.prepare(sql).await?;
            let executed = run(connection.client(), &statement, params, check).await?;
            Ok((statement, executed))
        }
        result => result.map(|executed| (statement, executed)),
    }
}

/// Prepares `sql` afresh (no statement cache) and runs it, with the
/// checks when `check`.
async fn run_unprepared(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    check: bool,
) -> Result<(PgStatement, Executed), tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let executed = run(client, &statement, params, check).await?;
    Ok((statement, executed))
}

/// Runs a prepared statement; with `check`, the transaction-block checks
/// are pipelined before and after it, in this order on the connection: a
/// block opened or closed by another user of the same client between the
/// checks shows in one of them.
async fn run(
    client: &Client,
    statement: &PgStatement,
    params: &[&(dyn ToSql + Sync)],
    check: bool,
) -> Result<Executed, tokio_postgres::Error> {
    if !check {
        let rows = client.query(statement, params).await?;
        return Ok(Executed {
            rows,
            outside_transaction_block: false,
            replayed: None,
        });
    }
    let (before, rows, after) = tokio::join!(
        client.simple_query(OUTSIDE_TRANSACTION_BLOCK),
        client.query(statement, params),
        client.simple_query(OUTSIDE_TRANSACTION_BLOCK),
    );
    let outside_transaction_block = answered_true(&before) && answered_true(&after);
    Ok(Executed {
        rows: rows?,
        outside_transaction_block,
        replayed: replay_position(&before),
    })
}

/// Whether the server refused a prepared statement that a statement cache
/// kept too long: "cached plan must not change result type" after DDL, or
/// a statement deallocated behind the cache's back.
fn refused_prepared_statement(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        Some(code) if *code == SqlState::INVALID_SQL_STATEMENT_NAME => true,
        Some(code) if *code == SqlState::FEATURE_NOT_SUPPORTED => {
            error.as_db_error().is_some_and(|db| {
                db.message()
                    .contains("cached plan must not change result type")
            })
        }
        _ => false,
    }
}

/// The answer of one [`OUTSIDE_TRANSACTION_BLOCK`] check.
type Check = Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>;

/// Whether the check's first column answered `t`; anything else (an error
/// included) is taken as "no".
fn answered_true(answer: &Check) -> bool {
    first_row(answer).is_some_and(|row| row.get(0) == Some("t"))
}

/// The check's replay position: `None` on a primary (NULL), and also when
/// the check failed or the text does not parse (the failed check already
/// keeps the fill from being stored).
fn replay_position(answer: &Check) -> Option<u64> {
    let text = first_row(answer)?.get(1)?;
    text.parse::<crate::WriteToken>().ok().map(|lsn| lsn.lsn())
}

fn first_row(answer: &Check) -> Option<&tokio_postgres::SimpleQueryRow> {
    answer
        .as_ref()
        .ok()?
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
}
