//! The PROXY protocol header (HAProxy's, v1 text and v2 binary) a load balancer puts before a
//! client's bytes, saying whose connection it is. On a link with `proxyProtocol` the proxy reads
//! it first, within [`HEADER_DEADLINE`] and [`MAX_HEADER`] bytes, and judges the client by the
//! address it carries; it reads exactly the header, so what follows stays in the socket for
//! either data plane. A LOCAL header (v2, or v1 `UNKNOWN`) is the balancer's own health check:
//! answered by closing, never carried to the device.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{io::AsyncReadExt as _, net::TcpStream};

/// How long a connection may take to send its header.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The largest header accepted: a v1 line is at most 107 bytes; a v2 header is 16 bytes, the
/// addresses (36 for TCP over IPv6) and TLVs, which balancers keep short.
pub const MAX_HEADER: usize = 536;

const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A connection relayed for `source` (the client) to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (a health check): no client behind it.
    Local,
}

/// Why a header was refused; also the `reason` label of
/// `devicelink_proxy_protocol_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header (the link expects one before anything else)")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    Oversized,
    #[error("PROXY protocol header for a protocol other than TCP over IPv4 or IPv6")]
    Unsupported,
    #[error("no complete PROXY protocol header within {} s", HEADER_DEADLINE.as_secs())]
    Timeout,
    #[error("the connection ended or failed before its PROXY protocol header was complete")]
    Closed,
}

impl HeaderError {
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Malformed,
        Self::Oversized,
        Self::Unsupported,
        Self::Timeout,
        Self::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::Unsupported => "unsupported",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
        }
    }
}

/// Reads exactly one header from `stream` (nothing after it), within [`HEADER_DEADLINE`];
/// returns it and its length in bytes.
pub async fn read_header(stream: &mut TcpStream) -> Result<(Header, usize), HeaderError> {
    tokio::time::timeout(HEADER_DEADLINE, read_exact_header(stream))
        .await
        .unwrap_or(Err(HeaderError::Timeout))
}

async fn read_exact_header(stream: &mut TcpStream) -> Result<(Header, usize), HeaderError> {
    let closed = |_| HeaderError::Closed;
    // Both versions are told apart by their first 5 bytes, and no header is shorter than 15.
    let mut header = vec![0u8; 5];
    stream.read_exact(&mut header).await.map_err(closed)?;
    if header == b"PROXY" {
        // v1: a line; read byte by byte so that not one byte after it is taken.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(HeaderError::Oversized);
            }
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.map_err(closed)?;
            header.push(byte[0]);
        }
        return parse_v1(&header).map(|parsed| (parsed, header.len()));
    }
    if header[..] != V2_SIGNATURE[..5] {
        return Err(HeaderError::Missing);
    }
    header.resize(16, 0);
    stream.read_exact(&mut header[5..]).await.map_err(closed)?;
    let length = v2_length(&header)?;
    if 16 + length > MAX_HEADER {
        return Err(HeaderError::Oversized);
    }
    header.resize(16 + length, 0);
    stream.read_exact(&mut header[16..]).await.map_err(closed)?;
    parse_v2(&header).map(|parsed| (parsed, header.len()))
}

/// A v1 line, `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    if line.len() > V1_MAX {
        return Err(HeaderError::Oversized);
    }
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.strip_suffix("\r\n"))
        .ok_or(HeaderError::Malformed)?;
    let mut words = text.split(' ');
    if words.next() != Some("PROXY") {
        return Err(HeaderError::Malformed);
    }
    let family = words.next().ok_or(HeaderError::Malformed)?;
    if family == "UNKNOWN" {
        // The sender could not say (or it is its own connection): nothing to judge.
        return Ok(Header::Local);
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(HeaderError::Unsupported),
    };
    let mut next = || words.next().ok_or(HeaderError::Malformed);
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if words.next().is_some() {
        return Err(HeaderError::Malformed);
    }
    let address = |text: &str| -> Result<IpAddr, HeaderError> {
        let ip: IpAddr = text.parse().map_err(|_| HeaderError::Malformed)?;
        if ip.is_ipv6() == v6 {
            Ok(ip)
        } else {
            Err(HeaderError::Malformed)
        }
    };
    let port = |text: &str| -> Result<u16, HeaderError> {
        // Decimal without a leading zero or sign, as the specification writes them.
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return Err(HeaderError::Malformed);
        }
        text.parse().map_err(|_| HeaderError::Malformed)
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(address(src)?, port(sport)?),
        destination: SocketAddr::new(address(dst)?, port(dport)?),
    })
}

/// The length of what follows a v2 header's 16 bytes.
fn v2_length(header: &[u8]) -> Result<usize, HeaderError> {
    if header.len() < 16 || header[..12] != V2_SIGNATURE {
        return Err(HeaderError::Missing);
    }
    Ok(usize::from(u16::from_be_bytes([header[14], header[15]])))
}

/// A whole v2 header: signature, version and command, family and protocol, length, addresses
/// (TLVs after them are ignored).
pub fn parse_v2(header: &[u8]) -> Result<Header, HeaderError> {
    let length = v2_length(header)?;
    if header.len() != 16 + length {
        return Err(HeaderError::Malformed);
    }
    if header.len() > MAX_HEADER {
        return Err(HeaderError::Oversized);
    }
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Malformed);
    }
    let body = &header[16..];
    match command {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(HeaderError::Malformed),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match header[13] {
        // TCP over IPv4.
        0x11 if length >= 12 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6.
        0x21 if length >= 36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        0x11 | 0x21 => Err(HeaderError::Malformed),
        _ => Err(HeaderError::Unsupported),
    }
}

/// A v1 header for `source` to `destination` (for tests and tools).
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
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

/// A v2 PROXY header for `source` to `destination` (for tests and tools).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x21);
    let mut body = Vec::new();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            header.push(0x11);
            body.extend_from_slice(&src.octets());
            body.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            header.push(0x21);
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(src).octets());
            body.extend_from_slice(&v6(dst).octets());
        }
    }
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6_carry_the_client() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2222\r\n"),
            Ok(Header::Proxied {
                source: addr("203.0.113.7:40000"),
                destination: addr("10.0.0.1:2222")
            })
        );
        let header = v1_header(addr("[2001:db8::7]:5"), addr("[fd00::1]:22"));
        assert_eq!(
            parse_v1(&header),
            Ok(Header::Proxied {
                source: addr("[2001:db8::7]:5"),
                destination: addr("[fd00::1]:22")
            })
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"),
            Ok(Header::Local)
        );
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2222\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40000\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2222 9\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 2222\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 040000 2222\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 2222\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 4 2\r\n",
        ] {
            assert_eq!(
                parse_v1(bad),
                Err(HeaderError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_v1(b"PROXY UDP4 203.0.113.7 10.0.0.1 4 2\r\n"),
            Err(HeaderError::Unsupported)
        );
    }

    #[test]
    fn v2_proxy_and_local_commands() {
        let header = v2_header(addr("203.0.113.7:40000"), addr("10.0.0.1:2222"));
        assert_eq!(header.len(), 16 + 12);
        assert_eq!(
            parse_v2(&header),
            Ok(Header::Proxied {
                source: addr("203.0.113.7:40000"),
                destination: addr("10.0.0.1:2222")
            })
        );
        let header = v2_header(addr("[2001:db8::7]:5"), addr("[fd00::1]:22"));
        assert_eq!(header.len(), 16 + 36);
        assert_eq!(
            parse_v2(&header),
            Ok(Header::Proxied {
                source: addr("[2001:db8::7]:5"),
                destination: addr("[fd00::1]:22")
            })
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&local), Ok(Header::Local));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_bad_headers_refused() {
        let mut header = v2_header(addr("203.0.113.7:1"), addr("10.0.0.1:2"));
        header.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]); // a NOOP TLV
        header[15] += 4;
        assert!(matches!(parse_v2(&header), Ok(Header::Proxied { .. })));

        let mut wrong_version = v2_header(addr("203.0.113.7:1"), addr("10.0.0.1:2"));
        wrong_version[12] = 0x11;
        assert_eq!(parse_v2(&wrong_version), Err(HeaderError::Malformed));
        let mut short = v2_header(addr("203.0.113.7:1"), addr("10.0.0.1:2"));
        short[15] = 4;
        short.truncate(20);
        assert_eq!(parse_v2(&short), Err(HeaderError::Malformed));
        let mut udp = v2_header(addr("203.0.113.7:1"), addr("10.0.0.1:2"));
        udp[13] = 0x12;
        assert_eq!(parse_v2(&udp), Err(HeaderError::Unsupported));
        let mut signature = v2_header(addr("203.0.113.7:1"), addr("10.0.0.1:2"));
        signature[3] = b'x';
        assert_eq!(parse_v2(&signature), Err(HeaderError::Missing));
    }
}
