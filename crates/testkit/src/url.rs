//! A deliberately small parser and printer for `postgres://` URLs.
//!
//! Accepted: `postgres[ql]://[user[:password]@]host[:port][/dbname]`, where
//! user, password and dbname may be percent-encoded. Missing parts default to
//! user `postgres`, port 5432 and database `postgres`. Anything else (query
//! parameters, several hosts, IPv6 literals, Unix socket paths) is refused
//! with an error that says so.

use crate::TestkitError;

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConnParams {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Option<String>,
    pub(crate) dbname: String,
}

impl ConnParams {
    /// The same server and credentials, another database.
    pub(crate) fn with_dbname(&self, dbname: &str) -> ConnParams {
        ConnParams {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// `postgres://user[:password]@host:port/dbname`.
    pub(crate) fn to_url(&self) -> String {
        let auth = match &self.password {
            Some(pw) => format!("{}:{}", encode(&self.user), encode(pw)),
            None => encode(&self.user),
        };
        format!(
            "postgres://{auth}@{}:{}/{}",
            self.host,
            self.port,
            encode(&self.dbname)
        )
    }
}

/// Parses a URL of the accepted form (see the module docs).
pub(crate) fn parse(url: &str) -> Result<ConnParams, TestkitError> {
    let bad = |reason: &str| TestkitError::BadUrl {
        url: mask_password(url),
        reason: format!("{reason} (expected postgres://user[:password]@host:port/dbname)"),
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("must start with postgres:// or postgresql://"))?;
    if rest.contains('?') || rest.contains('#') {
        return Err(bad("query parameters and fragments are not supported"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => ("postgres".to_string(), None),
        Some(info) => {
            let (u, p) = match info.find(':') {
                Some(i) => (&info[..i], Some(&info[i + 1..])),
                None => (info, None),
            };
            let u = decode(u).ok_or_else(|| bad("bad percent-encoding in the user"))?;
            if u.is_empty() {
                return Err(bad("empty user name"));
            }
            let p = match p {
                Some(p) => {
                    Some(decode(p).ok_or_else(|| bad("bad percent-encoding in the password"))?)
                }
                None => None,
            };
            (u, p)
        }
    };
    if hostport.starts_with('[') || hostport.contains(',') {
        return Err(bad("IPv6 literals and multiple hosts are not supported"));
    }
    let (host, port) = match hostport.rfind(':') {
        Some(i) => {
            let port: u16 = hostport[i + 1..]
                .parse()
                .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
            if port == 0 {
                return Err(bad("the port is not a number from 1 to 65535"));
            }
            (&hostport[..i], port)
        }
        None => (hostport, 5432),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains('%') || host.contains('/') {
        return Err(bad("Unix socket paths are not supported; use a TCP host"));
    }
    let dbname = if path.is_empty() {
        "postgres".to_string()
    } else {
        decode(path).ok_or_else(|| bad("bad percent-encoding in the database name"))?
    };
    if dbname.contains('/') {
        return Err(bad("the database name contains `/`"));
    }
    Ok(ConnParams {
        host: host.to_string(),
        port,
        user,
        password,
        dbname,
    })
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub(crate) fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let after = &url[scheme_end + 3..];
    let authority_end = after.find('/').unwrap_or(after.len());
    let authority = &after[..authority_end];
    match (authority.find(':'), authority.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &after[at..]
        ),
        _ => url.to_string(),
    }
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let p = parse("postgres://alice:s%40cret@127.0.0.1:5433/app").unwrap();
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 5433);
        assert_eq!(p.user, "alice");
        assert_eq!(p.password.as_deref(), Some("s@cret"));
        assert_eq!(p.dbname, "app");
        assert_eq!(p.to_url(), "postgres://alice:s%40cret@127.0.0.1:5433/app");
    }

    #[test]
    fn fills_defaults() {
        let p = parse("postgresql://localhost").unwrap();
        assert_eq!(
            p,
            ConnParams {
                host: "localhost".into(),
                port: 5432,
                user: "postgres".into(),
                password: None,
                dbname: "postgres".into(),
            }
        );
        let p = parse("postgres://postgres@127.0.0.1:5433/postgres").unwrap();
        assert_eq!(p.to_url(), "postgres://postgres@127.0.0.1:5433/postgres");
        assert_eq!(p.with_dbname("cmt_1").dbname, "cmt_1");
    }

    #[test]
    fn refuses_other_forms() {
        for url in [
            "mysql://x@h:1/db",
            "postgres://x@h:1/db?sslmode=disable",
            "postgres://x@[::1]:5432/db",
            "postgres://x@h1:1,h2:2/db",
            "postgres://x@h:port/db",
            "postgres://x@h:0/db",
            "postgres://x@:5432/db",
            "postgres://@h:5432/db",
            "postgres://x@h:5432/a/b",
            "host=h port=1",
        ] {
            assert!(parse(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn masks_passwords_in_messages() {
        assert_eq!(
            mask_password("postgres://u:secret@h:1/d"),
            "postgres://u:***@h:1/d"
        );
        assert_eq!(mask_password("postgres://u@h:1/d"), "postgres://u@h:1/d");
        let err = parse("postgres://u:secret@h:x/d").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
