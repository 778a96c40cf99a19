//! Field rules for links: the same ones the DeviceLink CRD and the proxy apply. This module is the
//! one place the console checks a field, so that it can hand over to the shared spec crate whole.
//! Pure: no I/O, no clock of its own.

use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;

/// A refused field: which one, what is wrong with it, and how to put it right. The shared
/// spec's error, so the console says a mistake the way the CRD and the proxy do.
pub use devicelink_spec::SpecError as FieldError;

/// Durations written back the way they are read (`1h30m`).
pub use devicelink_spec::format_duration;

/// A link's name is a DNS-1035 label short enough to name its Kubernetes children
/// (`devicelink-<name>`), so a script works against both backends.
pub const MAX_NAME_LEN: usize = 52;

pub fn name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{name:?} is not a valid name"),
            format!(
                "use at most {MAX_NAME_LEN} lowercase letters, digits and '-', starting with a letter, e.g. pump-17-ssh"
            ),
        ))
    }
}

pub fn port(field: &str, port: i64) -> Result<u16, FieldError> {
    devicelink_spec::validate_port(field, port)
}

/// The device's host: an IP address or a DNS name, as the DeviceLink and the proxy take it.
pub fn host(field: &str, host: &str) -> Result<String, FieldError> {
    devicelink_spec::validate_device(field.trim_end_matches(".host"), host, 1)
        .map(|device| device.host)
}

/// Strict CIDR, as the DeviceLink and the proxy's links file take it (devicelink-spec).
pub fn cidr(field: &str, range: &str) -> Result<IpNet, FieldError> {
    devicelink_spec::parse_source_range(field, range)
}

pub fn source_ranges(field: &str, ranges: &[String]) -> Result<Vec<IpNet>, FieldError> {
    if ranges.is_empty() {
        return Err(FieldError::new(
            field,
            "is empty, so nobody could connect",
            "list at least one source block, e.g. [\"203.0.113.0/24\"], or set allowMyAddress",
        ));
    }
    if ranges.len() > 64 {
        return Err(FieldError::new(
            field,
            format!("has {} entries", ranges.len()),
            "list at most 64 blocks; merge neighbours into wider ones",
        ));
    }
    ranges
        .iter()
        .enumerate()
        .map(|(index, range)| cidr(&format!("{field}[{index}]"), range))
        .collect()
}

/// Durations as the CRD's pattern `^([0-9]+[smhd])+$` allows, e.g. `2h`, `90m`, `1h30m`; zero is refused.
pub fn duration(field: &str, value: &str) -> Result<Duration, FieldError> {
    devicelink_spec::parse_duration(field, value)
}

pub fn instant(field: &str, value: &str) -> Result<Timestamp, FieldError> {
    let at = devicelink_spec::parse_instant(field, value)?;
    let seconds = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_second(seconds).map_err(|_| {
        FieldError::new(
            field,
            format!("{value:?} is beyond what this console can store"),
            "write a time before the year 9999",
        )
    })
}

pub fn max_connections(field: &str, value: i64) -> Result<u32, FieldError> {
    devicelink_spec::validate_max_connections(field, value)
}

pub fn description(field: &str, value: &str) -> Result<(), FieldError> {
    if value.chars().count() > 1024 {
        return Err(FieldError::new(
            field,
            "is longer than 1024 characters",
            "shorten it; put long notes elsewhere and link to them",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_is_refused_with_its_one_address_block_as_the_fix() {
        let err = cidr("allowedSourceRanges[0]", "203.0.113.7").unwrap_err();
        assert_eq!(err.field, "allowedSourceRanges[0]");
        assert!(err.fix.contains("203.0.113.7/32"), "{err}");
    }

    #[test]
    fn host_bits_past_the_prefix_are_refused_naming_the_block_meant() {
        let err = cidr("r", "10.1.2.3/8").unwrap_err();
        assert!(err.fix.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn durations_follow_the_crd_pattern() {
        assert_eq!(duration("ttl", "1h30m").unwrap(), Duration::from_secs(5400));
        assert!(duration("ttl", "0s").is_err());
        assert!(duration("ttl", "2 hours").is_err());
        assert!(duration("ttl", "15").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn ports_and_names_outside_their_ranges_are_refused() {
        assert!(port("port", 0).is_err());
        assert!(port("port", 65536).is_err());
        assert_eq!(port("port", 22).unwrap(), 22);
        assert!(name("name", "Pump").is_err());
        assert!(name("name", "pump-17-ssh").is_ok());
        assert!(
            host("device.host", "10.0.0.1:22")
                .unwrap_err()
                .problem
                .contains("device.port")
        );
    }
}
