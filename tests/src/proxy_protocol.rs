//! PROXY protocol headers as a load balancer writes them (HAProxy's specification, v1 text and
//! v2 binary), for a test client that puts one before its bytes. Written here from the
//! specification, apart from the proxy's own reader, so the two check each other.

use std::net::{IpAddr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`.
pub fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 PROXY command for TCP over the family of `source` (both addresses of one family).
pub fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            body.extend_from_slice(&src.octets());
            body.extend_from_slice(&dst.octets());
            0x11
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            body.extend_from_slice(&src.octets());
            body.extend_from_slice(&dst.octets());
            0x21
        }
        _ => panic!("one address family for both ends"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    v2_raw(0x21, family, &body)
}

/// A v2 LOCAL command (a balancer's health check), no addresses.
pub fn v2_local() -> Vec<u8> {
    v2_raw(0x20, 0x00, &[])
}

/// A v2 header with the given version/command and family bytes around `body`.
pub fn v2_raw(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(version_command);
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(body);
    header
}
