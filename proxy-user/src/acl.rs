//! The source ACL as user space enforces it at accept. The XDP program enforces the same prefixes
//! earlier, on the wire; this check makes sure a missing XDP attach never opens the door.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceAcl {
    allowed: Vec<IpNet>,
}

impl SourceAcl {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// No prefixes: nobody gets in.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    pub fn prefixes(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a client at `source` may connect. An IPv4 client of a dual-stack (`[::]`)
    /// listener shows up as `::ffff:a.b.c.d` and is judged by its IPv4 address, and an
    /// IPv4-mapped range as the IPv4 range it stands for: as the XDP program judges them.
    pub fn allows(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.allowed
            .iter()
            .any(|net| ipv4_view(*net).contains(&source))
    }
}

/// An IPv4-mapped IPv6 range (inside `::ffff:0:0/96`) as the IPv4 range it stands for: IPv4
/// clients arrive as IPv4 packets on the wire, whatever the listener's family.
pub fn ipv4_view(range: IpNet) -> IpNet {
    if let IpNet::V6(net) = range
        && net.prefix_len() >= 96
        && let Some(v4) = net.network().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, net.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(prefixes: &[&str]) -> SourceAcl {
        SourceAcl::new(prefixes.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[test]
    fn an_ipv4_mapped_range_is_judged_as_ipv4() {
        assert_eq!(
            ipv4_view("::ffff:10.1.0.0/112".parse().unwrap()),
            "10.1.0.0/16".parse::<IpNet>().unwrap()
        );
        let acl = acl(&["::ffff:10.1.0.0/112"]);
        assert!(acl.allows("10.1.2.3".parse().unwrap()));
        assert!(acl.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!acl.allows("10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_acl_allows_nobody() {
        let acl = acl(&[]);
        assert!(!acl.allows("127.0.0.1".parse().unwrap()));
        assert!(!acl.allows("::1".parse().unwrap()));
    }

    #[test]
    fn prefixes_match_by_family() {
        let acl = acl(&["192.0.2.0/24", "2001:db8::/32"]);
        assert!(acl.allows("192.0.2.200".parse().unwrap()));
        assert!(!acl.allows("192.0.3.1".parse().unwrap()));
        assert!(acl.allows("2001:db8:1::5".parse().unwrap()));
        assert!(!acl.allows("2001:db9::5".parse().unwrap()));
    }

    #[test]
    fn v4_mapped_clients_are_judged_as_v4() {
        let acl = acl(&["192.0.2.0/24"]);
        assert!(acl.allows("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!acl.allows("::ffff:198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn open_to_all_takes_both_families() {
        let acl = acl(&["0.0.0.0/0", "::/0"]);
        assert!(acl.allows("203.0.113.1".parse().unwrap()));
        assert!(acl.allows("2001:db8::1".parse().unwrap()));
    }
}
