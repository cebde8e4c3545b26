//! `cm-invalidator` against a PostgreSQL that serves TLS with a certificate
//! for 127.0.0.1 from a throwaway CA: `setup` and `check` with
//! `sslmode=verify-full`, `run` streaming over TLS while the server refuses
//! every plain TCP connection, and the errors for a certificate that does
//! not name the host and for `require` against a server without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use cm_testkit::PgCluster;
use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The harness's URL with `host` for 127.0.0.1 and `params` appended.
fn url_with(h: &Harness, host: &str, params: &str) -> String {
    let url = h
        .env
        .pg
        .url()
        .replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    format!("{url}?{params}")
}

/// `sslmode=verify-full&sslrootcert=<the kit's CA>`.
fn verify_full(h: &Harness) -> String {
    format!(
        "sslmode=verify-full&sslrootcert={}",
        h.env.pg.tls_ca_file().unwrap().display()
    )
}

/// A configuration file whose `postgres.url` is `url`.
fn config_with_url(h: &Harness, url: &str) -> tempfile::TempPath {
    let old = format!("'{}'", h.env.pg.url());
    h.config_file(|toml| {
        assert!(toml.contains(&old));
        toml.replace(&old, &format!("'{url}'"))
    })
}

/// `cm-invalidator run` must exit by itself, quickly, with a failure.
fn run_fails(h: &Harness, config: &std::path::Path) -> String {
    let started = Instant::now();
    let out = h.command_with(config, &["run"]).output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20), "run retried");
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_and_check_with_verify_full_and_a_wrong_host_refused() {
    let h = Harness::new(
        SCHEMA,
        Options {
            cluster: Some(PgCluster::builder().tls()),
            extra_toml: MAPPING.into(),
            ..Options::default()
        },
    )
    .await;
    let config = config_with_url(&h, &url_with(&h, "127.0.0.1", &verify_full(&h)));
    let out = h.command_with(&config, &["setup"]).output().unwrap();
    assert!(out.status.success(), "setup: {}", stderr(&out));
    let out = h
        .command_with(&config, &["check", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "check: {}", stderr(&out));
    let tls = finding(&out, "postgres tls");
    assert_eq!(tls["status"], "ok", "{tls}");
    assert!(
        tls["detail"]
            .as_str()
            .unwrap()
            .contains("certificate and host name verified (sslmode=verify-full)"),
        "{tls}"
    );

    // The certificate names 127.0.0.1, not localhost.
    let wrong = config_with_url(&h, &url_with(&h, "localhost", &verify_full(&h)));
    let out = h.command_with(&wrong, &["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(
            "postgres.url: TLS: certificate not valid for host \"localhost\" (sslmode=verify-full)"
        ),
        "{text}"
    );
    let text = run_fails(&h, &wrong);
    assert!(
        text.contains("TLS: certificate not valid for host \"localhost\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_over_tls_and_invalidates_a_psql_write() {
    // Every TCP connection must use TLS: a plain one is rejected outright.
    let cluster = PgCluster::builder()
        .tls()
        .hba_line("hostnossl all all 127.0.0.1/32 reject");
    let h = Harness::new(
        SCHEMA,
        Options {
            cluster: Some(cluster),
            extra_toml: MAPPING.into(),
            ..Options::default()
        },
    )
    .await;
    let params = format!("{}&application_name=cm_tls_run", verify_full(&h));
    let config = config_with_url(&h, &url_with(&h, "127.0.0.1", &params));
    let out = h.command_with(&config, &["setup"]).output().unwrap();
    assert!(out.status.success(), "setup: {}", stderr(&out));
    let mut command = h.command_with(&config, &["run"]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let _worker = Worker(Some(command.spawn().unwrap()));
    // The heartbeat's round trip: emitted on an SQL connection, streamed
    // back over the walsender connection.
    h.wait_applied().await;

    let book10 = h.cache("book 10", &[h.object("book", 10)]).await;
    let unrelated = h.cache("book 99", &[h.object("book", 99)]).await;
    h.psql("UPDATE book SET title = 'over tls' WHERE id = 10;");
    h.wait_applied().await;
    assert!(!h.is_cached(&book10).await, "the updated row's result");
    assert!(h.is_cached(&unrelated).await);

    assert_eq!(
        h.psql("SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)")
            .trim(),
        "t",
        "the walsender connection uses TLS"
    );
    let sessions = h.psql(
        "SELECT count(*) >= 2, bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'cm_tls_run'",
    );
    assert_eq!(
        sessions.trim(),
        "t|t",
        "walsender and SQL sessions, all TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_clearly() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    let config = config_with_url(&h, &url_with(&h, "127.0.0.1", "sslmode=require"));
    let out = h.command_with(&config, &["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("server does not support TLS but sslmode=require"),
        "{text}"
    );
    let text = run_fails(&h, &config);
    assert!(
        text.contains("server does not support TLS but sslmode=require"),
        "{text}"
    );
}
