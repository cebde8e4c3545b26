//! The operator commands: setup (publication before slot, dry run, refusing
//! to break writes), check (replica identity verdicts, exit codes, JSON) and
//! status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn setup_creates_the_publication_before_the_slot_and_dry_run_changes_nothing() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    let out = h.run_cli(&["setup", "--dry-run"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let publication = text.find("CREATE PUBLICATION").expect("publication step");
    let slot = text.find("CREATE_REPLICATION_SLOT").expect("slot step");
    assert!(publication < slot, "publication first: {text}");
    assert_eq!(h.psql("SELECT count(*) FROM pg_publication").trim(), "0");

    h.setup();
    assert_eq!(h.psql("SELECT count(*) FROM pg_publication").trim(), "1");
    let out = h.run_cli(&["setup"]);
    assert!(stdout(&out).contains("nothing to do"));
}

#[tokio::test]
async fn setup_refuses_to_publish_all_tables_when_that_would_break_writes() {
    let h = Harness::new(
        &format!("{SCHEMA} CREATE TABLE nopk(a int, b text);"),
        Options::default(),
    )
    .await;
    let out = h.run_cli(&["setup"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("public.nopk"), "{stderr}");
    assert_eq!(h.psql("SELECT count(*) FROM pg_publication").trim(), "0");
}

#[tokio::test]
async fn check_flags_a_table_without_pk_and_an_fk_needing_full_identity() {
    let h = Harness::new(
        "CREATE TABLE author(id int PRIMARY KEY);
         CREATE TABLE book(id int PRIMARY KEY, author_id int REFERENCES author(id));
         CREATE TABLE nopk(a int, b text);",
        Options {
            extra_toml: "".into(),
            ..Options::default()
        },
    )
    .await;
    // Published explicitly: setup would refuse FOR ALL TABLES with nopk.
    h.psql("CREATE PUBLICATION cm_pub FOR TABLE author, book, nopk;");
    h.setup();
    let out = h.run_cli(&["check", "--json"]);
    assert!(!out.status.success(), "problems mean a non-zero exit");
    let find = |check: &str| finding(&out, check);
    assert_eq!(find("replica identity public.nopk")["status"], "problem");
    let book = find("replica identity public.book");
    assert_eq!(book["status"], "problem");
    assert!(
        book["detail"].as_str().unwrap().contains("author_id"),
        "{book}"
    );
    assert_eq!(find("replica identity public.author")["status"], "ok");
    assert_eq!(find("wal_level")["status"], "ok");
    assert_eq!(find("memcached")["status"], "ok");

    h.psql("ALTER TABLE book REPLICA IDENTITY FULL; ALTER PUBLICATION cm_pub DROP TABLE nopk;");
    let out = h.run_cli(&["check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("STATUS"), "a table for humans");
    // A table outside the publication is listed as read through.
    let out = h.run_cli(&["check", "--json"]);
    let nopk = finding(&out, "coverage public.nopk");
    assert_eq!(nopk["status"], "warn");
    assert!(
        nopk["detail"]
            .as_str()
            .unwrap()
            .contains("not in the publication (publication cm_pub)"),
        "{nopk}"
    );
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !findings
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "coverage public.book"),
        "a published table cached row by row is not listed: {findings}"
    );

    // Published in part: a row filter, a column list (even one naming every
    // column: a column added later would not be published).
    h.psql("ALTER PUBLICATION cm_pub SET TABLE author WHERE (id > 0), book (id, author_id);");
    let out = h.run_cli(&["check", "--json"]);
    for (table, why) in [
        ("author", "published with a row filter"),
        ("book", "published with a column list"),
    ] {
        let coverage = finding(&out, &format!("coverage public.{table}"));
        assert_eq!(coverage["status"], "warn", "{coverage}");
        let detail = coverage["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_and_heartbeat() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let out = h.run_cli(&["status", "--json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["slot_exists"], true);
    assert!(status["lag_bytes"].is_i64(), "{status}");
    assert!(
        status["heartbeat_age_seconds"].as_f64().unwrap() < 30.0,
        "{status}"
    );
    assert!(status["streaming_pid"].is_i64(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let h = Harness::new(
        SCHEMA,
        Options {
            extra_toml: format!("[metrics]\nlisten = '{addr}'\nmax_heartbeat_age_ms = 5000\n"),
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    h.psql("UPDATE book SET title = 'm' WHERE id = 10;");
    h.wait_applied().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some((200, _)) = http_get(&addr, "/healthz") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never became healthy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for metric in [
        "cm_invalidator_transactions_total",
        "cm_invalidator_commit_to_invalidated_seconds_bucket",
        "cm_invalidator_ack_lsn",
        "cm_invalidator_lag_bytes",
        "cm_invalidator_heartbeat_age_seconds",
        "cm_invalidator_cache_errors_total",
    ] {
        assert!(body.contains(metric), "{metric} missing:\n{body}");
    }
    let transactions = metric(&body, "cm_invalidator_transactions_total").unwrap();
    assert!(transactions >= 1.0, "{body}");
    // Every applied commit is timed in every stage (the bench reads these).
    for stage in [
        "commit_to_send",
        "send_to_read",
        "read_to_loop",
        "loop_to_group",
        "group_to_applied",
        "applied_to_published",
    ] {
        let bucket =
            format!("cm_invalidator_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}");
        let count = body
            .lines()
            .find_map(|line| line.strip_prefix(&bucket))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert!(
            count.is_some_and(|count| count >= 1.0),
            "stage {stage} has no sample:\n{body}"
        );
    }
}
