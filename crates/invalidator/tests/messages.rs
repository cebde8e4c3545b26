//! What an operator reads when something is wrong: the cause, once, in
//! PostgreSQL's or the resolver's own words; an orderly server shutdown as
//! such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn stderr_of(h: &Harness, args: &[&str], env: (&str, &str)) -> String {
    let out = h.command(args).env(env.0, env.1).output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_database_error_is_printed_once_in_the_servers_words() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    let url = format!(
        "postgres://postgres@{}:{}/no_such_db",
        h.env.pg.host(),
        h.env.pg.port()
    );
    let stderr = stderr_of(&h, &["run"], ("CM_INVALIDATOR_POSTGRES__URL", &url));
    let message = "database \"no_such_db\" does not exist";
    assert_eq!(stderr.matches(message).count(), 1, "{stderr}");
    assert!(stderr.contains("3D000"), "{stderr}");
    assert!(!stderr.contains("db error"), "{stderr}");
}

#[tokio::test]
async fn an_unresolvable_memcached_is_reported_once() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    let servers = "[\"no-such-host.invalid:11211\"]";
    let stderr = stderr_of(&h, &["status"], ("CM_INVALIDATOR_CACHE__SERVERS", servers));
    assert_eq!(
        stderr.matches("no-such-host.invalid").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("cache.servers"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_shutdown_is_logged_as_the_servers_end_of_the_stream() {
    let mut h = Harness::new(
        SCHEMA,
        Options {
            owned_pg: true,
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    let cluster = h.env.pg.cluster_mut().unwrap();
    cluster.stop(cm_testkit::StopMode::Fast).unwrap();
    cluster.start_again().unwrap();
    h.wait_applied().await;
    let (status, stderr) = worker.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL ended the replication"),
        "{stderr}"
    );
    assert!(!stderr.contains("protocol violation"), "{stderr}");
}
