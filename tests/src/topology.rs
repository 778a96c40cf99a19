//! The client / proxy / device topology: three namespaces joined by veth, their addresses, and
//! the proxy namespace routing between both sides (see the crate's picture).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::{netns::Netns, process::sh};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const OTHER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
pub const PROXY_FRONT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const PROXY_BACK_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const DEVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
pub const OTHER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 3);
pub const PROXY_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
pub const PROXY_BACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);
pub const DEVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 2);
/// The proxy's interface facing clients: where the XDP ACL attaches.
pub const PROXY_FRONT_IFACE: &str = "to-client";
/// The proxy's interface facing the device.
pub const PROXY_BACK_IFACE: &str = "to-device";

/// The three namespaces joined by veth.
pub struct Topology {
    // Declared in drop order: device and proxy processes die with their namespaces.
    pub client: Netns,
    pub proxy: Netns,
    pub device: Netns,
    tag: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds the topology; `tag` (a short test name) makes the namespace names unique.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let unique = format!(
            "dl-{}-{}-{}",
            tag.chars().take(12).collect::<String>(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = Netns::create(&format!("{unique}-c"))?;
        let proxy = Netns::create(&format!("{unique}-p"))?;
        let device = Netns::create(&format!("{unique}-d"))?;
        let topology = Self {
            client,
            proxy,
            device,
            tag: unique,
        };
        topology.wire().context("wiring the topology")?;
        Ok(topology)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, p, d) = (&self.client, &self.proxy, &self.device);
        for (iface, peer) in [(PROXY_FRONT_IFACE, c), (PROXY_BACK_IFACE, d)] {
            p.ip(&[
                "link",
                "add",
                iface,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ])?;
        }
        let addr = |ns: &Netns, cidr: String, dev: &str| -> anyhow::Result<()> {
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
            if cidr.contains(':') {
                // No duplicate address detection: the address is usable at once.
                args.push("nodad");
            }
            ns.ip(&args).map(drop)
        };
        addr(c, format!("{CLIENT_V4}/24"), "eth0")?;
        addr(c, format!("{OTHER_CLIENT_V4}/24"), "eth0")?;
        addr(c, format!("{CLIENT_V6}/64"), "eth0")?;
        addr(c, format!("{OTHER_CLIENT_V6}/64"), "eth0")?;
        addr(p, format!("{PROXY_FRONT_V4}/24"), PROXY_FRONT_IFACE)?;
        addr(p, format!("{PROXY_FRONT_V6}/64"), PROXY_FRONT_IFACE)?;
        addr(p, format!("{PROXY_BACK_V4}/24"), PROXY_BACK_IFACE)?;
        addr(p, format!("{PROXY_BACK_V6}/64"), PROXY_BACK_IFACE)?;
        addr(d, format!("{DEVICE_V4}/24"), "eth0")?;
        addr(d, format!("{DEVICE_V6}/64"), "eth0")?;
        for (ns, dev) in [
            (c, "eth0"),
            (p, PROXY_FRONT_IFACE),
            (p, PROXY_BACK_IFACE),
            (d, "eth0"),
        ] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        // The proxy namespace also routes between the two sides, so that a "direct" baseline
        // (client -> device, no proxy) crosses the same veths as proxied traffic does.
        c.ip(&[
            "route",
            "add",
            "default",
            "via",
            &PROXY_FRONT_V4.to_string(),
        ])?;
        c.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PROXY_FRONT_V6.to_string(),
        ])?;
        d.ip(&["route", "add", "default", "via", &PROXY_BACK_V4.to_string()])?;
        d.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PROXY_BACK_V6.to_string(),
        ])?;
        sh(p.command("sysctl").args([
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]))?;
        Ok(())
    }

    /// The proxy's client-facing address for `port`.
    pub fn front(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(PROXY_FRONT_V4), port)
    }

    /// The device's address for `port`.
    pub fn device_addr(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(DEVICE_V4), port)
    }
}
