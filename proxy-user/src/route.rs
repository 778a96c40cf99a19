//! Quick ACKs toward the device for spliced connections only, for the life of the proxy (eBPF
//! mode).
//!
//! Why: a socket whose bytes the splice takes (`tcp_read_skb`) is not read by anyone, so the
//! ACK a reader's `recvmsg` would send when it empties the queue never comes; TCP falls back to
//! delayed ACKs, in ping-pong mode once the socket also sends (a VNC viewer's requests). A
//! device that sends bursts (VNC or RDP frames) under BBR then holds back its next bytes until a
//! late ACK arrives: stalls of tens of milliseconds on many frames. Capping the delay
//! (`TCP_DELACK_MAX_US`, 8 ms at the least) does not remove them; quick-ACK mode, which only a
//! route's `quickack` metric turns on for good, does (docs/data-plane.md).
//!
//! Only for spliced sockets: a connection the proxy reads (carried in user space, or moved to the
//! copy) ACKs as a reader does, and an ACK for every segment there costs the device and the
//! copy (docs/benchmarks.md). TCP takes the metric from the socket's route when it routes, so
//! the route is chosen by the socket's mark: a host route to the device, copied from the route
//! the kernel picks for it now plus that metric, goes into a table of the proxy's own
//! ([`QUICKACK_TABLE`]), and a rule sends sockets marked [`QUICKACK_MARK`] there. The splice
//! marks a device socket while the kernel carries it and clears the mark when user space takes
//! it; changing a socket's mark makes the kernel route it again at its next segment. Nothing
//! else in the namespace is routed differently; the table and the rule go when the proxy stops.
//!
//! Plain rtnetlink (`RTM_GETROUTE`, `RTM_NEWROUTE`, `RTM_DELROUTE`, `RTM_NEWRULE`,
//! `RTM_DELRULE`): the proxy image has no `ip`.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tracing::{info, warn};

use libc::{
    RT_SCOPE_LINK, RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE, RT_TABLE_UNSPEC, RTA_DST, RTA_GATEWAY,
    RTA_METRICS, RTA_OIF, RTA_PREFSRC, RTA_TABLE, RTA_VIA, RTM_DELROUTE, RTM_DELRULE, RTM_GETROUTE,
    RTM_NEWROUTE, RTM_NEWRULE, RTN_UNICAST,
};

const NLMSG_HDR_LEN: usize = size_of::<libc::nlmsghdr>();
/// `struct rtmsg` (family, dst_len, src_len, tos, table, protocol, scope, type, flags): libc
/// does not define it.
const RTMSG_LEN: usize = 12;

// libc types these as `c_int`; in a netlink header they are 16-bit fields.
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLM_F_REPLACE: u16 = libc::NLM_F_REPLACE as u16;
const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;

/// The route metric that turns quick-ACK mode on (`RTAX_QUICKACK` in `linux/rtnetlink.h`): libc
/// does not define the `RTAX_*` metrics.
const RTAX_QUICKACK: u16 = 15;
/// A next hop on the link even if no route makes it reachable (`RTNH_F_ONLINK` in
/// `linux/rtnetlink.h`): libc does not define the `RTNH_F_*` flags.
const RTNH_F_ONLINK: u32 = 4;
/// The protocol the proxy's routes and rule are marked with (`ip route` and `ip rule` show
/// `proto 201`), so that what a killed proxy left (a container restart keeps the pod's
/// namespace) is recognised and taken over. Unassigned in iproute2's `rt_protos`.
const RTPROT_DEVICELINK: u8 = 201;

/// The routing table that holds the quick-ACK routes (`ip route show table 2010`). Only the
/// rule below leads there, so its routes change nothing for unmarked sockets.
pub const QUICKACK_TABLE: u32 = 2010;
/// The socket mark of a device socket the kernel splices (`ss -e` shows `fwmark:0x2010`).
/// Clear of the bits CNIs and kube-proxy mark with (0x0f00, 0x4000, 0x8000, 0xffff0000).
pub const QUICKACK_MARK: u32 = 0x2010;
/// The rule's place: after rules an administrator adds at the usual low numbers (so their
/// policy routing still decides where marked sockets go), before `main` (32766).
const QUICKACK_RULE_PRIORITY: u32 = 32000;

// `linux/fib_rules.h`, which libc does not cover.
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_PROTOCOL: u16 = 21;
const FR_ACT_TO_TBL: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel has no route to {0}: {1}")]
    NoRoute(IpAddr, io::Error),
    #[error("{0} is not reached through a unicast route (type {1}), e.g. it is local")]
    NotUnicast(IpAddr, u8),
    #[error("unexpected netlink answer: {0}")]
    Malformed(&'static str),
}

/// A quick-ACK route to one device address in [`QUICKACK_TABLE`]; deleted on drop.
#[derive(Debug)]
pub struct QuickAckRoute {
    addr: IpAddr,
}

impl QuickAckRoute {
    /// Adds a host route to `addr` with `quickack 1` to [`QUICKACK_TABLE`], copied from the
    /// route the kernel uses for it now (interface, gateway, preferred source, metrics). One
    /// an earlier run left there is taken over.
    pub fn add(addr: IpAddr) -> Result<Self, RouteError> {
        let socket = Netlink::open()?;
        let found = socket.get_route(addr)?;
        if found.route_type != RTN_UNICAST {
            return Err(RouteError::NotUnicast(addr, found.route_type));
        }
        match socket.add_route(addr, &found, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => info!(
                device = %addr,
                table = QUICKACK_TABLE,
                "added a quick-ACK route to the device for spliced connections (the splice does not ACK as promptly as a read; see --device-quickack)"
            ),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                // Left by an earlier run of the proxy that could not remove it.
                socket.add_route(addr, &found, NLM_F_REPLACE)?;
                info!(device = %addr, "took over the quick-ACK route an earlier run left");
            }
            Err(err) => return Err(err.into()),
        }
        Ok(Self { addr })
    }
}

impl Drop for QuickAckRoute {
    fn drop(&mut self) {
        let removed = Netlink::open()
            .and_then(|socket| socket.request(&del_route_message(self.addr), RTM_DELROUTE));
        match removed {
            Ok(()) => info!(device = %self.addr, "removed the device's quick-ACK route"),
            // Someone removed it already: nothing left behind either way.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(err) => {
                warn!(device = %self.addr, %err, "could not remove the device's quick-ACK route")
            }
        }
    }
}

/// An address family the quick-ACK rule is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn af(self) -> u8 {
        match self {
            Self::V4 => libc::AF_INET as u8,
            Self::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// The rule that leads sockets marked [`QUICKACK_MARK`] of one family to [`QUICKACK_TABLE`];
/// deleted on drop.
#[derive(Debug)]
pub struct QuickAckRule {
    family: Family,
}

impl QuickAckRule {
    /// Adds the rule for `family`; one an earlier run left is taken over.
    pub fn add(family: Family) -> Result<Self, RouteError> {
        let socket = Netlink::open()?;
        match socket.request(
            &rule_message(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, family),
            RTM_NEWRULE,
        ) {
            Ok(()) => info!(
                ?family,
                mark = QUICKACK_MARK,
                table = QUICKACK_TABLE,
                priority = QUICKACK_RULE_PRIORITY,
                "added the rule that leads spliced device sockets to their quick-ACK routes"
            ),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                info!(?family, "took over the quick-ACK rule an earlier run left")
            }
            Err(err) => return Err(err.into()),
        }
        Ok(Self { family })
    }
}

impl Drop for QuickAckRule {
    fn drop(&mut self) {
        let removed = Netlink::open().and_then(|socket| {
            socket.request(&rule_message(RTM_DELRULE, 0, self.family), RTM_DELRULE)
        });
        match removed {
            Ok(()) => info!(family = ?self.family, "removed the quick-ACK rule"),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => warn!(family = ?self.family, %err, "could not remove the quick-ACK rule"),
        }
    }
}

/// What `RTM_GETROUTE` said about the route to an address.
#[derive(Debug, Default, PartialEq, Eq)]
struct FoundRoute {
    dst_len: u8,
    protocol: u8,
    route_type: u8,
    table: u32,
    oif: Option<u32>,
    /// Raw payloads, copied as they are (4 or 16 bytes; `RTA_VIA` for an IPv6 next hop of an
    /// IPv4 route).
    gateway: Option<Vec<u8>>,
    via: Option<Vec<u8>>,
    prefsrc: Option<Vec<u8>>,
    /// The nested `RTAX_*` attributes of `RTA_METRICS`, raw.
    metrics: Vec<u8>,
}

struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers; its only effect is a new fd, checked below and
        // owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is open; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Replies to a request that never comes back must not hang the proxy's start.
        crate::sockopt::set_receive_timeout(&fd, std::time::Duration::from_secs(2))?;
        Ok(Self { fd })
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: the fd is open while `self` is; the kernel reads at most `message.len()` bytes
        // from the live slice `message` (a netlink socket sends to the kernel by default).
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn receive(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 32 << 10];
        // SAFETY: the fd is open while `self` is; the kernel writes at most `buf.len()` bytes into
        // `buf`, which is initialised and that long.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Adds (with `flags`: create-only or replace) the quick-ACK host route for `addr` copied
    /// from `found`.
    fn add_route(&self, addr: IpAddr, found: &FoundRoute, flags: u16) -> io::Result<()> {
        let mut message = new_route_message(addr, found, flags);
        let added = self.request(&message, RTM_NEWROUTE);
        match &added {
            Err(err)
                if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENETUNREACH))
                    && found.gateway.is_some() =>
            {
                // A gateway that no route makes reachable, as CNIs that route pods through
                // `default via 169.254.1.1 dev eth0 onlink` have it: say so too.
                set_rtm_flags(&mut message, RTNH_F_ONLINK);
                self.request(&message, RTM_NEWROUTE)
            }
            _ => added,
        }
    }

    /// Sends a request that asks for an acknowledgement, and returns the kernel's verdict.
    fn request(&self, message: &[u8], kind: u16) -> io::Result<()> {
        self.send(message)?;
        let reply = self.receive()?;
        for (msg_type, payload) in messages(&reply) {
            if msg_type == NLMSG_ERROR {
                let code = error_code(payload)
                    .ok_or_else(|| io::Error::other("short netlink error message"))?;
                return if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
        }
        Err(io::Error::other(format!(
            "no acknowledgement for netlink request {kind}"
        )))
    }

    /// The route the kernel would use to reach `addr` (its result: interface, gateway, source).
    fn get_route(&self, addr: IpAddr) -> Result<FoundRoute, RouteError> {
        self.query(addr, get_route_message(addr))
    }

    fn query(&self, addr: IpAddr, message: Vec<u8>) -> Result<FoundRoute, RouteError> {
        self.send(&message)?;
        let reply = self.receive()?;
        for (msg_type, payload) in messages(&reply) {
            match msg_type {
                RTM_NEWROUTE => {
                    return parse_route(payload)
                        .ok_or(RouteError::Malformed("short route message"));
                }
                NLMSG_ERROR => {
                    let code = error_code(payload).unwrap_or(-libc::EPROTO);
                    return Err(RouteError::NoRoute(
                        addr,
                        io::Error::from_raw_os_error(-code),
                    ));
                }
                NLMSG_DONE => break,
                _ => {}
            }
        }
        Err(RouteError::Malformed("no route message in the answer"))
    }
}

/// The (negative errno, or 0) code an `NLMSG_ERROR` message carries.
fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// The (type, payload) of each netlink message in `buf`.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let msg_type = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return None;
        }
        let payload = &rest[NLMSG_HDR_LEN..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((msg_type, payload))
    })
}

/// The (type, payload) of each route attribute in `buf`.
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(rest[0..2].try_into().expect("2 bytes")) as usize;
        let kind = u16::from_ne_bytes(rest[2..4].try_into().expect("2 bytes"));
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((kind, payload))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn parse_route(payload: &[u8]) -> Option<FoundRoute> {
    let header = payload.get(..RTMSG_LEN)?;
    let mut found = FoundRoute {
        dst_len: header[1],
        protocol: header[5],
        route_type: header[7],
        table: u32::from(header[4]),
        ..FoundRoute::default()
    };
    for (kind, value) in attributes(&payload[RTMSG_LEN..]) {
        match kind {
            RTA_TABLE if value.len() == 4 => {
                found.table = u32::from_ne_bytes(value.try_into().expect("4 bytes"));
            }
            RTA_OIF if value.len() == 4 => {
                found.oif = Some(u32::from_ne_bytes(value.try_into().expect("4 bytes")));
            }
            RTA_GATEWAY => found.gateway = Some(value.to_vec()),
            RTA_VIA => found.via = Some(value.to_vec()),
            RTA_PREFSRC => found.prefsrc = Some(value.to_vec()),
            RTA_METRICS => found.metrics = value.to_vec(),
            _ => {}
        }
    }
    Some(found)
}

/// Builds one netlink message: header, `rtmsg`, attributes.
struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    fn new(kind: u16, flags: u16, rtmsg: [u8; RTMSG_LEN]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.extend_from_slice(&rtmsg);
        Self { buf }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        push_attribute(&mut self.buf, kind, value);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Rewrites the `rtm_flags` of a built route message.
fn set_rtm_flags(message: &mut [u8], flags: u32) {
    message[NLMSG_HDR_LEN + 8..NLMSG_HDR_LEN + 12].copy_from_slice(&flags.to_ne_bytes());
}

fn push_attribute(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + align(len) - len, 0);
}

fn family_and_bytes(addr: IpAddr) -> (u8, u8, Vec<u8>) {
    match addr {
        IpAddr::V4(v4) => (libc::AF_INET as u8, 32, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, 128, v6.octets().to_vec()),
    }
}

/// The `rtmsg` header: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
fn rtmsg(family: u8, dst_len: u8, table: u8, protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
    [
        family, dst_len, 0, 0, table, protocol, scope, kind, 0, 0, 0, 0,
    ]
}

fn get_route_message(addr: IpAddr) -> Vec<u8> {
    let (family, full, bytes) = family_and_bytes(addr);
    let header = rtmsg(family, full, RT_TABLE_UNSPEC, 0, 0, 0);
    let mut message = MessageBuilder::new(RTM_GETROUTE, NLM_F_REQUEST, header);
    message.attribute(RTA_DST, &bytes);
    message.finish()
}

/// `flags`: `NLM_F_CREATE | NLM_F_EXCL` to add, `NLM_F_REPLACE` to take over.
fn new_route_message(addr: IpAddr, found: &FoundRoute, flags: u16) -> Vec<u8> {
    let (family, full, bytes) = family_and_bytes(addr);
    let scope = if found.gateway.is_some() || found.via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut message = MessageBuilder::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        rtmsg(
            family,
            full,
            RT_TABLE_UNSPEC,
            RTPROT_DEVICELINK,
            scope,
            RTN_UNICAST,
        ),
    );
    message.attribute(RTA_DST, &bytes);
    message.attribute(RTA_TABLE, &QUICKACK_TABLE.to_ne_bytes());
    if let Some(oif) = found.oif {
        message.attribute(RTA_OIF, &oif.to_ne_bytes());
    }
    if let Some(gateway) = &found.gateway {
        message.attribute(RTA_GATEWAY, gateway);
    }
    if let Some(via) = &found.via {
        message.attribute(RTA_VIA, via);
    }
    if let Some(prefsrc) = &found.prefsrc {
        message.attribute(RTA_PREFSRC, prefsrc);
    }
    // The route's own metrics (an MTU, say) stay; quick ACKs are added last, so they win over a
    // `quickack 0` copied along.
    let mut metrics = found.metrics.clone();
    push_attribute(&mut metrics, RTAX_QUICKACK, &1u32.to_ne_bytes());
    message.attribute(RTA_METRICS, &metrics);
    message.finish()
}

fn del_route_message(addr: IpAddr) -> Vec<u8> {
    let (family, full, bytes) = family_and_bytes(addr);
    let mut message = MessageBuilder::new(
        RTM_DELROUTE,
        NLM_F_REQUEST | NLM_F_ACK,
        // Any scope: the kernel matches a route's scope only when one is given.
        rtmsg(
            family,
            full,
            RT_TABLE_UNSPEC,
            RTPROT_DEVICELINK,
            RT_SCOPE_NOWHERE,
            RTN_UNICAST,
        ),
    );
    message.attribute(RTA_DST, &bytes);
    message.attribute(RTA_TABLE, &QUICKACK_TABLE.to_ne_bytes());
    message.finish()
}

/// `RTM_NEWRULE` (with `flags`) or `RTM_DELRULE` for the quick-ACK rule of `family`: `fwmark
/// QUICKACK_MARK lookup QUICKACK_TABLE pref QUICKACK_RULE_PRIORITY proto 201`.
fn rule_message(kind: u16, flags: u16, family: Family) -> Vec<u8> {
    // `struct fib_rule_hdr`: family, dst_len, src_len, tos, table, res1, res2, action, flags;
    // the same size and layout as `rtmsg`.
    let header = [family.af(), 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    let mut message = MessageBuilder::new(kind, NLM_F_REQUEST | NLM_F_ACK | flags, header);
    message.attribute(FRA_PRIORITY, &QUICKACK_RULE_PRIORITY.to_ne_bytes());
    message.attribute(FRA_FWMARK, &QUICKACK_MARK.to_ne_bytes());
    message.attribute(FRA_FWMASK, &u32::MAX.to_ne_bytes());
    message.attribute(FRA_TABLE, &QUICKACK_TABLE.to_ne_bytes());
    message.attribute(FRA_PROTOCOL, &[RTPROT_DEVICELINK]);
    message.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip() {
        let found = FoundRoute {
            route_type: RTN_UNICAST,
            table: 254,
            oif: Some(7),
            dst_len: 0,
            protocol: 2,
            gateway: Some(vec![10, 0, 0, 1]),
            via: None,
            prefsrc: Some(vec![10, 0, 0, 9]),
            metrics: {
                let mut m = Vec::new();
                push_attribute(&mut m, 2, &1400u32.to_ne_bytes()); // RTAX_MTU
                m
            },
        };
        let message = new_route_message(
            "10.9.8.7".parse().unwrap(),
            &found,
            NLM_F_CREATE | NLM_F_EXCL,
        );
        let all: Vec<_> = messages(&message).collect();
        assert_eq!(all.len(), 1);
        let (kind, payload) = all[0];
        assert_eq!(kind, RTM_NEWROUTE);
        assert_eq!(payload[1], 32, "a host route");
        assert_eq!(payload[6], RT_SCOPE_UNIVERSE, "via a gateway");
        let parsed = parse_route(payload).unwrap();
        assert_eq!(parsed.protocol, RTPROT_DEVICELINK, "marked as the proxy's");
        assert_eq!(parsed.table, QUICKACK_TABLE, "in the proxy's own table");
        assert_eq!(parsed.oif, Some(7));
        assert_eq!(parsed.gateway, found.gateway);
        assert_eq!(parsed.prefsrc, found.prefsrc);
        let metrics: Vec<_> = attributes(&parsed.metrics)
            .map(|(k, v)| (k, u32::from_ne_bytes(v.try_into().unwrap())))
            .collect();
        assert_eq!(metrics, [(2, 1400), (RTAX_QUICKACK, 1)]);
        let dst: Vec<_> = attributes(&payload[RTMSG_LEN..])
            .filter(|(k, _)| *k == RTA_DST)
            .map(|(_, v)| v.to_vec())
            .collect();
        assert_eq!(dst, [vec![10, 9, 8, 7]]);
    }

    #[test]
    fn on_link_device_gets_a_link_scope_route() {
        let found = FoundRoute {
            route_type: RTN_UNICAST,
            table: 254,
            oif: Some(3),
            ..FoundRoute::default()
        };
        let message = new_route_message("fd00::2".parse().unwrap(), &found, NLM_F_CREATE);
        let (_, payload) = messages(&message).next().unwrap();
        assert_eq!(payload[0], libc::AF_INET6 as u8);
        assert_eq!(payload[1], 128);
        assert_eq!(payload[6], RT_SCOPE_LINK);
    }

    #[test]
    fn rule_leads_marked_sockets_to_the_quickack_table() {
        let message = rule_message(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, Family::V6);
        let (kind, payload) = messages(&message).next().unwrap();
        assert_eq!(kind, RTM_NEWRULE);
        assert_eq!(payload[0], libc::AF_INET6 as u8);
        assert_eq!(payload[7], FR_ACT_TO_TBL);
        let attrs: Vec<_> = attributes(&payload[RTMSG_LEN..])
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        let u32_of = |kind| {
            attrs
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| u32::from_ne_bytes(v[..4].try_into().unwrap()))
        };
        assert_eq!(u32_of(FRA_FWMARK), Some(QUICKACK_MARK));
        assert_eq!(u32_of(FRA_FWMASK), Some(u32::MAX));
        assert_eq!(u32_of(FRA_TABLE), Some(QUICKACK_TABLE));
        assert_eq!(u32_of(FRA_PRIORITY), Some(QUICKACK_RULE_PRIORITY));
        assert!(attrs.contains(&(FRA_PROTOCOL, vec![RTPROT_DEVICELINK])));
    }

    #[test]
    fn truncated_answers_end_iteration_instead_of_panicking() {
        let message = get_route_message("10.0.0.1".parse().unwrap());
        for cut in 0..message.len() {
            let _ = messages(&message[..cut]).count();
            let _ = attributes(&message[NLMSG_HDR_LEN.min(cut)..cut]).count();
        }
        assert!(parse_route(&[0; 5]).is_none());
    }
}
