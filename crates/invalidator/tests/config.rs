//! The example configuration loads, and bad keys and values are errors that
//! name the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use cm_invalidator::config::{exposed_password_warning, InvalidatorConfig};

fn load(text: &str) -> Result<InvalidatorConfig, String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    InvalidatorConfig::load(file.path()).map_err(|e| e.to_string())
}

#[test]
fn the_example_config_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/invalidator.toml");
    let config = InvalidatorConfig::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config.postgres.slot, "cm_invalidator");
    assert_eq!(config.worker.key_budget, 10_000);
}

#[test]
fn unknown_keys_are_named() {
    let err =
        load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\nprefx = 'oops'\n").unwrap_err();
    assert!(err.contains("prefx"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err =
        load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n[worker]\nkey_budget = -3\n")
            .unwrap_err();
    assert!(err.contains("worker.key_budget"), "{err}");
    let err =
        load("[postgres]\nurl = 'x'\nslot = 'Bad-Slot'\n[cache]\nservers = ['a:1']\n").unwrap_err();
    assert!(err.contains("postgres.slot"), "{err}");
    let err = load("[postgres]\nurl = 'x'\n[cache]\nservers = []\n").unwrap_err();
    assert!(err.contains("cache.servers"), "{err}");
    let err = load("[postgres]\nurl = 'x'\n").unwrap_err();
    assert!(err.contains("cache"), "{err}");
}

#[test]
fn result_servers_are_optional_and_must_not_repeat_a_metadata_server() {
    let config = load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n").unwrap();
    assert!(config.cache.result_servers.is_empty());
    let config =
        load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\nresult_servers = ['b:1']\n")
            .unwrap();
    assert_eq!(config.cache.result_servers, ["b:1"]);
    let err = load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\nresult_servers = ['a:1']\n")
        .unwrap_err();
    assert!(
        err.contains("cache.result_servers") && err.contains("a:1"),
        "{err}"
    );
    let err = load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\nresult_servers = ['b']\n")
        .unwrap_err();
    assert!(err.contains("cache.result_servers"), "{err}");
}

#[test]
fn the_schema_section_is_left_to_the_mapping() {
    let config = load(
        "[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n\
         [schema.tables.\"public.book\"]\npolicy = 'whole_table'\n",
    )
    .unwrap();
    assert_eq!(config.cache.prefix, "cm");
}

#[test]
fn a_password_in_a_file_others_may_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let with_password =
        "[postgres]\nurl = 'postgres://cm:s3cret@db/app'\n[cache]\nservers = ['a:1']\n";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(with_password.as_bytes()).unwrap();
    let chmod = |mode| {
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(0o644);
    let warning = exposed_password_warning(file.path()).expect("a warning");
    assert!(
        warning.contains(&file.path().display().to_string()),
        "{warning}"
    );
    assert!(
        warning.contains("chmod 600") && warning.contains("644"),
        "{warning}"
    );
    assert!(!warning.contains("s3cret"), "{warning}");
    chmod(0o600);
    assert_eq!(exposed_password_warning(file.path()), None);

    let mut plain = tempfile::NamedTempFile::new().unwrap();
    plain
        .write_all(b"[postgres]\nurl = 'host=db user=cm'\n[cache]\nservers = ['a:1']\n")
        .unwrap();
    std::fs::set_permissions(plain.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(exposed_password_warning(plain.path()), None);
}

#[test]
fn log_level_takes_levels_and_target_directives_and_names_the_key_otherwise() {
    let with_level = |level: &str| {
        load(&format!(
            "[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n[log]\nlevel = '{level}'\n"
        ))
    };
    for good in [
        "info",
        "WARN",
        "cm_worker=debug,info",
        "cm_invalidator::run=trace, warn",
    ] {
        assert!(
            with_level(good).is_ok(),
            "{good}: {:?}",
            with_level(good).err()
        );
    }
    for bad in ["not a filter", "verbose", "cm_worker=loud", "", "=debug"] {
        let err = with_level(bad).unwrap_err();
        assert!(err.contains("key log.level"), "{bad}: {err}");
    }
}

#[test]
fn bad_tls_parameters_in_the_url_are_named_at_load() {
    let with = |url: &str| format!("[postgres]\nurl = '{url}'\n[cache]\nservers = ['a:1']\n");
    let err = load(&with("postgres://cm@db/app?sslmode=verify")).unwrap_err();
    assert!(err.contains("key postgres.url"), "{err}");
    assert!(err.contains("sslmode \"verify\" is not one of"), "{err}");
    let err = load(&with("host=db user=cm sslmode=verify-full")).unwrap_err();
    assert!(err.contains("key postgres.url"), "{err}");
    assert!(err.contains("needs sslrootcert"), "{err}");
    let config = load(&with(
        "postgres://cm@db/app?sslmode=verify-full&sslrootcert=/etc/cm/ca.pem",
    ))
    .unwrap();
    assert!(config.postgres.url.contains("verify-full"));
}

#[test]
fn a_password_next_to_tls_parameters_still_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let text =
        "[postgres]\nurl = 'postgres://cm:s3cret@db/app?sslmode=verify-full&sslrootcert=system'\n\
                [cache]\nservers = ['a:1']\n";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(exposed_password_warning(file.path()).is_some());
}
