//! How many connections a link may carry.

use crate::SpecError;

/// The most connections one link may carry at once. The proxy's splice map holds two sockets
/// per connection and is sized for this many (the proxy checks, when it is compiled, that its
/// `MAX_SPLICED_SOCKETS` holds twice this); a larger limit would be a promise the kernel map
/// cannot keep.
pub const MAX_CONNECTIONS: u32 = 4096;

/// A connection limit (`maxConnections`, `maxConnectionsPerSource`), 1 to [`MAX_CONNECTIONS`].
pub fn validate_max_connections(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
        .ok_or_else(|| out_of_range(field, &value.to_string()))
}

/// A connection limit written as text (a flag's value); see [`validate_max_connections`].
pub fn parse_max_connections(field: &str, text: &str) -> Result<u32, SpecError> {
    match text.trim().parse::<i64>() {
        Ok(value) => validate_max_connections(field, value),
        Err(_) => Err(out_of_range(field, &format!("{text:?}"))),
    }
}

/// The most new connections a second a link may allow one source (`connectRatePerSource`);
/// beyond this the limit would not limit anything a device could bear.
pub const MAX_CONNECT_RATE: u32 = 10_000;

/// A per-source connect rate (`connectRatePerSource`): new connections a second, 0 (no limit)
/// to [`MAX_CONNECT_RATE`].
pub fn validate_connect_rate(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|n| *n <= MAX_CONNECT_RATE)
        .ok_or_else(|| {
            SpecError::new(
                field,
                format!("{value} is not a number of connections a second from 0 to {MAX_CONNECT_RATE}"),
                "use a whole number: 0 for no limit, e.g. 10 to let one source open 10 a second (a burst of twice as many passes), or leave it out for the default",
            )
        })
}

fn out_of_range(field: &str, shown: &str) -> SpecError {
    SpecError::new(
        field,
        format!("{shown} is not a number of connections from 1 to {MAX_CONNECTIONS}"),
        format!(
            "use a whole number from 1 (0 would refuse everyone) to at most {MAX_CONNECTIONS} (what the proxy's splice map holds), or leave it out for the default"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_rates_are_0_to_the_maximum() {
        assert_eq!(validate_connect_rate("f", 0), Ok(0));
        assert_eq!(validate_connect_rate("f", 10), Ok(10));
        let err = validate_connect_rate("spec.connectRatePerSource", -1).unwrap_err();
        assert_eq!(err.field, "spec.connectRatePerSource");
        assert!(validate_connect_rate("f", 10_001).is_err());
    }

    #[test]
    fn limits_are_1_to_max_connections_in_both_forms() {
        assert_eq!(validate_max_connections("f", 1), Ok(1));
        assert_eq!(validate_max_connections("f", 4096), Ok(4096));
        assert_eq!(parse_max_connections("f", "4096"), Ok(4096));
        for value in [0, -1, 4097, 1_000_000] {
            let from_flag =
                parse_max_connections("--max-connections", &value.to_string()).unwrap_err();
            let from_resource = validate_max_connections("spec.maxConnections", value).unwrap_err();
            assert_eq!(from_flag.reason(), from_resource.reason(), "{value}");
            assert!(from_flag.fix.contains("at most 4096"), "{from_flag}");
        }
        assert!(
            parse_max_connections("f", "lots")
                .unwrap_err()
                .problem
                .contains("\"lots\"")
        );
    }
}
