//! The XDP ACL's maps as user space keeps them: the links' ports and ranges turned into trie
//! entries, and each change applied as a diff against what the maps hold, new entries before
//! stale ones go, so a range kept across a change never blinks.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key};
use devicelink_proxy_common::{AclKeyV4, AclKeyV6, MAX_LINKS, PORT_BITS};
use ipnet::IpNet;

use crate::acl::ipv4_view;

/// Why the ACL maps could not be made to hold a set of links.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("link slot {slot} is out of range: the XDP maps hold slots 0..{MAX_LINKS}")]
    SlotOutOfRange { slot: u32 },
    #[error(
        "port {port} is given to the links in slots {first} and {second}: the XDP ACL judges a packet by its destination port, so each link needs a port of its own"
    )]
    PortShared { port: u16, first: u32, second: u32 },
    #[error("XDP map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> AclError {
    move |source| AclError::Map { map, source }
}

/// One link as the XDP ACL sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkAcl {
    /// The link's slot: its value in the maps and its drop counter's index.
    pub slot: u32,
    /// The port it listens on.
    pub port: u16,
    pub ranges: Vec<IpNet>,
}

/// What the maps hold (or should): trie keys `(prefix length, data)` and ports, each to a slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclEntries {
    pub v4: BTreeMap<(u32, AclKeyV4), u32>,
    pub v6: BTreeMap<(u32, AclKeyV6), u32>,
    pub ports: BTreeMap<u16, u32>,
}

impl AclEntries {
    /// The entries for `links`, or why the maps cannot hold them. Pure.
    pub fn of(links: &[LinkAcl]) -> Result<Self, AclError> {
        let mut entries = Self::default();
        for link in links {
            if link.slot >= MAX_LINKS {
                return Err(AclError::SlotOutOfRange { slot: link.slot });
            }
            if let Some(first) = entries.ports.insert(link.port, link.slot) {
                return Err(AclError::PortShared {
                    port: link.port,
                    first,
                    second: link.slot,
                });
            }
            let port = link.port.to_be_bytes();
            for range in &link.ranges {
                match ipv4_view(*range) {
                    IpNet::V4(net) => {
                        let addr = net.network().octets();
                        let key = [port[0], port[1], addr[0], addr[1], addr[2], addr[3]];
                        entries
                            .v4
                            .insert((PORT_BITS + u32::from(net.prefix_len()), key), link.slot);
                    }
                    IpNet::V6(net) => {
                        let mut key = [0u8; 18];
                        key[..2].copy_from_slice(&port);
                        key[2..].copy_from_slice(&net.network().octets());
                        entries
                            .v6
                            .insert((PORT_BITS + u32::from(net.prefix_len()), key), link.slot);
                    }
                }
            }
        }
        Ok(entries)
    }

    /// Trie entries over both families.
    pub fn prefixes(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// The ACL maps of a loaded XDP program and what they hold.
pub struct XdpAcl {
    v4: LpmTrie<MapData, AclKeyV4, u32>,
    v6: LpmTrie<MapData, AclKeyV6, u32>,
    ports: HashMap<MapData, u16, u32>,
    drops: PerCpuArray<MapData, u64>,
    installed: AclEntries,
}

impl XdpAcl {
    pub fn new(
        v4: LpmTrie<MapData, AclKeyV4, u32>,
        v6: LpmTrie<MapData, AclKeyV6, u32>,
        ports: HashMap<MapData, u16, u32>,
        drops: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self {
            v4,
            v6,
            ports,
            drops,
            installed: AclEntries::default(),
        }
    }

    /// Makes the maps hold exactly `links`' entries. Ranges first, then ports (a port is judged
    /// only once its ranges are in); stale ports go before stale ranges (a port stops being
    /// judged before its ranges leave). On an error the maps hold a mix of old and new that
    /// still only lets in sources some version allowed; the next apply finishes the job.
    pub fn apply(&mut self, links: &[LinkAcl]) -> Result<(), AclError> {
        let wanted = AclEntries::of(links)?;
        for (&(len, data), &slot) in &wanted.v4 {
            if self.installed.v4.get(&(len, data)) != Some(&slot) {
                self.v4
                    .insert(&Key::new(len, data), slot, 0)
                    .map_err(map_err("ACL_V4"))?;
                self.installed.v4.insert((len, data), slot);
            }
        }
        for (&(len, data), &slot) in &wanted.v6 {
            if self.installed.v6.get(&(len, data)) != Some(&slot) {
                self.v6
                    .insert(&Key::new(len, data), slot, 0)
                    .map_err(map_err("ACL_V6"))?;
                self.installed.v6.insert((len, data), slot);
            }
        }
        for (&port, &slot) in &wanted.ports {
            if self.installed.ports.get(&port) != Some(&slot) {
                // A slot new to this port starts its drop count at zero (slots are reused).
                if !self.installed.ports.values().any(|&s| s == slot) {
                    self.reset_drops(slot).map_err(map_err("XDP_LINK_DROPS"))?;
                }
                self.ports
                    .insert(port, slot, 0)
                    .map_err(map_err("LINK_PORTS"))?;
                self.installed.ports.insert(port, slot);
            }
        }
        let stale_ports: Vec<u16> = self
            .installed
            .ports
            .keys()
            .filter(|port| !wanted.ports.contains_key(port))
            .copied()
            .collect();
        for port in stale_ports {
            self.ports.remove(&port).map_err(map_err("LINK_PORTS"))?;
            self.installed.ports.remove(&port);
        }
        let stale_v4: Vec<(u32, AclKeyV4)> = self
            .installed
            .v4
            .keys()
            .filter(|key| !wanted.v4.contains_key(key))
            .copied()
            .collect();
        for (len, data) in stale_v4 {
            self.v4
                .remove(&Key::new(len, data))
                .map_err(map_err("ACL_V4"))?;
            self.installed.v4.remove(&(len, data));
        }
        let stale_v6: Vec<(u32, AclKeyV6)> = self
            .installed
            .v6
            .keys()
            .filter(|key| !wanted.v6.contains_key(key))
            .copied()
            .collect();
        for (len, data) in stale_v6 {
            self.v6
                .remove(&Key::new(len, data))
                .map_err(map_err("ACL_V6"))?;
            self.installed.v6.remove(&(len, data));
        }
        Ok(())
    }

    fn reset_drops(&mut self, slot: u32) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: error,
            })
        })?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "per-cpu values",
                io_error,
            })
        })?;
        self.drops.set(slot, zeros, 0)
    }

    /// Packets XDP dropped for the link in `slot`, summed over CPUs.
    pub fn drops(&self, slot: u32) -> u64 {
        self.drops
            .get(&slot, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Trie entries installed now.
    pub fn prefixes(&self) -> usize {
        self.installed.prefixes()
    }

    /// Entries the kernel's maps hold, read back from them: what the bookkeeping above
    /// claims, checked.
    pub fn kernel_entries(&self) -> Result<KernelEntries, AclError> {
        Ok(KernelEntries {
            v4: count(self.v4.keys()).map_err(map_err("ACL_V4"))?,
            v6: count(self.v6.keys()).map_err(map_err("ACL_V6"))?,
            ports: count(self.ports.keys()).map_err(map_err("LINK_PORTS"))?,
        })
    }
}

/// How many entries each ACL map holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelEntries {
    pub v4: usize,
    pub v6: usize,
    pub ports: usize,
}

fn count<K>(mut keys: impl Iterator<Item = Result<K, MapError>>) -> Result<usize, MapError> {
    keys.try_fold(0, |n, key| key.map(|_| n + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn entries_are_keyed_by_port_then_prefix() {
        let entries = AclEntries::of(&[
            LinkAcl {
                slot: 3,
                port: 2222,
                ranges: vec![net("203.0.113.0/24"), net("2001:db8::/32")],
            },
            LinkAcl {
                slot: 4,
                port: 5900,
                ranges: vec![net("203.0.113.7/32")],
            },
        ])
        .unwrap();
        assert_eq!(entries.ports, BTreeMap::from([(2222, 3), (5900, 4)]));
        let [hi, lo] = 2222u16.to_be_bytes();
        assert_eq!(
            entries.v4.get(&(16 + 24, [hi, lo, 203, 0, 113, 0])),
            Some(&3),
            "the port leads the key, so one lookup judges by that port's ranges"
        );
        assert_eq!(entries.v4.len(), 2);
        assert_eq!(entries.v6.len(), 1);
        assert_eq!(entries.prefixes(), 3);
    }

    #[test]
    fn an_ipv4_mapped_range_goes_to_the_ipv4_trie() {
        let entries = AclEntries::of(&[LinkAcl {
            slot: 0,
            port: 22,
            ranges: vec![net("::ffff:10.1.0.0/112")],
        }])
        .unwrap();
        assert_eq!(entries.v4.len(), 1, "{entries:?}");
        assert!(entries.v6.is_empty());
    }

    #[test]
    fn a_port_given_to_two_links_or_a_slot_past_the_maps_is_refused() {
        let link = |slot, port| LinkAcl {
            slot,
            port,
            ranges: vec![net("203.0.113.0/24")],
        };
        let err = AclEntries::of(&[link(0, 22), link(1, 22)]).unwrap_err();
        assert!(
            matches!(
                err,
                AclError::PortShared {
                    port: 22,
                    first: 0,
                    second: 1
                }
            ),
            "{err}"
        );
        let err = AclEntries::of(&[link(MAX_LINKS, 22)]).unwrap_err();
        assert!(matches!(err, AclError::SlotOutOfRange { .. }), "{err}");
        assert!(AclEntries::of(&[link(MAX_LINKS - 1, 22)]).is_ok());
    }
}
