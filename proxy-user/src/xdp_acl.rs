//! Placeholder for the XDP ACL's user-side API (replaced by the kernel plane's own module).
use ipnet::IpNet;

pub struct LinkAcl {
    pub slot: u32,
    pub port: u16,
    pub ranges: Vec<IpNet>,
}
