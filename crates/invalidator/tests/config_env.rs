//! Environment overrides, in a test binary of their own: changing the
//! process environment would race with other tests in the same process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use cm_invalidator::config::InvalidatorConfig;

fn load(text: &str) -> Result<InvalidatorConfig, String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    InvalidatorConfig::load(file.path()).map_err(|e| e.to_string())
}

#[test]
fn environment_overrides_the_file_and_the_config_path_variable_is_not_a_key() {
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
