//! Field rules for links: the same ones the DeviceLink CRD and the proxy apply. This module is the
//! one place the console checks a field, so that it can hand over to the shared spec crate whole.
//! Pure: no I/O, no clock of its own.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use jiff::Timestamp;

/// A refused field: which one, what is wrong with it, and how to put it right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}; {fix}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

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
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
        FieldError::new(
            field,
            format!("{port} is not a TCP port"),
            "use a port from 1 to 65535",
        )
    })
}

pub fn host(field: &str, host: &str) -> Result<String, FieldError> {
    let host = host.trim();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_owned());
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if dns_ok {
        Ok(host.to_ascii_lowercase())
    } else {
        let hint = if host.contains(':') {
            " (put the port in device.port, not in the host)"
        } else {
            ""
        };
        Err(FieldError::new(
            field,
            format!("{host:?} is neither an IP address nor a DNS name{hint}"),
            "write the device's address as this host reaches it, e.g. 10.20.30.40 or pump-17.plant-a.internal",
        ))
    }
}

/// Strict CIDR: a bare address or a block with host bits set is refused, saying what was meant.
pub fn cidr(field: &str, range: &str) -> Result<IpNet, FieldError> {
    let range = range.trim();
    if let Ok(addr) = range.parse::<IpAddr>() {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        return Err(FieldError::new(
            field,
            format!("{range:?} is an address, not a CIDR block"),
            format!("write {range}/{bits} to allow that one address"),
        ));
    }
    let net: IpNet = range.parse().map_err(|_| {
        FieldError::new(
            field,
            format!("{range:?} is not a CIDR block"),
            "write an address block such as 203.0.113.0/24 or 2001:db8::/32",
        )
    })?;
    if net.trunc() != net {
        return Err(FieldError::new(
            field,
            format!(
                "{range:?} has bits set past its /{} prefix",
                net.prefix_len()
            ),
            format!("did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
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
    let invalid = || {
        FieldError::new(
            field,
            format!("{value:?} is not a duration"),
            "write digits and a unit (s, m, h, d), e.g. 2h, 90m or 1h30m",
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in value.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid()),
        };
        let amount: u64 = digits.parse().map_err(|_| invalid())?;
        total = amount
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() || value.trim().is_empty() {
        return Err(invalid());
    }
    // Beyond ten years a link is a mistake, and the bound keeps instant arithmetic in range.
    if total > 10 * 366 * 86_400 {
        return Err(FieldError::new(
            field,
            format!("{value:?} is longer than ten years"),
            "give a shorter duration, e.g. 30d",
        ));
    }
    if total == 0 {
        return Err(FieldError::new(
            field,
            format!("{value:?} is zero"),
            "give a positive duration, e.g. 2h",
        ));
    }
    Ok(Duration::from_secs(total))
}

pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
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

pub fn instant(field: &str, value: &str) -> Result<Timestamp, FieldError> {
    value.trim().parse::<Timestamp>().map_err(|_| {
        FieldError::new(
            field,
            format!("{value:?} is not an RFC 3339 instant"),
            "write a UTC time such as 2026-11-25T10:00:00Z",
        )
    })
}

pub fn max_connections(field: &str, value: i64) -> Result<u32, FieldError> {
    u32::try_from(value)
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!("{value} is out of range"),
                "use a number from 1 to 1000000, or leave it out for the proxy's default",
            )
        })
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
