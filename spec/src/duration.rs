//! Durations (a TTL, an idle timeout, a connect timeout) in one grammar, the DeviceLink CRD's
//! pattern `^([0-9]+[smhd])+$`: digits and a unit (s, m, h, d), repeated, e.g. `2h`, `90m`,
//! `1h30m`. Wider grammars (`1 hour`, `500ms`, `1w`, `1M`) are refused everywhere rather than
//! accepted by the proxy and refused by the API server.

use std::time::Duration;

use crate::SpecError;

/// The longest duration accepted: 100 years, in the units the grammar has. Past it, adding the
/// duration to a clock reading could overflow; no link or timer needs more.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

const FORM: &str = "write digits and a unit (s, m, h, d), e.g. 2h, 90m or 1h30m";

/// A positive duration in the grammar above, at most [`MAX_DURATION`]. Zero is refused: a
/// link, an idle timer or a connect timeout of nothing is a mistake.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, SpecError> {
    let value = text.trim();
    let not_a_duration = || SpecError::new(field, format!("{text:?} is not a duration"), FORM);
    let too_long = || {
        SpecError::new(
            field,
            format!("{text:?} is longer than {}", format_duration(MAX_DURATION)),
            "give a shorter duration, e.g. 30d",
        )
    };
    if value.is_empty() {
        return Err(not_a_duration());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(not_a_duration()),
        };
        if digits.is_empty() {
            return Err(not_a_duration());
        }
        // Many digits are still a number, only too large a one.
        let amount: u64 = digits.parse().map_err(|_| too_long())?;
        total = amount
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(too_long)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(not_a_duration());
    }
    if total == 0 {
        return Err(SpecError::new(
            field,
            format!("{text:?} is zero"),
            "give a positive duration, e.g. 15m",
        ));
    }
    let duration = Duration::from_secs(total);
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// `duration` in the grammar [`parse_duration`] reads, largest units first (`5400s` is
/// `1h30m`). Whole seconds: a fraction of a second rounds up, so that no positive duration is
/// written as the zero that [`parse_duration`] refuses.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            out.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_resource_pattern_parse_and_format_back() {
        for (text, seconds) in [
            ("2h", 7200),
            ("90m", 5400),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("45s", 45),
            ("15m", 900),
            ("1d2h3m4s", 93_784),
            ("36500d", 36_500 * 86_400),
        ] {
            let parsed = parse_duration("f", text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.as_secs(), seconds, "{text}");
            assert_eq!(
                parse_duration("f", &format_duration(parsed)),
                Ok(parsed),
                "{text}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(
            format_duration(Duration::from_millis(1500)),
            "2s",
            "a fraction rounds up"
        );
    }

    #[test]
    fn what_the_resource_pattern_refuses_is_refused() {
        // Pattern ^([0-9]+[smhd])+$, plus what other grammars (humantime's) would take.
        for bad in [
            "", "h", "2", "2x", "-2h", "2 h", "1h 30m", "500ms", "1w", "2hours", "1.5h", "15min",
        ] {
            let err = parse_duration("spec.idleTimeout", bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("spec.idleTimeout: {bad:?} is not a duration; {FORM}")
            );
        }
    }

    #[test]
    fn zero_and_more_than_a_century_are_refused() {
        assert!(
            parse_duration("f", "0s")
                .unwrap_err()
                .problem
                .contains("is zero")
        );
        assert!(
            parse_duration("f", "0h0m")
                .unwrap_err()
                .problem
                .contains("is zero")
        );
        for long in [
            "36501d",
            "99999999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(
                parse_duration("f", long)
                    .unwrap_err()
                    .problem
                    .contains("longer than 36500d"),
                "{long}"
            );
        }
    }
}
