//! Every sslmode against a real PostgreSQL started with `ssl = on` and a
//! certificate for 127.0.0.1 from a throwaway CA, and against one without
//! TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;

use cm_testkit::{PgCluster, TestPostgres};
use cm_tls::{connect, ConnectError, Conninfo};

/// `postgres://USER@HOST:PORT/DB?PARAMS`.
fn url(pg: &TestPostgres, host: &str, params: &str) -> String {
    format!(
        "postgres://{}@{host}:{}/{}?{params}",
        pg.user(),
        pg.port(),
        pg.dbname()
    )
}

/// Connects and reports whether the session is encrypted.
async fn ssl_in_use(conninfo: &str) -> Result<bool, ConnectError> {
    let (client, connection) = connect(conninfo).await?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

async fn refused(conninfo: &str) -> String {
    match ssl_in_use(conninfo).await {
        Ok(ssl) => panic!("{conninfo} connected (ssl = {ssl})"),
        Err(error) => {
            assert!(error.is_misconfiguration(), "{error:?}");
            error.to_string()
        }
    }
}

/// A CA that signed nothing the server holds.
fn unrelated_ca() -> tempfile::NamedTempFile {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(params.self_signed(&key).unwrap().pem().as_bytes())
        .unwrap();
    file
}

fn path(file: &Path) -> String {
    file.display().to_string()
}

#[tokio::test]
async fn each_mode_checks_what_libpq_checks() {
    let pg = tokio::task::spawn_blocking(|| TestPostgres::start_with(PgCluster::builder().tls()))
        .await
        .unwrap()
        .unwrap();
    let ca = path(pg.tls_ca_file().unwrap());
    let other = unrelated_ca();
    let other = path(other.path());
    let at = |host: &str, params: &str| url(&pg, host, params);

    let full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert!(ssl_in_use(&at("127.0.0.1", &full)).await.unwrap());
    let error = refused(&at("localhost", &full)).await;
    assert!(
        error.contains("TLS: certificate not valid for host \"localhost\" (sslmode=verify-full)"),
        "{error}"
    );
    assert!(
        error.contains("127.0.0.1"),
        "says which name it holds: {error}"
    );

    // verify-ca checks the chain, not the name.
    let ca_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert!(ssl_in_use(&at("localhost", &ca_only)).await.unwrap());
    let error = refused(&at(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={other}"),
    ))
    .await;
    assert!(
        error.contains(&format!(
            "not signed by a CA in sslrootcert={other} (sslmode=verify-ca)"
        )),
        "{error}"
    );

    // require verifies nothing, unless given a root: then it is verify-ca.
    assert!(ssl_in_use(&at("localhost", "sslmode=require"))
        .await
        .unwrap());
    let error = refused(&at(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other}"),
    ))
    .await;
    assert!(error.contains("(sslmode=require)"), "{error}");

    assert!(ssl_in_use(&at("127.0.0.1", "sslmode=prefer"))
        .await
        .unwrap());
    assert!(
        ssl_in_use(&at("127.0.0.1", "")).await.unwrap(),
        "prefer is the default"
    );
    assert!(!ssl_in_use(&at("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap());

    let key_value = format!(
        "{} sslmode=verify-full sslrootcert='{ca}'",
        pg.key_value_conninfo()
    );
    assert!(ssl_in_use(&key_value).await.unwrap());

    // A Unix socket never uses TLS, whatever the mode (as in libpq).
    let socket_dir = pg.cluster().unwrap().socket_dir().display().to_string();
    let socket = format!(
        "host={socket_dir} port={} user={} dbname={} sslmode=require",
        pg.port(),
        pg.user(),
        pg.dbname()
    );
    assert!(!ssl_in_use(&socket).await.unwrap());
}

#[tokio::test]
async fn a_deadpool_pool_built_from_a_conninfo_uses_tls() {
    use deadpool_postgres::{Manager, ManagerConfig, Pool};
    let pg = tokio::task::spawn_blocking(|| TestPostgres::start_with(PgCluster::builder().tls()))
        .await
        .unwrap()
        .unwrap();
    let ca = path(pg.tls_ca_file().unwrap());
    let url = url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let conninfo = Conninfo::parse(&url).unwrap();
    let manager = Manager::from_config(
        conninfo.config().clone(),
        conninfo.make_tls_connect().unwrap(),
        ManagerConfig::default(),
    );
    let pool = Pool::builder(manager).max_size(2).build().unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    let wrong = url.replacen("@127.0.0.1:", "@localhost:", 1);
    let conninfo = Conninfo::parse(&wrong).unwrap();
    let manager = Manager::from_config(
        conninfo.config().clone(),
        conninfo.make_tls_connect().unwrap(),
        ManagerConfig::default(),
    );
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let error = pool.get().await.err().unwrap();
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("certificate not valid for name \"localhost\""),
        "{chain}"
    );
}

#[tokio::test]
async fn a_server_without_tls_fails_every_mode_that_requires_it() {
    let pg = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let ca = unrelated_ca();
    let ca = path(ca.path());
    for params in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let error = refused(&url(&pg, "127.0.0.1", &params)).await;
        let mode = params.split(['=', '&']).nth(1).unwrap();
        assert_eq!(
            error,
            format!("server does not support TLS but sslmode={mode}")
        );
    }
    assert!(!ssl_in_use(&url(&pg, "127.0.0.1", "sslmode=prefer"))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_missing_root_certificate_file_is_named_before_connecting() {
    let error = connect("postgres://u@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/no/ca.pem")
        .await
        .err()
        .unwrap();
    assert!(error.is_misconfiguration());
    assert!(
        error.to_string().contains("sslrootcert /no/ca.pem"),
        "{error}"
    );
}
