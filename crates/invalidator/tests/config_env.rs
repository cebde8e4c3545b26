//! Environment overrides, in a test binary of their own: changing the
//! process environment would race with other tests in the same process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use cm_invalidator::config::InvalidatorConfig;

/// The process environment is shared by the tests of this binary.
static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load(text: &str) -> Result<InvalidatorConfig, String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    InvalidatorConfig::load(file.path()).map_err(|e| e.to_string())
}

#[test]
fn environment_overrides_the_file_and_the_config_path_variable_is_not_a_key() {
    let _environment = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("CM_INVALIDATOR_CONFIG", "/some/where.toml");
    std::env::set_var("CM_INVALIDATOR_WORKER__KEY_BUDGET", "77");
    // What docker-compose.yml passes: a list in one variable.
    std::env::set_var(
        "CM_INVALIDATOR_CACHE__SERVERS",
        r#"["memcached:11211", "b:2"]"#,
    );
    let config = load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n");
    std::env::remove_var("CM_INVALIDATOR_CONFIG");
    std::env::remove_var("CM_INVALIDATOR_WORKER__KEY_BUDGET");
    std::env::remove_var("CM_INVALIDATOR_CACHE__SERVERS");
    let config = config.unwrap();
    assert_eq!(config.worker.key_budget, 77);
    assert_eq!(config.cache.servers, ["memcached:11211", "b:2"]);
}

#[test]
fn a_bad_value_or_key_from_the_environment_names_the_variable() {
    let _environment = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    let file = "[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n";
    let cases = [
        ("CM_INVALIDATOR_WORKER__KEY_BUDGET", "abc"),
        ("CM_INVALIDATOR_WORKER__KEY_BUDGT", "3"),
        ("CM_INVALIDATOR_POSTGRES__SLOT", "Bad-Slot"),
    ];
    for (variable, value) in cases {
        std::env::set_var(variable, value);
        let err = load(file).unwrap_err();
        std::env::remove_var(variable);
        assert!(
            err.starts_with(&format!("environment variable {variable}: ")),
            "{err}"
        );
        assert!(!err.contains("config file"), "{err}");
    }
    // A bad value in the file still names the file.
    let err =
        load("[postgres]\nurl = 'x'\n[cache]\nservers = ['a:1']\n[worker]\nkey_budget = 'x'\n")
            .unwrap_err();
    assert!(err.starts_with("config file "), "{err}");
}
