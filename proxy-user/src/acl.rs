//! The source ACL as user space enforces it at accept. The XDP program enforces the same prefixes
//! earlier, on the wire; this check makes sure a missing XDP attach never opens the door.

use std::net::IpAddr;

use ipnet::IpNet;

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
    /// listener shows up as `::ffff:a.b.c.d` and is judged by its IPv4 address.
    pub fn allows(&self, source: IpAddr) -> bool {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.iter().any(|net| net.contains(&source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(prefixes: &[&str]) -> SourceAcl {
        SourceAcl::new(prefixes.iter().map(|p| p.parse().unwrap()).collect())
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
