//! Write transactions, generated from the seeded random number generator
//! and rendered for each client (psql text, psycopg `%s`, tokio-postgres
//! parameters).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::RngExt;

use super::schema::{base, CHANNELS, FRESH, KINDS, STATUSES, TAGS};

/// A parameter value (also used by the readers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// An `int4`.
    Int(i32),
    /// A `text`.
    Text(String),
    /// A NULL `text`.
    NullText,
}

impl Value {
    /// As a SQL literal, for psql scripts.
    pub fn literal(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Value::NullText => "NULL".into(),
        }
    }

    /// As a JSON value, for the Python writer.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => (*i).into(),
            Value::Text(s) => s.clone().into(),
            Value::NullText => serde_json::Value::Null,
        }
    }

    /// As a tokio-postgres parameter.
    pub fn to_sql(&self) -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
        match self {
            Value::Int(i) => Box::new(*i),
            Value::Text(s) => Box::new(s.clone()),
            Value::NullText => Box::new(None::<String>),
        }
    }
}

/// One statement of a transaction.
#[derive(Debug, Clone)]
pub enum Stmt {
    /// SQL with `$n` placeholders and their values.
    Sql(String, Vec<Value>),
    /// `COPY table (columns) FROM STDIN` with these rows (psql only).
    Copy(String, Vec<Vec<Value>>),
}

impl Stmt {
    fn sql(sql: &str, params: Vec<Value>) -> Stmt {
        Stmt::Sql(sql.to_owned(), params)
    }

    /// The statement as psql script text (values inlined).
    pub fn psql(&self) -> String {
        match self {
            Stmt::Sql(sql, params) => format!("{};\n", inline(sql, params)),
            Stmt::Copy(target, rows) => {
                let mut out = format!("COPY {target} FROM STDIN;\n");
                for row in rows {
                    let fields: Vec<String> = row
                        .iter()
                        .map(|v| match v {
                            Value::Int(i) => i.to_string(),
                            Value::Text(s) => s.replace('\\', "\\\\"),
                            Value::NullText => "\\N".into(),
                        })
                        .collect();
                    out.push_str(&fields.join("\t"));
                    out.push('\n');
                }
                out.push_str("\\.\n");
                out
            }
        }
    }

    /// `(sql with %s, params in order of appearance)` for psycopg.
    pub fn psycopg(&self) -> (String, Vec<Value>) {
        match self {
            Stmt::Sql(sql, params) => {
                let mut out = String::new();
                let mut ordered = Vec::new();
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' {
                        let mut digits = String::new();
                        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                            digits.push(*d);
                            chars.next();
                        }
                        let n: usize = digits.parse().unwrap_or(0);
                        out.push_str("%s");
                        ordered.push(
                            params
                                .get(n.wrapping_sub(1))
                                .cloned()
                                .unwrap_or(Value::NullText),
                        );
                    } else {
                        out.push(c);
                    }
                }
                (out, ordered)
            }
            Stmt::Copy(..) => (String::from("SELECT 1"), Vec::new()),
        }
    }
}

/// Replaces `$n` (highest first, so `$1` does not eat `$10`) by literals.
fn inline(sql: &str, params: &[Value]) -> String {
    let mut out = sql.to_owned();
    for (i, value) in params.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), &value.literal());
    }
    out
}

/// One write transaction.
#[derive(Debug, Clone, Default)]
pub struct Tx {
    /// Its statements, savepoint commands included.
    pub stmts: Vec<Stmt>,
    /// Ends in ROLLBACK instead of COMMIT.
    pub rollback: bool,
}

/// Which client a lane's transactions are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// psql processes (may COPY).
    Psql,
    /// Python with psycopg.
    Python,
    /// tokio-postgres.
    Tokio,
}

/// Makes one lane's transactions; ids it creates are fresh, never reused.
pub struct Generator {
    lane: usize,
    client: Client,
    next: i32,
}

impl Generator {
    /// The generator of `lane`, for `client`.
    pub fn new(lane: usize, client: Client) -> Generator {
        Generator {
            lane,
            client,
            next: base(lane) + FRESH,
        }
    }

    fn fresh(&mut self) -> i32 {
        self.next += 1;
        self.next
    }

    /// An id of this lane that probably exists: a seed id or a recent fresh one.
    fn existing(&self, rng: &mut StdRng, seed: i32) -> i32 {
        if rng.random_bool(0.7) || self.next == base(self.lane) + FRESH {
            base(self.lane) + rng.random_range(1..=seed)
        } else {
            rng.random_range(base(self.lane) + FRESH + 1..=self.next)
        }
    }

    fn base(&self) -> Value {
        Value::Int(base(self.lane))
    }

    /// The next transaction.
    pub fn transaction(&mut self, rng: &mut StdRng) -> Tx {
        if rng.random_bool(0.003) {
            let table = ["addon_tag", "event"]
                .choose(rng)
                .copied()
                .unwrap_or("event");
            return Tx {
                stmts: vec![Stmt::sql(&format!("TRUNCATE {table}"), vec![])],
                rollback: false,
            };
        }
        let mut tx = Tx {
            rollback: rng.random_bool(0.04),
            ..Tx::default()
        };
        for _ in 0..rng.random_range(1..=4) {
            if rng.random_bool(0.08) {
                tx.stmts.push(Stmt::sql("SAVEPOINT sp", vec![]));
                for _ in 0..rng.random_range(1..=3) {
                    self.push_op(rng, &mut tx.stmts);
                }
                tx.stmts.push(Stmt::sql("ROLLBACK TO SAVEPOINT sp", vec![]));
            }
            self.push_op(rng, &mut tx.stmts);
        }
        tx
    }

    fn push_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        match rng.random_range(0..100) {
            0..=11 => self.author_op(rng, out),
            12..=41 => self.addon_op(rng, out),
            42..=63 => self.version_op(rng, out),
            64..=79 => self.tag_op(rng, out),
            _ => self.event_op(rng, out),
        }
    }

    fn text(rng: &mut StdRng, prefix: &str) -> Value {
        Value::Text(format!("{prefix} {}", rng.random_range(0..10_000)))
    }

    fn pick(rng: &mut StdRng, values: &[&str]) -> Value {
        Value::Text(values.choose(rng).copied().unwrap_or_default().to_owned())
    }

    fn bio(rng: &mut StdRng) -> Value {
        match rng.random_range(0..3) {
            0 => Value::NullText,
            1 => Generator::text(rng, "short bio"),
            _ => Value::Text(format!("long bio {} ", rng.random_range(0..10_000)).repeat(400)),
        }
    }

    fn author_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        let id = Value::Int(self.existing(rng, super::schema::AUTHORS));
        match rng.random_range(0..10) {
            0..=1 if self.client == Client::Psql => {
                let rows = (0..rng.random_range(1..=4))
                    .map(|_| {
                        vec![
                            Value::Int(self.fresh()),
                            Generator::text(rng, "copied"),
                            Generator::bio(rng),
                        ]
                    })
                    .collect();
                out.push(Stmt::Copy("author (id, name, bio)".into(), rows));
            }
            0..=2 => out.push(Stmt::sql(
                "INSERT INTO author (id, name, bio) VALUES ($1, $2, $3)",
                vec![
                    Value::Int(self.fresh()),
                    Generator::text(rng, "author"),
                    Generator::bio(rng),
                ],
            )),
            3..=5 => out.push(Stmt::sql(
                "UPDATE author SET name = $1 WHERE id = $2",
                vec![Generator::text(rng, "renamed"), id],
            )),
            6 => out.push(Stmt::sql(
                "UPDATE author SET bio = $1 WHERE id = $2",
                vec![Generator::bio(rng), id],
            )),
            7..=8 => out.push(Stmt::sql(
                "UPDATE author SET id = $1 WHERE id = $2",
                vec![Value::Int(self.fresh()), id],
            )),
            _ => out.push(Stmt::sql("DELETE FROM author WHERE id = $1", vec![id])),
        }
    }

    /// `(SELECT max(id) FROM table WHERE id BETWEEN base AND pick)`: a parent
    /// that exists (or NULL), whatever this lane deleted before.
    fn parent(
        &self,
        rng: &mut StdRng,
        table: &str,
        seed: i32,
        first: usize,
    ) -> (String, [Value; 2]) {
        let pick = self.existing(rng, seed);
        (
            format!(
                "(SELECT max(id) FROM {table} WHERE id BETWEEN ${first} AND ${})",
                first + 1
            ),
            [self.base(), Value::Int(pick)],
        )
    }

    fn addon_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        let id = Value::Int(self.existing(rng, super::schema::ADDONS));
        match rng.random_range(0..12) {
            0..=1 => {
                let (parent, [b, p]) = self.parent(rng, "author", super::schema::AUTHORS, 2);
                out.push(Stmt::Sql(
                    format!("INSERT INTO addon (id, author_id, status, name) VALUES ($1, {parent}, $4, $5)"),
                    vec![Value::Int(self.fresh()), b, p, Generator::pick(rng, STATUSES), Generator::text(rng, "addon")],
                ));
            }
            2..=4 => out.push(Stmt::sql(
                "UPDATE addon SET status = $1 WHERE id = $2",
                vec![Generator::pick(rng, STATUSES), id],
            )),
            5..=6 => {
                let (parent, [b, p]) = self.parent(rng, "author", super::schema::AUTHORS, 1);
                out.push(Stmt::Sql(
                    format!("UPDATE addon SET author_id = {parent} WHERE id = $3"),
                    vec![b, p, id],
                ));
            }
            7 => out.push(Stmt::sql(
                "UPDATE addon SET id = $1 WHERE id = $2",
                vec![Value::Int(self.fresh()), id],
            )),
            8 => out.push(Stmt::sql(
                "UPDATE addon SET status = $1, name = $2 WHERE author_id = $3",
                vec![
                    Generator::pick(rng, STATUSES),
                    Generator::text(rng, "bulk"),
                    Value::Int(self.existing(rng, super::schema::AUTHORS)),
                ],
            )),
            9..=10 => out.push(Stmt::sql(
                "UPDATE addon SET name = $1 WHERE id = $2",
                vec![Generator::text(rng, "addon"), id],
            )),
            _ => out.push(Stmt::sql("DELETE FROM addon WHERE id = $1", vec![id])),
        }
    }

    fn version_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        let id = Value::Int(self.existing(rng, super::schema::VERSIONS));
        match rng.random_range(0..10) {
            0..=2 => {
                let (parent, [b, p]) = self.parent(rng, "addon", super::schema::ADDONS, 2);
                out.push(Stmt::Sql(
                    format!("INSERT INTO version (id, addon_id, number, channel) VALUES ($1, {parent}, $4, $5)"),
                    vec![Value::Int(self.fresh()), b, p, Generator::text(rng, "2."), Generator::pick(rng, CHANNELS)],
                ));
            }
            3..=4 => {
                let (parent, [b, p]) = self.parent(rng, "addon", super::schema::ADDONS, 1);
                out.push(Stmt::Sql(
                    format!("UPDATE version SET addon_id = {parent} WHERE id = $3"),
                    vec![b, p, id],
                ));
            }
            5..=6 => out.push(Stmt::sql(
                "UPDATE version SET channel = $1, number = $2 WHERE id = $3",
                vec![
                    Generator::pick(rng, CHANNELS),
                    Generator::text(rng, "3."),
                    id,
                ],
            )),
            7 => out.push(Stmt::sql(
                "UPDATE version SET id = $1 WHERE id = $2",
                vec![Value::Int(self.fresh()), id],
            )),
            _ => out.push(Stmt::sql("DELETE FROM version WHERE id = $1", vec![id])),
        }
    }

    fn tag_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        let addon = Value::Int(self.existing(rng, super::schema::ADDONS));
        let tag = Generator::pick(rng, TAGS);
        match rng.random_range(0..8) {
            0..=3 => out.push(Stmt::sql(
                "INSERT INTO addon_tag (addon_id, tag, weight) \
                 SELECT id, $1::text, $2::int FROM addon WHERE id = $3 \
                 ON CONFLICT (addon_id, tag) DO UPDATE SET weight = excluded.weight",
                vec![tag, Value::Int(rng.random_range(0..100)), addon],
            )),
            4..=5 => out.push(Stmt::sql(
                "UPDATE addon_tag SET tag = $1::text WHERE addon_id = $2 AND tag = $3::text \
                 AND NOT EXISTS (SELECT 1 FROM addon_tag t WHERE t.addon_id = $2 AND t.tag = $1::text)",
                vec![Generator::pick(rng, TAGS), addon, tag],
            )),
            _ => out.push(Stmt::sql(
                "DELETE FROM addon_tag WHERE addon_id = $1 AND tag = $2",
                vec![addon, tag],
            )),
        }
    }

    fn event_op(&mut self, rng: &mut StdRng, out: &mut Vec<Stmt>) {
        let id = Value::Int(self.existing(rng, super::schema::EVENTS));
        match rng.random_range(0..10) {
            0 if self.client == Client::Psql => {
                let rows = (0..rng.random_range(1..=5))
                    .map(|_| {
                        vec![
                            Generator::pick(rng, KINDS),
                            Value::Int(self.fresh()),
                            Value::NullText,
                            Generator::text(rng, "copied"),
                        ]
                    })
                    .collect();
                out.push(Stmt::Copy(
                    "event (kind, id, addon_id, payload)".into(),
                    rows,
                ));
            }
            0..=2 => {
                let (parent, [b, p]) = self.parent(rng, "addon", super::schema::ADDONS, 3);
                out.push(Stmt::Sql(
                    format!("INSERT INTO event (kind, id, addon_id, payload) VALUES ($1, $2, {parent}, $5)"),
                    vec![Generator::pick(rng, KINDS), Value::Int(self.fresh()), b, p, Generator::text(rng, "payload")],
                ));
            }
            3..=4 => out.push(Stmt::sql(
                "UPDATE event SET kind = $1 WHERE id = $2",
                vec![Generator::pick(rng, KINDS), id],
            )),
            5..=6 => out.push(Stmt::sql(
                "UPDATE event SET payload = $1 WHERE id = $2",
                vec![Generator::text(rng, "payload"), id],
            )),
            7 => {
                let (parent, [b, p]) = self.parent(rng, "addon", super::schema::ADDONS, 1);
                out.push(Stmt::Sql(
                    format!("UPDATE event SET addon_id = {parent} WHERE id = $3"),
                    vec![b, p, id],
                ));
            }
            _ => out.push(Stmt::sql("DELETE FROM event WHERE id = $1", vec![id])),
        }
    }
}
