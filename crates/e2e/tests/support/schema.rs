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
