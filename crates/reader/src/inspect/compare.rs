//! Comparing a cached result with the database's: raw wire bytes, value by
//! value, and a short human description of the first difference.
//!
//! Rows are compared in order. When the statement has no `ORDER BY` its row
//! order is unspecified, so the same rows in another order are not a
//! difference there; with an `ORDER BY` they are (the sort key may have
//! changed).

use serde_bytes::ByteBuf;

use crate::row::RowSet;

/// Values longer than this are shown truncated.
const SHOWN_BYTES: usize = 32;

/// `None` when `cached` is what the database returns now, else a short
/// description of the first difference.
pub(crate) fn diff(sql: &str, cached: &RowSet, fresh: &RowSet) -> Option<String> {
    if cached.columns != fresh.columns {
        let describe = |set: &RowSet| {
            set.columns
                .iter()
                .map(|c| format!("{} oid {}", c.name(), c.type_oid()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "columns differ: cached ({}), database ({})",
            describe(cached),
            describe(fresh)
        ));
    }
    if cached.rows == fresh.rows {
        return None;
    }
    if !has_order_by(sql) {
        let mut a = cached.rows.clone();
        let mut b = fresh.rows.clone();
        a.sort();
        b.sort();
        if a == b {
            return None;
        }
    }
    let first = cached
        .rows
        .iter()
        .zip(&fresh.rows)
        .position(|(a, b)| a != b)
        .unwrap_or(cached.rows.len().min(fresh.rows.len()));
    let show = |set: &RowSet| {
        set.rows
            .get(first)
            .map(|row| render_row(set, row))
            .unwrap_or_else(|| "no row".to_owned())
    };
    Some(format!(
        "cached {} rows, database {} rows; first difference at row {}: cached {}, database {}",
        cached.rows.len(),
        fresh.rows.len(),
        first + 1,
        show(cached),
        show(fresh)
    ))
}

/// Whether the statement text has an `ORDER BY` (any case or spacing).
fn has_order_by(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    words
        .windows(2)
        .any(|w| w[0].ends_with("ORDER") && w[1] == "BY")
}

fn render_row(set: &RowSet, row: &[Option<ByteBuf>]) -> String {
    let values: Vec<String> = set
        .columns
        .iter()
        .zip(row)
        .map(|(column, value)| render_value(column.type_oid(), value.as_deref().map(|b| &b[..])))
        .collect();
    format!("({})", values.join(", "))
}

/// A value for humans: integers, booleans and text decoded, the rest hex.
fn render_value(type_oid: u32, bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "NULL".to_owned();
    };
    let decoded = match type_oid {
        16 => bytes.first().map(|b| (*b != 0).to_string()),
        21 => <[u8; 2]>::try_from(bytes)
            .ok()
            .map(|b| i16::from_be_bytes(b).to_string()),
        23 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| i32::from_be_bytes(b).to_string()),
        20 => <[u8; 8]>::try_from(bytes)
            .ok()
            .map(|b| i64::from_be_bytes(b).to_string()),
        19 | 25 | 1042 | 1043 => std::str::from_utf8(bytes).ok().map(|s| {
            let short: String = s.chars().take(SHOWN_BYTES).collect();
            let more = if short.len() < s.len() { "..." } else { "" };
            format!("{short:?}{more}")
        }),
        _ => None,
    };
    decoded.unwrap_or_else(|| {
        let hex: String = bytes
            .iter()
            .take(SHOWN_BYTES)
            .map(|b| format!("{b:02x}"))
            .collect();
        let more = if bytes.len() > SHOWN_BYTES { "..." } else { "" };
        format!("\\x{hex}{more}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::CachedColumn;

    fn set(rows: &[(i32, &str)]) -> RowSet {
        let column = |name: &str, oid: u32| {
            serde_json::from_value::<CachedColumn>(serde_json::json!({
                "name": name, "type_oid": oid, "type_name": "", "type_schema": ""
            }))
        };
        RowSet {
            columns: vec![
                column("id", 23).unwrap_or_else(|e| panic!("{e}")),
                column("title", 25).unwrap_or_else(|e| panic!("{e}")),
            ],
            rows: rows
                .iter()
                .map(|(id, title)| {
                    vec![
                        Some(ByteBuf::from(id.to_be_bytes().to_vec())),
                        Some(ByteBuf::from(title.as_bytes().to_vec())),
                    ]
                })
                .collect(),
        }
    }

    #[test]
    fn equal_results_and_reordered_unordered_ones_match() {
        let a = set(&[(1, "x"), (2, "y")]);
        assert_eq!(diff("SELECT 1", &a, &a), None);
        let b = set(&[(2, "y"), (1, "x")]);
        assert_eq!(diff("SELECT id, title FROM t", &a, &b), None);
        assert!(diff("SELECT id, title FROM t\n ORDER\tby id", &a, &b).is_some());
    }

    #[test]
    fn differences_name_the_first_differing_row() {
        let a = set(&[(1, "x"), (2, "y")]);
        let b = set(&[(1, "x"), (2, "z")]);
        assert_eq!(
            diff("SELECT", &a, &b).as_deref(),
            Some(
                "cached 2 rows, database 2 rows; first difference at row 2: \
                 cached (2, \"y\"), database (2, \"z\")"
            )
        );
        let c = set(&[(1, "x")]);
        assert_eq!(
            diff("SELECT", &a, &c).as_deref(),
            Some(
                "cached 2 rows, database 1 rows; first difference at row 2: \
                 cached (2, \"y\"), database no row"
            )
        );
    }
}
