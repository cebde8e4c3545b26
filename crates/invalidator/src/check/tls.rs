//! What `check` says about the connection's TLS: whether `postgres.url`'s
//! connection is encrypted (from `pg_stat_ssl`) and what its `sslmode`
//! verifies of the server's certificate (see `docs/tls.md`).

use cm_tls::{SslMode, TlsSettings, Verification};
use tokio_postgres::Client;

use super::{finding, Finding, Status};

/// The finding's name.
const CHECK: &str = "postgres tls";

/// Encrypted with the certificate checked: ok. Encrypted without: a
/// warning (anyone in the path can pose as the server). In the clear: ok,
/// since the mode allowed it, with the reason said.
pub async fn tls_finding(client: &Client, url: &str) -> Result<Finding, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    let encrypted: bool = row.try_get(0)?;
    let version: Option<String> = row.try_get(1)?;
    // The configuration was checked at load; a failure here means defaults.
    let tls = TlsSettings::from_conninfo(url).unwrap_or_default();
    Ok(verdict(encrypted, version.as_deref(), &tls))
}

fn verdict(encrypted: bool, version: Option<&str>, tls: &TlsSettings) -> Finding {
    let mode = tls.mode();
    let version = version.unwrap_or("TLS");
    if !encrypted {
        let why = match mode {
            SslMode::Disable => "sslmode=disable".to_owned(),
            SslMode::Prefer => "the server does not offer TLS; sslmode=prefer".to_owned(),
            other => format!("a Unix socket, which never uses TLS; sslmode={other}"),
        };
        return finding(Status::Ok, CHECK, format!("not encrypted ({why})"));
    }
    match tls.verification() {
        Verification::ChainAndHost => finding(
            Status::Ok,
            CHECK,
            format!("{version}, certificate and host name verified (sslmode={mode})"),
        ),
        Verification::Chain => finding(
            Status::Ok,
            CHECK,
            format!(
                "{version}, certificate chain verified, host name not checked (sslmode={mode})"
            ),
        ),
        Verification::None => finding(
            Status::Warn,
            CHECK,
            format!(
                "{version}, but the server's certificate is not verified (sslmode={mode}): \
                 anyone in the path can pose as the server; set sslmode=verify-full and \
                 sslrootcert"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> TlsSettings {
        TlsSettings::from_conninfo(url).unwrap()
    }

    #[test]
    fn only_unverified_tls_is_a_warning() {
        let full = tls("host=h sslmode=verify-full sslrootcert=/ca.pem");
        let found = verdict(true, Some("TLSv1.3"), &full);
        assert_eq!(found.status, Status::Ok);
        assert!(found.detail.starts_with("TLSv1.3, certificate and host"));
        let found = verdict(true, Some("TLSv1.3"), &tls("host=h sslmode=require"));
        assert_eq!(found.status, Status::Warn);
        assert!(found.detail.contains("not verified (sslmode=require)"));
        let found = verdict(false, None, &tls("host=h"));
        assert_eq!(found.status, Status::Ok);
        assert!(
            found.detail.contains("does not offer TLS"),
            "{}",
            found.detail
        );
    }
}
