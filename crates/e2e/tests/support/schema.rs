//! The schema the randomized test writes to and reads from, its seed data
//! and the mapping shared by the readers and the invalidator.

/// Lanes (writer clients): 0 psql, 1 Python, 2 tokio-postgres. Each owns the
/// ids `base(lane) + 1 ..` of every table, so lanes never block each other
/// on rows (only TRUNCATE crosses lanes).
pub const LANES: usize = 3;

/// First id of `lane`'s range.
pub fn base(lane: usize) -> i32 {
    (lane as i32 + 1) * 100_000
}

/// First id handed out to rows created during the run.
pub const FRESH: i32 = 1_000;

/// Seed rows per lane.
pub const AUTHORS: i32 = 20;
/// Seed addons per lane.
pub const ADDONS: i32 = 60;
/// Seed versions per lane.
pub const VERSIONS: i32 = 150;
/// Seed events per lane.
pub const EVENTS: i32 = 100;

/// Values of `addon.status` (a configured predicate).
pub const STATUSES: &[&str] = &["public", "draft", "disabled", "review"];
/// Values of `version.channel` (not a predicate: table-wide dependency).
pub const CHANNELS: &[&str] = &["listed", "unlisted"];
/// Values of `addon_tag.tag`.
pub const TAGS: &[&str] = &["red", "green", "blue", "beta", "new"];
/// Values of `event.kind`, the partition key.
pub const KINDS: &[&str] = &["install", "review", "crash"];

/// FK chain author -> addon -> version (cascading), a composite primary key
/// (`addon_tag`), a list-partitioned table (`event`, FK to addon), a view
/// joining addon and author, and a toasted column (`author.bio`, STORAGE
/// EXTERNAL). `author` keeps REPLICA IDENTITY DEFAULT (its keys are its
/// primary key only), every other table (and each partition) is FULL.
pub const SCHEMA: &str = "
CREATE TABLE author (id int PRIMARY KEY, name text NOT NULL, bio text);
ALTER TABLE author ALTER COLUMN bio SET STORAGE EXTERNAL;
CREATE TABLE addon (
    id int PRIMARY KEY,
    author_id int REFERENCES author(id) ON DELETE CASCADE ON UPDATE CASCADE,
    status text NOT NULL,
    name text NOT NULL);
CREATE TABLE version (
    id int PRIMARY KEY,
    addon_id int REFERENCES addon(id) ON DELETE CASCADE ON UPDATE CASCADE,
    number text NOT NULL,
    channel text NOT NULL);
CREATE TABLE addon_tag (
    addon_id int NOT NULL REFERENCES addon(id) ON DELETE CASCADE ON UPDATE CASCADE,
    tag text NOT NULL,
    weight int NOT NULL,
    PRIMARY KEY (addon_id, tag));
CREATE TABLE event (
    kind text NOT NULL,
    id int NOT NULL,
    addon_id int REFERENCES addon(id) ON DELETE CASCADE ON UPDATE CASCADE,
    payload text,
    PRIMARY KEY (kind, id)) PARTITION BY LIST (kind);
CREATE TABLE event_install PARTITION OF event FOR VALUES IN ('install');
CREATE TABLE event_review PARTITION OF event FOR VALUES IN ('review');
CREATE TABLE event_crash PARTITION OF event FOR VALUES IN ('crash');
ALTER TABLE addon REPLICA IDENTITY FULL;
ALTER TABLE version REPLICA IDENTITY FULL;
ALTER TABLE addon_tag REPLICA IDENTITY FULL;
ALTER TABLE event_install REPLICA IDENTITY FULL;
ALTER TABLE event_review REPLICA IDENTITY FULL;
ALTER TABLE event_crash REPLICA IDENTITY FULL;
CREATE VIEW addon_listing AS
    SELECT a.id, a.name, a.status, a.author_id, au.name AS author_name
    FROM addon a JOIN author au ON au.id = a.author_id;
";

/// The constructs a statement's text alone misjudges, read by the readers
/// and changed (rows and DDL) by the coverage lane during the run: a view
/// over a view, a UNION ALL view whose branches read different tables, an
/// inheritance parent with CHECK-constrained children, a list-partitioned
/// table with a default partition (and a partition created mid-run), a
/// materialized view, and a schema `api` first on the readers' search path
/// where a view shadowing `addon` appears mid-run.
pub const COVERAGE_SCHEMA: &str = "
CREATE SCHEMA api;
CREATE VIEW addon_public AS
    SELECT id, name, author_id, author_name FROM addon_listing WHERE status = 'public';
CREATE VIEW catalog_entry AS
    SELECT id, 'addon' AS kind, name FROM addon
    UNION ALL SELECT id, 'version' AS kind, number AS name FROM version WHERE channel = 'listed';
CREATE TABLE metric (id int NOT NULL, lane text NOT NULL, v int NOT NULL);
CREATE TABLE metric_a (PRIMARY KEY (id), CHECK (lane = 'a')) INHERITS (metric);
CREATE TABLE metric_b (PRIMARY KEY (id), CHECK (lane = 'b')) INHERITS (metric);
ALTER TABLE metric REPLICA IDENTITY FULL;
ALTER TABLE metric_a REPLICA IDENTITY FULL;
ALTER TABLE metric_b REPLICA IDENTITY FULL;
INSERT INTO metric_a SELECT i, 'a', i FROM generate_series(1, 20) i;
INSERT INTO metric_b SELECT i, 'b', i FROM generate_series(21, 40) i;
CREATE TABLE reading (id int NOT NULL, kind text NOT NULL, v int NOT NULL,
                      PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
CREATE TABLE reading_a PARTITION OF reading FOR VALUES IN ('a');
CREATE TABLE reading_b PARTITION OF reading FOR VALUES IN ('b');
CREATE TABLE reading_rest PARTITION OF reading DEFAULT;
ALTER TABLE reading_a REPLICA IDENTITY FULL;
ALTER TABLE reading_b REPLICA IDENTITY FULL;
ALTER TABLE reading_rest REPLICA IDENTITY FULL;
INSERT INTO reading SELECT i, (ARRAY['a','b','q'])[1 + i % 3], i FROM generate_series(1, 30) i;
CREATE MATERIALIZED VIEW addon_count AS SELECT status, count(*) AS n FROM addon GROUP BY status;
";

/// The coverage lane: row writes to the constructs of [`COVERAGE_SCHEMA`]
/// with DDL at fixed steps, each step one psql script.
pub fn coverage_steps(rng: &mut rand::rngs::StdRng) -> Vec<String> {
    use rand::RngExt;
    let mut steps = Vec::new();
    let mut next_id = 1_000;
    for step in 0..60 {
        let ddl = match step {
            8 => Some(
                "CREATE OR REPLACE VIEW catalog_entry AS \
                SELECT id, 'addon' AS kind, upper(name) AS name FROM addon \
                UNION ALL SELECT id, 'version' AS kind, number AS name FROM version \
                WHERE channel = 'listed'",
            ),
            14 | 44 => Some("REFRESH MATERIALIZED VIEW addon_count"),
            20 => Some("CREATE TABLE reading_z PARTITION OF reading FOR VALUES IN ('z')"),
            26 => Some("ALTER TABLE metric ADD COLUMN note text DEFAULT 'n'"),
            34 => Some(
                "CREATE VIEW api.addon AS \
                SELECT id, author_id, status, upper(name) AS name FROM public.addon",
            ),
            40 => Some("ALTER TABLE metric DROP COLUMN note"),
            50 => Some("ALTER TABLE reading DETACH PARTITION reading_b"),
            54 => Some(
                "CREATE OR REPLACE VIEW catalog_entry AS \
                SELECT id, 'addon' AS kind, name FROM addon \
                UNION ALL SELECT id, 'version' AS kind, number AS name FROM version \
                WHERE channel = 'listed'",
            ),
            _ => None,
        };
        if let Some(ddl) = ddl {
            steps.push(ddl.to_owned());
            continue;
        }
        next_id += 1;
        let id = rng.random_range(1..=40);
        let kinds: &[&str] = if step > 20 {
            &["a", "b", "q", "z"]
        } else {
            &["a", "b", "q"]
        };
        let kind = kinds[rng.random_range(0..kinds.len())];
        let lane = if rng.random_bool(0.5) { "a" } else { "b" };
        steps.push(match rng.random_range(0..5) {
            0 => format!("INSERT INTO metric_{lane} (id, lane, v) VALUES ({next_id}, '{lane}', 1)"),
            1 => format!("UPDATE metric SET v = v + 1 WHERE id = {id}"),
            2 => format!("INSERT INTO reading VALUES ({next_id}, '{kind}', {id})"),
            3 => format!("UPDATE reading SET v = v + 1 WHERE id % 7 = {}", id % 7),
            _ => format!("DELETE FROM metric WHERE id = {id}"),
        });
    }
    steps
}

/// The table mapping (cm-keys `SchemaConfig` shape).
pub const MAPPING: &str = "[tables.\"public.addon\"]\npredicates = [[\"status\"]]\n";

/// The seed rows of every lane, as one SQL script.
pub fn seed_sql() -> String {
    let mut sql = String::new();
    for lane in 0..LANES {
        let b = base(lane);
        sql.push_str(&format!(
            "INSERT INTO author SELECT {b} + i, 'author ' || i, \
               CASE WHEN i % 3 = 0 THEN repeat('bio ' || i || ' ', 1200) END \
             FROM generate_series(1, {AUTHORS}) i;\n\
             INSERT INTO addon SELECT {b} + i, {b} + 1 + i % {AUTHORS}, \
               (ARRAY['public','draft','disabled','review'])[1 + i % 4], 'addon ' || i \
             FROM generate_series(1, {ADDONS}) i;\n\
             INSERT INTO version SELECT {b} + i, {b} + 1 + i % {ADDONS}, '1.' || i, \
               (ARRAY['listed','unlisted'])[1 + i % 2] FROM generate_series(1, {VERSIONS}) i;\n\
             INSERT INTO addon_tag SELECT {b} + 1 + i / 3, (ARRAY['red','green','blue'])[1 + i % 3], i \
             FROM generate_series(0, {ADDONS} * 3 - 4) i;\n\
             INSERT INTO event SELECT (ARRAY['install','review','crash'])[1 + i % 3], {b} + i, \
               {b} + 1 + i % {ADDONS}, 'payload ' || i FROM generate_series(1, {EVENTS}) i;\n"
        ));
    }
    sql
}

/// The invalidator's configuration file for this run.
pub fn invalidator_toml(url: &str, slot: &str, memcached: &str, prefix: &str) -> String {
    format!(
        "[postgres]\nurl = '{url}'\nslot = '{slot}'\npublication = 'cm_pub'\n\
         [cache]\nservers = ['{memcached}']\nprefix = '{prefix}'\ntimeout_ms = 1000\n\
         [worker]\nheartbeat_interval_ms = 100\nstatus_interval_ms = 200\nmax_backoff_ms = 500\n\
         [log]\nlevel = 'warn'\n\
         [schema.tables.\"public.addon\"]\npredicates = [[\"status\"]]\n"
    )
}
