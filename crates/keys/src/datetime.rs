//! Parsing PostgreSQL's ISO date/time text output into the binary form's
//! numbers (days or microseconds since 2000-01-01), so that text from
//! pgoutput and binary values from queries canonicalise identically.
//!
//! Only `DateStyle=ISO` output is accepted (the invalidator pins it,
//! `docs/pgoutput.md` §6): `YYYY-MM-DD`, then ` HH:MM:SS[.ffffff]`, then for
//! `timestamptz` an offset `±HH[:MM[:SS]]`, then ` BC` for years before 1 AD;
//! or `infinity` / `-infinity`. Years may have more than four digits.

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Parses a `date`'s ISO output into days since 2000-01-01.
pub(crate) fn parse_date(text: &str) -> Result<i32, &'static str> {
    match text {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (body, bc) = split_era(text);
    let days = parse_ymd(body, bc)?;
    i32::try_from(days).map_err(|_| "date out of range")
}

/// Parses a `timestamp` or (with `with_offset`) `timestamptz` ISO output into
/// microseconds since 2000-01-01 00:00:00 (UTC for `timestamptz`).
pub(crate) fn parse_timestamp(text: &str, with_offset: bool) -> Result<i64, &'static str> {
    match text {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = split_era(text);
    let (date, time) = body.split_once(' ').ok_or("no time part")?;
    let days = parse_ymd(date, bc)?;
    let (clock, offset_seconds) = if with_offset {
        let at = time.find(['+', '-']).ok_or("no UTC offset")?;
        (&time[..at], parse_offset(&time[at..])?)
    } else {
        (time, 0)
    };
    let local = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|d| d.checked_add(parse_clock(clock)?))
        .ok_or("timestamp out of range")?;
    // `12:00+05:30` is 06:30 UTC: subtract the offset.
    local
        .checked_sub(offset_seconds * MICROS_PER_SECOND)
        .ok_or("timestamp out of range")
}

fn split_era(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

fn digits(text: &str, min: usize, max: usize) -> Result<i64, &'static str> {
    if text.len() < min || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad digits");
    }
    text.parse::<i64>().map_err(|_| "bad digits")
}

/// `YYYY-MM-DD` (with era) into days since 2000-01-01.
fn parse_ymd(text: &str, bc: bool) -> Result<i64, &'static str> {
    let mut parts = text.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not YYYY-MM-DD");
    };
    let year = digits(y, 4, 7)?;
    let month = digits(m, 2, 2)?;
    let day = digits(d, 2, 2)?;
    if year == 0 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month, bc) {
        return Err("no such day");
    }
    // 1 BC is astronomical year 0, 2 BC is -1, ...
    let astronomical = if bc { 1 - year } else { year };
    Ok(days_from_civil(astronomical, month, day) - PG_EPOCH_DAYS)
}

fn days_in_month(year: i64, month: i64, bc: bool) -> i64 {
    let y = if bc { 1 - year } else { year };
    let leap = y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `HH:MM:SS[.f{1,6}]` into microseconds since midnight.
fn parse_clock(text: &str) -> Option<i64> {
    let (hms, frac) = match text.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (text, None),
    };
    let mut parts = hms.split(':');
    let (Some(h), Some(m), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (h, m, s) = (
        digits(h, 2, 2).ok()?,
        digits(m, 2, 2).ok()?,
        digits(s, 2, 2).ok()?,
    );
    if h > 24 || m > 59 || s > 60 {
        return None;
    }
    let micros = match frac {
        None => 0,
        Some(f) => {
            let value = digits(f, 1, 6).ok()?;
            let scale = 10i64.pow(u32::try_from(6 - f.len()).ok()?);
            value * scale
        }
    };
    Some(((h * 60 + m) * 60 + s) * MICROS_PER_SECOND + micros)
}

/// `±HH[:MM[:SS]]` into seconds east of UTC.
fn parse_offset(text: &str) -> Result<i64, &'static str> {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err("bad UTC offset"),
    };
    let mut seconds = 0;
    let mut count = 0;
    for (i, part) in rest.split(':').enumerate() {
        if i > 2 {
            return Err("bad UTC offset");
        }
        let v = digits(part, 2, 2).map_err(|_| "bad UTC offset")?;
        seconds += v * [3600, 60, 1][i];
        count += 1;
    }
    if count == 0 {
        return Err("bad UTC offset");
    }
    Ok(sign * seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_epoch_is_zero() {
        assert_eq!(parse_date("2000-01-01"), Ok(0));
        assert_eq!(parse_timestamp("2000-01-01 00:00:00", false), Ok(0));
        assert_eq!(parse_timestamp("2000-01-01 00:00:00+00", true), Ok(0));
    }

    #[test]
    fn dates_before_2000_and_bc_are_negative() {
        assert_eq!(parse_date("1999-12-31"), Ok(-1));
        assert_eq!(parse_date("1970-01-01"), Ok(-10_957));
        // 1 BC is a leap year (astronomical year 0).
        assert_eq!(
            parse_date("0001-02-29 BC").map(|d| d + 1),
            parse_date("0001-03-01 BC")
        );
        assert_eq!(
            parse_date("0001-12-31 BC").map(|d| d + 1),
            parse_date("0001-01-01")
        );
        assert!(parse_date("0002-02-29 BC").is_err());
    }

    #[test]
    fn fractions_and_offsets() {
        assert_eq!(parse_timestamp("2000-01-01 00:00:00.5", false), Ok(500_000));
        assert_eq!(parse_timestamp("2000-01-01 00:00:00.000001", false), Ok(1));
        assert_eq!(parse_timestamp("2000-01-01 05:30:00+05:30", true), Ok(0));
        assert_eq!(parse_timestamp("1999-12-31 23:59:59-00:00:01", true), Ok(0));
    }

    #[test]
    fn non_iso_text_is_rejected() {
        for text in [
            "01/02/2000",
            "2000-1-1",
            "Sat Jan 01 00:00:00 2000",
            "2000-02-30",
        ] {
            assert!(parse_date(text).is_err(), "{text}");
        }
        assert!(parse_timestamp("2000-01-01 00:00:00", true).is_err());
        assert!(parse_timestamp("2000-01-01T00:00:00", false).is_err());
        assert!(parse_timestamp("2000-01-01 00:00:00.1234567", false).is_err());
    }
}
