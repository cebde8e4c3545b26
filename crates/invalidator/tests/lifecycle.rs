//! The process as an operator meets it: a stop while memcached is down, a
//! hot standby's endpoint, errors a retry cannot fix (a role without
//! REPLICATION, `wal_level = replica`), the log filter, and `status`'s exit
//! code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Polls `GET path` until `want` accepts the answer; panics after 30 s.
async fn wait_http(addr: &str, path: &str, want: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some((status, body)) = http_get(addr, path) {
            if want(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        assert!(
            Instant::now() < deadline,
            "GET {addr}{path}: last answer {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_memcached_is_down_exits_within_two_seconds_confirming_nothing_unapplied() {
    let h = Harness::new(
        SCHEMA,
        Options {
            owned_memcached: true,
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    let memcached = h.env.memcached.server().expect("an owned memcached");
    // Stopped, not killed: every cache call now hangs until its timeout,
    // the worst case for a retry loop.
    signal(memcached.pid(), "STOP");
    h.psql("UPDATE book SET title = 'never applied' WHERE id = 10;");
    let written = h.wal_lsn();
    // Long enough for the worker to be retrying the apply and heartbeats.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let asked = Instant::now();
    let (status, stderr) = worker.terminate();
    let took = asked.elapsed();
    signal(memcached.pid(), "CONT");
    assert!(status.success(), "exit 0 on SIGTERM: {stderr}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} to exit:\n{stderr}"
    );
    assert!(stderr.contains("cache operation failed"), "{stderr}");
    assert!(
        h.confirmed_flush() < written,
        "the unapplied UPDATE at {written} was confirmed ({}):\n{stderr}",
        h.confirmed_flush()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reports_standby_and_takes_over_the_leaders_metrics_address() {
    let leader_addr = free_port_addr();
    let h = Harness::new(
        SCHEMA,
        Options {
            extra_toml: format!(
                "[metrics]\nlisten = '{leader_addr}'\nmax_heartbeat_age_ms = 5000\n"
            ),
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let mut leader = h.spawn_worker(false);
    h.wait_applied().await;
    wait_http(&leader_addr, "/healthz", |status, body| {
        status == 200 && body.starts_with("ok")
    })
    .await;

    // A standby on an address of its own answers as a standby.
    let standby_addr = free_port_addr();
    let standby_config = h.config_file(|toml| toml.replace(&leader_addr, &standby_addr));
    let standby = h
        .command_with(&standby_config, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut standby = Worker(Some(standby));
    wait_http(&standby_addr, "/healthz", |status, body| {
        status == 200 && body.starts_with("standby")
    })
    .await;
    let metrics = wait_http(&standby_addr, "/metrics", |status, _| status == 200).await;
    assert_eq!(metrics_leader(&metrics), Some(0.0), "{metrics}");
    let leader_metrics = wait_http(&leader_addr, "/metrics", |status, _| status == 200).await;
    assert_eq!(
        metrics_leader(&leader_metrics),
        Some(1.0),
        "{leader_metrics}"
    );
    standby.terminate();

    // A standby with the leader's own configuration cannot bind its
    // address while the leader runs; once the leader is gone it holds the
    // slot and serves the address.
    let mut successor = h.spawn_worker(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = leader.terminate();
    assert!(status.success());
    h.psql("UPDATE book SET title = 'after the handover' WHERE id = 10;");
    h.wait_applied().await;
    let metrics = wait_http(&leader_addr, "/metrics", |status, body| {
        status == 200 && metrics_leader(body) == Some(1.0)
    })
    .await;
    assert!(metric(&metrics, "cm_invalidator_transactions_total").is_some());
    wait_http(&leader_addr, "/healthz", |status, body| {
        status == 200 && body.starts_with("ok")
    })
    .await;
    let (_, stderr) = successor.terminate();
    assert!(stderr.contains("metrics address in use"), "{stderr}");
}

fn metrics_leader(body: &str) -> Option<f64> {
    metric(body, "cm_invalidator_leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_flagged_by_check_and_refused_by_run() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let role = h.env.pg.unique_name("cm_norepl");
    h.psql(&format!(
        "CREATE ROLE {role} LOGIN NOREPLICATION NOSUPERUSER; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ));
    let url = h.env.pg.url();
    let user = h.env.pg.user().to_owned();
    let config = h.config_file(|toml| {
        toml.replace(
            &url,
            &url.replacen(&format!("//{user}"), &format!("//{role}"), 1),
        )
    });

    let out = h
        .command_with(&config, &["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let role_finding = finding(&out, &format!("role {role}"));
    assert_eq!(role_finding["status"], "problem", "{role_finding}");
    assert!(
        role_finding["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{role_finding}"
    );

    let started = Instant::now();
    let out = h.command_with(&config, &["run"]).output().unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("neither the REPLICATION attribute nor superuser")
            && text.contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "run retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_flagged_by_check_and_refused_by_run() {
    let h = Harness::new(
        SCHEMA,
        Options {
            cluster: Some(cm_testkit::PgCluster::builder().setting("wal_level", "replica")),
            ..Options::default()
        },
    )
    .await;
    let out = h.run_cli(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let wal_level = finding(&out, "wal_level");
    assert_eq!(wal_level["status"], "problem", "{wal_level}");
    assert!(
        wal_level["detail"].as_str().unwrap().contains("replica"),
        "{wal_level}"
    );

    let out = h.run_cli(&["run"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("wal_level is \"replica\"") && text.contains("wal_level = logical"),
        "{text}"
    );
}

#[tokio::test]
async fn a_log_level_that_is_not_a_filter_is_refused_naming_the_key() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    let config = h.config_file(|toml| {
        toml.replace(
            "level = 'cm_invalidator=debug,info'",
            "level = 'not a filter'",
        )
    });
    let out = h.command_with(&config, &["status"]).output().unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("key log.level") && text.contains("not a filter"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_replaces_log_level() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let run = |rust_log: Option<&str>| {
        let mut command = h.command(&["run"]);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        Worker(Some(command.spawn().unwrap()))
    };
    // log.level (cm_invalidator=debug,info) logs the start at info.
    let mut worker = run(None);
    h.wait_applied().await;
    let (_, text) = worker.terminate();
    assert!(text.contains("streaming"), "{text}");

    let mut worker = run(Some("warn"));
    h.psql("UPDATE book SET title = 'quiet' WHERE id = 10;");
    h.wait_applied().await;
    let (_, text) = worker.terminate();
    assert!(
        !text.contains("streaming"),
        "RUST_LOG=warn still logged info:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_non_zero_unless_a_worker_streams_with_a_fresh_heartbeat() {
    let h = Harness::new(
        SCHEMA,
        Options {
            extra_toml: "[metrics]\nmax_heartbeat_age_ms = 1500\n".into(),
            ..Options::default()
        },
    )
    .await;
    let status = |h: &Harness| {
        let out = h.run_cli(&["status", "--json"]);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("status --json: {}", stderr(&out)));
        (out.status.code(), value)
    };

    let (code, value) = status(&h);
    assert_eq!(code, Some(1), "{value}");
    assert_eq!(value["slot_exists"], false, "{value}");
    assert!(value["problems"].to_string().contains("missing"), "{value}");

    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    let (code, value) = status(&h);
    assert_eq!(code, Some(0), "{value}");
    assert_eq!(value["healthy"], true, "{value}");
    let text = h.run_cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("healthy"),
        "{text:?}"
    );

    worker.kill_9();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (code, value) = status(&h);
    assert_eq!(code, Some(1), "{value}");
    let problems = value["problems"].to_string();
    assert!(
        problems.contains("no worker is streaming") && problems.contains("heartbeat"),
        "{value}"
    );
}
