//! Takes named parameters out of a connection string and leaves the rest,
//! byte for byte, to tokio-postgres's parser.
//!
//! tokio-postgres knows `sslmode` only as disable, prefer or require and
//! rejects `sslrootcert` as an unknown option, so those are taken out here.
//! Both forms are scanned the way tokio-postgres reads them: a URL's query
//! (`?a=b&c=d`, percent-encoded, starting at the first `?` after the
//! credentials), and `key = value` pairs (values bare or single-quoted,
//! with backslash escapes). A string this scan cannot read is passed on
//! whole, so that tokio-postgres reports what is wrong with it.

use std::ops::Range;

use percent_encoding::percent_decode_str;

use crate::error::TlsConfigError;

/// A connection string without the taken parameters, and those parameters
/// (`(name, decoded value)`, in their order).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) rest: String,
    pub(crate) taken: Vec<(String, String)>,
}

/// Takes every parameter named in `names` out of `conninfo`.
pub(crate) fn take_params(conninfo: &str, names: &[&str]) -> Result<Split, TlsConfigError> {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        take_from_url(conninfo, names)
    } else {
        Ok(take_from_key_value(conninfo, names))
    }
}

fn take_from_url(url: &str, names: &[&str]) -> Result<Split, TlsConfigError> {
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(question) = url[after_credentials..].find('?') else {
        return Ok(untouched(url));
    };
    let (head, query) = url.split_at(after_credentials + question);
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for piece in query[1..].split('&') {
        let ours = piece.split_once('=').and_then(|(key, value)| {
            let key = percent_decode_str(key).decode_utf8().ok()?;
            names
                .contains(&key.as_ref())
                .then(|| (key.into_owned(), value))
        });
        match ours {
            Some((key, value)) => {
                let decoded = percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| TlsConfigError::NotUtf8(key.clone()))?;
                taken.push((key, decoded.into_owned()));
            }
            None => kept.push(piece),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Ok(Split { rest, taken })
}

fn take_from_key_value(conninfo: &str, names: &[&str]) -> Split {
    let Some(params) = Scanner::new(conninfo).params() else {
        return untouched(conninfo);
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in params {
        if names.contains(&param.key) {
            taken.push((param.key.to_owned(), param.value));
        } else {
            kept.push(&conninfo[param.span]);
        }
    }
    Split {
        rest: kept.join(" "),
        taken,
    }
}

fn untouched(conninfo: &str) -> Split {
    Split {
        rest: conninfo.to_owned(),
        taken: Vec::new(),
    }
}

/// One `key = value` pair: the key, the unescaped value, and where the
/// pair stands in the string.
struct Param<'a> {
    key: &'a str,
    value: String,
    span: Range<usize>,
}

/// Reads `key = value` pairs as tokio-postgres's `Parser` does.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner { text, at: 0 }
    }

    /// Every pair, or `None` where the string does not scan.
    fn params(mut self) -> Option<Vec<Param<'a>>> {
        let mut params = Vec::new();
        loop {
            self.skip_whitespace();
            let start = self.at;
            let key = self.take_while(|c| !c.is_whitespace() && c != '=');
            if key.is_empty() {
                return (self.at == self.text.len()).then_some(params);
            }
            self.skip_whitespace();
            if !self.eat('=') {
                return None;
            }
            self.skip_whitespace();
            let value = self.value()?;
            params.push(Param {
                key,
                value,
                span: start..self.at,
            });
        }
    }

    fn value(&mut self) -> Option<String> {
        let quoted = self.eat('\'');
        let mut value = String::new();
        while let Some(c) = self.peek() {
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                break;
            }
            self.at += c.len_utf8();
            if c == '\\' {
                if let Some(escaped) = self.peek() {
                    self.at += escaped.len_utf8();
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if quoted {
            self.eat('\'').then_some(value)
        } else {
            (!value.is_empty()).then_some(value)
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn eat(&mut self, wanted: char) -> bool {
        let found = self.peek() == Some(wanted);
        if found {
            self.at += wanted.len_utf8();
        }
        found
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.at;
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            self.at += c.len_utf8();
        }
        &self.text[start..self.at]
    }

    fn skip_whitespace(&mut self) {
        self.take_while(char::is_whitespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["sslmode", "sslrootcert"];

    fn split(conninfo: &str) -> Split {
        take_params(conninfo, NAMES).unwrap()
    }

    fn taken(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_url_query_loses_only_the_named_parameters() {
        let s = split(
            "postgres://u:p%3Fw@h:5432/db?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20file.pem&connect_timeout=3",
        );
        assert_eq!(
            s.rest,
            "postgres://u:p%3Fw@h:5432/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(
            s.taken,
            taken(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca file.pem")
            ])
        );
        let s = split("postgresql://h/db?sslmode=require");
        assert_eq!(s.rest, "postgresql://h/db");
        assert_eq!(s.taken, taken(&[("sslmode", "require")]));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let s = split("postgres://u:a?b@h/db");
        assert_eq!(s.rest, "postgres://u:a?b@h/db");
        assert!(s.taken.is_empty());
    }

    #[test]
    fn key_value_pairs_lose_only_the_named_ones_quotes_and_escapes_included() {
        let s = split(
            r"host=h  sslmode = verify-ca password='it\'s secret' sslrootcert='/a b/c\\d.pem' dbname=d",
        );
        assert_eq!(s.rest, r"host=h password='it\'s secret' dbname=d");
        assert_eq!(
            s.taken,
            taken(&[("sslmode", "verify-ca"), ("sslrootcert", r"/a b/c\d.pem")])
        );
    }

    #[test]
    fn what_does_not_scan_is_left_whole_for_tokio_postgres() {
        for broken in ["host=h sslmode", "host='h sslmode=require", "sslmode= "] {
            let s = split(broken);
            assert_eq!(s.rest, broken);
            assert!(s.taken.is_empty(), "{broken}");
        }
        assert_eq!(split("").rest, "");
    }

    #[test]
    fn a_value_that_is_not_utf8_is_named() {
        let error = take_params("postgres://h/db?sslrootcert=%FF", NAMES).unwrap_err();
        assert!(error.to_string().contains("sslrootcert"), "{error}");
    }
}
