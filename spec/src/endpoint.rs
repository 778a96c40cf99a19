//! Where a link listens and the device it leads to.
//!
//! A device is written two ways: as `HOST:PORT` in one string (the proxy's `--device`, the links
//! file's `device`) or as a `{host, port}` pair (a DeviceLink's `spec.device`). Both go through
//! the same host and port checks, so the same mistake gets the same words.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use crate::SpecError;

const DEVICE_FORMS: &str =
    "write HOST:PORT, e.g. 10.20.30.40:22, [fd00::2]:22 or pump-17.plant-a.internal:22";

/// The device a link leads to: kept as written (a DNS name is resolved at each connection),
/// with IPv6 addresses unbracketed and DNS names lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceAddress {
    pub host: String,
    pub port: u16,
}

/// `HOST:PORT`, with an IPv6 host in brackets: the form [`parse_device_address`] reads.
impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A device given as `{host, port}` under `field` (e.g. `spec.device`): errors name
/// `field.host` or `field.port`.
pub fn validate_device(field: &str, host: &str, port: i64) -> Result<DeviceAddress, SpecError> {
    let port_field = format!("{field}.port");
    let host = validate_host(&format!("{field}.host"), host).map_err(|mut err| {
        if host.contains(':') {
            err.problem
                .push_str(&format!(" (put the port in {port_field}, not in the host)"));
        }
        err
    })?;
    Ok(DeviceAddress {
        host,
        port: validate_port(&port_field, port)?,
    })
}

/// A device given as one string, `HOST:PORT` or `[IPV6]:PORT`; errors name `field`.
pub fn parse_device_address(field: &str, text: &str) -> Result<DeviceAddress, SpecError> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(|| no_port(field, text))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(SpecError::new(
                field,
                format!("{host:?} in brackets is not an IPv6 address"),
                DEVICE_FORMS,
            ));
        }
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| no_port(field, text))?;
        if host.contains(':') {
            return Err(SpecError::new(
                field,
                format!("{text:?} has an IPv6 address without brackets"),
                "put an IPv6 address in brackets, e.g. [fd00::2]:22",
            ));
        }
        (host, port)
    };
    Ok(DeviceAddress {
        host: validate_host(field, host)?,
        port: parse_port(field, port)?,
    })
}

/// The address and port a link listens on, `ADDR:PORT` (`0.0.0.0:2222`, `[::]:2222`).
pub fn parse_listen(field: &str, text: &str) -> Result<SocketAddr, SpecError> {
    let text = text.trim();
    let addr: SocketAddr = text.parse().map_err(|_| {
        SpecError::new(
            field,
            format!("{text:?} is not an ADDR:PORT to listen on"),
            "write an IP address and a port, e.g. 0.0.0.0:2222 or [::]:2222",
        )
    })?;
    validate_port(field, i64::from(addr.port()))?;
    Ok(addr)
}

/// A TCP port, 1 to 65535.
pub fn validate_port(field: &str, port: i64) -> Result<u16, SpecError> {
    u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| bad_port(field, &port.to_string()))
}

fn parse_port(field: &str, text: &str) -> Result<u16, SpecError> {
    match text.parse::<i64>() {
        Ok(port) => validate_port(field, port),
        Err(_) => Err(bad_port(field, &format!("{text:?}"))),
    }
}

fn bad_port(field: &str, shown: &str) -> SpecError {
    SpecError::new(
        field,
        format!("port {shown} is not a TCP port"),
        "use a port from 1 to 65535",
    )
}

fn no_port(field: &str, text: &str) -> SpecError {
    SpecError::new(field, format!("{text:?} has no port"), DEVICE_FORMS)
}

/// An IP address or a DNS name, as the proxy reaches the device. A name whose last label is
/// all digits is refused: no top-level domain is, so it is a mistyped IPv4 address
/// (`10.0.0.300`), not a name to look up.
fn validate_host(field: &str, host: &str) -> Result<String, SpecError> {
    let host = host.trim();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(addr) = bare.parse::<IpAddr>() {
        return Ok(addr.to_string());
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()));
    if name_ok {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(SpecError::new(
            field,
            format!("{host:?} is neither an IP address nor a DNS name"),
            "write the device's address as the proxy reaches it, e.g. 10.20.30.40, fd00::2 or pump-17.plant-a.internal",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(host: &str, port: u16) -> DeviceAddress {
        DeviceAddress {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_device_string_takes_ipv4_bracketed_ipv6_and_names() {
        assert_eq!(
            parse_device_address("d", "10.0.0.2:22"),
            Ok(device("10.0.0.2", 22))
        );
        assert_eq!(
            parse_device_address("d", "[fd00::2]:22"),
            Ok(device("fd00::2", 22))
        );
        assert_eq!(
            parse_device_address("d", "Pump-17.Plant:5900"),
            Ok(device("pump-17.plant", 5900))
        );
        assert_eq!(device("fd00::2", 22).to_string(), "[fd00::2]:22");
        assert_eq!(device("pump-17.plant", 22).to_string(), "pump-17.plant:22");
    }

    #[test]
    fn a_device_pair_takes_the_same_hosts() {
        assert_eq!(
            validate_device("spec.device", "10.20.30.40", 22),
            Ok(device("10.20.30.40", 22))
        );
        assert_eq!(
            validate_device("spec.device", "2001:DB8::7", 3389),
            Ok(device("2001:db8::7", 3389))
        );
        assert_eq!(
            validate_device("spec.device", "[2001:db8::7]", 1),
            Ok(device("2001:db8::7", 1))
        );
        assert_eq!(
            validate_device("spec.device", "pump-17.plant-a.internal", 65535),
            Ok(device("pump-17.plant-a.internal", 65535))
        );
    }

    #[test]
    fn the_same_bad_port_or_host_reads_the_same_in_both_forms() {
        for (text, host, port) in [
            ("10.0.0.2:0", "10.0.0.2", 0),
            ("10.0.0.2:70000", "10.0.0.2", 70000),
            ("pump_17:22", "pump_17", 22),
            ("10.0.0.300:22", "10.0.0.300", 22),
            ("-pump:22", "-pump", 22),
        ] {
            let from_string = parse_device_address("--device", text).unwrap_err();
            let from_pair = validate_device("spec.device", host, port).unwrap_err();
            assert_eq!(from_string.reason(), from_pair.reason(), "{text}");
        }
        assert_eq!(
            validate_device("spec.device", "10.0.0.2", 0)
                .unwrap_err()
                .to_string(),
            "spec.device.port: port 0 is not a TCP port; use a port from 1 to 65535"
        );
        assert_eq!(
            validate_device("spec.device", "pump_17", 22)
                .unwrap_err()
                .field,
            "spec.device.host"
        );
    }

    #[test]
    fn a_device_string_without_port_or_brackets_says_the_form() {
        assert!(
            parse_device_address("d", "10.0.0.2")
                .unwrap_err()
                .problem
                .contains("has no port")
        );
        assert!(
            parse_device_address("d", "fd00::2:22")
                .unwrap_err()
                .fix
                .contains("brackets")
        );
        assert!(
            parse_device_address("d", "[pump]:22")
                .unwrap_err()
                .problem
                .contains("not an IPv6 address")
        );
        assert!(
            parse_device_address("d", "10.0.0.2:ssh")
                .unwrap_err()
                .problem
                .contains("port \"ssh\"")
        );
        assert!(
            parse_device_address("d", ":22").is_err(),
            "the host is required"
        );
    }

    #[test]
    fn a_host_with_a_port_in_it_says_where_the_port_goes() {
        let err = validate_device("spec.device", "10.20.30.40:22", 22).unwrap_err();
        assert_eq!(err.field, "spec.device.host");
        assert!(
            err.problem.contains("put the port in spec.device.port"),
            "{err}"
        );
    }

    #[test]
    fn a_listen_address_needs_an_ip_and_a_port_from_1() {
        assert_eq!(
            parse_listen("l", "[::]:2222"),
            Ok("[::]:2222".parse().unwrap())
        );
        assert_eq!(
            parse_listen("l", "0.0.0.0:1"),
            Ok("0.0.0.0:1".parse().unwrap())
        );
        assert!(
            parse_listen("--listen", "0.0.0.0:0")
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
        assert!(
            parse_listen("l", "localhost:22")
                .unwrap_err()
                .fix
                .contains("[::]:2222")
        );
        assert!(parse_listen("l", "2222").is_err());
    }

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!(validate_port("p", 1), Ok(1));
        assert_eq!(validate_port("p", 65535), Ok(65535));
        for port in [0, -1, 65536, i64::MAX] {
            assert!(
                validate_port("p", port)
                    .unwrap_err()
                    .fix
                    .contains("1 to 65535")
            );
        }
    }
}
