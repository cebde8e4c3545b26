//! Streaming replicas of the test kit's PostgreSQL, against real servers.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use cm_testkit::{PgCluster, PgReplica, TestPostgres, TestkitError, ENV_PG_URL};
use common::{pid_alive, wait_until};

type TestResult = Result<(), Box<dyn Error>>;

/// Generous: a bound for a stuck replica, not a speed requirement.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared server's admin URL, or a cluster started for this test.
fn shared_server() -> Result<(String, Option<PgCluster>), TestkitError> {
    match std::env::var(ENV_PG_URL) {
        Ok(url) if !url.trim().is_empty() => Ok((url, None)),
        _ => {
            let cluster = PgCluster::start()?;
            Ok((cluster.admin_url(), Some(cluster)))
        }
    }
}

/// Write on the primary, see it on the replica; pause; a later write stays
/// invisible there and its LSN unreplayed; resume; it shows.
fn replica_follows_pauses_and_resumes(pg: &TestPostgres, replica: &PgReplica) -> TestResult {
    assert_eq!(
        replica.psql("SELECT current_database(), pg_is_in_recovery()")?,
        format!("{}|t\n", pg.dbname())
    );
    assert_eq!(replica.dbname(), pg.dbname());
    assert_eq!(
        replica.url(),
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            pg.user(),
            replica.port(),
            pg.dbname()
        )
    );
    assert_ne!(replica.port(), pg.port());

    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old');")?;
    replica.catch_up(REPLAY_TIMEOUT)?;
    assert_eq!(replica.psql("SELECT v FROM t WHERE id = 1")?, "old\n");
    let err = replica
        .psql("INSERT INTO t VALUES (2, 'x')")
        .err()
        .ok_or("a hot standby must refuse writes")?;
    assert!(err.to_string().contains("read-only transaction"), "{err}");

    replica.pause_replay()?;
    pg.psql("UPDATE t SET v = 'new' WHERE id = 1")?;
    let written = replica.primary_lsn()?;
    assert_eq!(replica.psql("SELECT v FROM t WHERE id = 1")?, "old\n");
    let replayed = replica.replay_lsn()?;
    assert!(
        replayed < written,
        "replayed {replayed} >= written {written}"
    );
    // Paused replay never gets there, however long one waits.
    match replica.wait_for_replay(written, Duration::from_millis(200)) {
        Err(TestkitError::Timeout { detail, .. }) => {
            assert!(detail.ends_with("replay pause state: paused"), "{detail}")
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    assert_eq!(replica.replay_lsn()?, replayed);

    replica.resume_replay()?;
    let reached = replica.wait_for_replay(written, REPLAY_TIMEOUT)?;
    assert!(reached >= written);
    assert_eq!(replica.psql("SELECT v FROM t WHERE id = 1")?, "new\n");
    Ok(())
}

#[test]
fn a_replica_of_an_owned_primary_follows_pauses_and_resumes() -> TestResult {
    let pg = TestPostgres::start_owned()?;
    let replica = PgReplica::start(&pg)?;
    replica_follows_pauses_and_resumes(&pg, &replica)
}

#[test]
fn replicas_of_a_shared_primary_start_side_by_side_and_pause_alone() -> TestResult {
    let (admin_url, _cluster) = shared_server()?;
    let pg = TestPostgres::on_server(&admin_url)?;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| PgReplica::start(&pg));
        let b = s.spawn(|| PgReplica::start(&pg));
        (a.join(), b.join())
    });
    let a = a.map_err(|_| "starting replica a panicked")??;
    let b = b.map_err(|_| "starting replica b panicked")??;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.slot_name(), b.slot_name());
    let slots = pg.psql(&format!(
        "SELECT slot_type, active FROM pg_replication_slots \
         WHERE slot_name IN ('{}', '{}')",
        a.slot_name(),
        b.slot_name()
    ))?;
    assert_eq!(slots, "physical|t\nphysical|t\n");

    replica_follows_pauses_and_resumes(&pg, &a)?;
    // Pausing `a` paused nothing else: `b` followed all along.
    a.pause_replay()?;
    pg.psql("UPDATE t SET v = 'newer' WHERE id = 1")?;
    b.catch_up(REPLAY_TIMEOUT)?;
    assert_eq!(b.psql("SELECT v FROM t WHERE id = 1")?, "newer\n");
    assert_eq!(a.psql("SELECT v FROM t WHERE id = 1")?, "new\n");
    Ok(())
}

#[test]
fn a_panicking_test_still_stops_its_replica_and_drops_its_slot() -> TestResult {
    let pg = TestPostgres::start()?;
    let (tx, rx) = mpsc::channel::<Result<(PathBuf, u32, String), String>>();
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            let replica = match PgReplica::start(&pg) {
                Ok(replica) => replica,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let pid = replica.cluster().postmaster_pid().unwrap_or(0);
            let data_dir = replica.cluster().data_dir().to_path_buf();
            let _ = tx.send(Ok((data_dir, pid, replica.slot_name().to_string())));
            panic!("deliberate panic: the replica must still be stopped");
        })
        .join()
    });
    assert!(outcome.is_err(), "the thread should have panicked");
    let (data_dir, pid, slot) = rx.recv()??;
    assert_ne!(pid, 0, "the replica had no postmaster.pid");
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)));
    assert!(!data_dir.exists(), "{} was not removed", data_dir.display());
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))?,
        "0\n"
    );
    Ok(())
}
