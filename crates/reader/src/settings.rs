//! [`SessionSettings`]: the session state that changes what a statement
//! returns, read once when a statement is learned (`learned.rs`) and recorded
//! with every result filled from it (`entry.rs`), so the consistency checker
//! can run the statement again the way the reader's session did.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The settings below, in field order, in one simple-protocol query (one
/// round trip, text answers).
const READ_SETTINGS: &str = "SELECT current_user, \
     current_setting('search_path'), current_setting('TimeZone'), \
     current_setting('DateStyle'), current_setting('IntervalStyle'), \
     current_setting('extra_float_digits'), current_setting('lc_monetary'), \
     current_setting('lc_numeric'), current_setting('lc_time'), \
     current_setting('default_text_search_config'), current_setting('bytea_output'), \
     current_setting('xmloption'), current_setting('row_security')";

/// The session state a result was filled under, as `current_user` and
/// `current_setting()` print it (and as `set_config()` takes it back).
///
/// Stored inside cached entries as an array, so the field order is part of
/// the entry format: add fields at the end only, with `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct SessionSettings {
    /// `current_user`: the role whose privileges and row-level security
    /// policies applied (`SET ROLE` changes it).
    pub(crate) role: String,
    /// Where unqualified names resolve.
    pub(crate) search_path: String,
    /// `timestamptz` to text, `date_trunc`, `AT TIME ZONE` without a zone.
    pub(crate) time_zone: String,
    /// Date and time to text and text to date.
    pub(crate) date_style: String,
    /// `interval` to text.
    pub(crate) interval_style: String,
    /// `real` and `double precision` to text.
    pub(crate) extra_float_digits: String,
    /// `money` to text and `to_char` currency symbols.
    pub(crate) lc_monetary: String,
    /// `to_char`/`to_number` decimal and group separators.
    pub(crate) lc_numeric: String,
    /// `to_char` month and day names.
    pub(crate) lc_time: String,
    /// `to_tsvector`/`to_tsquery` without a configuration.
    pub(crate) default_text_search_config: String,
    /// `bytea` to text.
    pub(crate) bytea_output: String,
    /// `xml` parsing and casts (`DOCUMENT` or `CONTENT`).
    pub(crate) xmloption: String,
    /// Whether a query that row-level security would filter errors instead.
    pub(crate) row_security: String,
}

impl SessionSettings {
    /// Every setting but the role, as `set_config()` names them.
    pub(crate) fn gucs(&self) -> [(&'static str, &str); 12] {
        [
            ("search_path", &self.search_path),
            ("TimeZone", &self.time_zone),
            ("DateStyle", &self.date_style),
            ("IntervalStyle", &self.interval_style),
            ("extra_float_digits", &self.extra_float_digits),
            ("lc_monetary", &self.lc_monetary),
            ("lc_numeric", &self.lc_numeric),
            ("lc_time", &self.lc_time),
            (
                "default_text_search_config",
                &self.default_text_search_config,
            ),
            ("bytea_output", &self.bytea_output),
            ("xmloption", &self.xmloption),
            ("row_security", &self.row_security),
        ]
    }

    /// Builds the settings from [`READ_SETTINGS`]' one row of text values;
    /// `None` when it is not thirteen non-NULL values.
    fn from_values<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Option<Self> {
        let values: Vec<String> = values
            .into_iter()
            .map(|v| v.map(str::to_owned))
            .collect::<Option<_>>()?;
        let [role, search_path, time_zone, date_style, interval_style, extra_float_digits, lc_monetary, lc_numeric, lc_time, default_text_search_config, bytea_output, xmloption, row_security] =
            <[String; 13]>::try_from(values).ok()?;
        Some(SessionSettings {
            role,
            search_path,
            time_zone,
            date_style,
            interval_style,
            extra_float_digits,
            lc_monetary,
            lc_numeric,
            lc_time,
            default_text_search_config,
            bytea_output,
            xmloption,
            row_security,
        })
    }
}

/// Reads the session's settings. `Ok(None)` (logged) when the answer has
/// an unexpected shape: the results are then checked with the checker's own
/// session, as results recorded before settings were.
pub(crate) async fn read(
    client: &Client,
) -> Result<Option<SessionSettings>, tokio_postgres::Error> {
    let messages = client.simple_query(READ_SETTINGS).await?;
    let settings = messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => {
            SessionSettings::from_values((0..row.len()).map(|i| row.get(i)))
        }
        _ => None,
    });
    if settings.is_none() {
        tracing::warn!("reading the session settings gave no usable row; not recording them");
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_built_only_from_thirteen_values() {
        let values: Vec<String> = (0..13).map(|i| format!("v{i}")).collect();
        let settings = SessionSettings::from_values(values.iter().map(|v| Some(v.as_str())));
        let settings = settings.unwrap_or_else(|| panic!("thirteen values"));
        assert_eq!(settings.role, "v0");
        assert_eq!(settings.gucs()[0], ("search_path", "v1"));
        assert_eq!(settings.gucs()[11], ("row_security", "v12"));
        assert!(
            SessionSettings::from_values(values[..12].iter().map(|v| Some(v.as_str()))).is_none()
        );
        let with_null = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i != 3).then_some(v.as_str()));
        assert!(SessionSettings::from_values(with_null).is_none());
    }
}
