//! Instants (a link's expiry) in RFC 3339, as a DeviceLink's `expiresAt` (OpenAPI `date-time`)
//! and the proxy's `--expires-at` write them: `2026-11-25T10:00:00Z`, with an optional fraction
//! of a second and a `Z` or `+hh:mm`/`-hh:mm` offset. Read into and written from
//! [`SystemTime`]; callers with another clock type convert at their edge.

use std::time::{Duration, SystemTime};

use crate::SpecError;

const FORM: &str = "write an RFC 3339 time such as 2026-11-25T10:00:00Z";

/// An RFC 3339 date and time with an offset, years 0001 to 9999.
pub fn parse_instant(field: &str, text: &str) -> Result<SystemTime, SpecError> {
    let invalid = || SpecError::new(field, format!("{text:?} is not an RFC 3339 instant"), FORM);
    let seconds = rfc3339_seconds(text.trim()).ok_or_else(invalid)?;
    let (whole, nanos) = seconds;
    let at = if whole >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(whole.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(whole.unsigned_abs()))
    };
    at.and_then(|at| at.checked_add(Duration::from_nanos(u64::from(nanos))))
        .ok_or_else(invalid)
}

/// `at` in UTC, `YYYY-MM-DDTHH:MM:SSZ`, with the fraction of a second only when there is one
/// (so that [`parse_instant`] reads back the same instant).
pub fn format_instant(at: SystemTime) -> String {
    let (seconds, nanos) = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let mut seconds = -(before.as_secs() as i64);
            let mut nanos = before.subsec_nanos();
            if nanos > 0 {
                seconds -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (seconds, nanos)
        }
    };
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let in_day = seconds.rem_euclid(86_400);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    );
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Seconds since the Unix epoch and nanoseconds, if `text` is RFC 3339's `date-time`.
fn rfc3339_seconds(text: &str) -> Option<(i64, u32)> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let separator = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if year < 1
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0_u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = format!("{:0<9}", &fraction[..digits]).parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let value = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let (hours, minutes) = (value(*h1, *h2), value(*m1, *m2));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((local - offset, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    }

    #[test]
    fn utc_instants_parse_and_format_back() {
        for (text, seconds) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-11-25T10:00:00Z", 1_795_600_800),
            ("2000-02-29T23:59:59Z", 951_868_799),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
        ] {
            assert_eq!(parse_instant("f", text), Ok(at(seconds)), "{text}");
            assert_eq!(format_instant(at(seconds)), text);
        }
    }

    #[test]
    fn offsets_fractions_and_lowercase_are_rfc_3339_too() {
        let utc = at(1_795_600_800);
        assert_eq!(parse_instant("f", "2026-11-25T12:00:00+02:00"), Ok(utc));
        assert_eq!(parse_instant("f", "2026-11-25T05:30:00-04:30"), Ok(utc));
        assert_eq!(parse_instant("f", "2026-11-25t10:00:00z"), Ok(utc));
        let fraction = parse_instant("f", "2026-11-25T10:00:00.25Z").unwrap();
        assert_eq!(fraction, utc + Duration::from_millis(250));
        assert_eq!(format_instant(fraction), "2026-11-25T10:00:00.25Z");
        assert_eq!(parse_instant("f", &format_instant(fraction)), Ok(fraction));
    }

    #[test]
    fn instants_before_1970_format_back() {
        let text = "1969-12-31T23:59:59.5Z";
        let before = parse_instant("f", text).unwrap();
        assert_eq!(format_instant(before), text);
    }

    #[test]
    fn what_is_not_rfc_3339_is_refused_naming_the_form() {
        for bad in [
            "tomorrow",
            "2026-11-25",
            "2026-11-25T10:00:00",
            "2026-11-25 10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:60Z",
            "2026-13-01T00:00:00Z",
            "2026-11-25T10:00:00+2:00",
            "2026-11-25T10:00:00.Z",
            "0000-01-01T00:00:00Z",
            "+2026-11-25T10:00:00Z",
        ] {
            let err = parse_instant("spec.expiresAt", bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("spec.expiresAt: {bad:?} is not an RFC 3339 instant; {FORM}")
            );
        }
    }
}
