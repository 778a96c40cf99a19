//! The source ACL for every link of the proxy: a TCP packet to a port some link listens on
//! passes only when its source address is in that link's allowed prefixes. The tries are keyed
//! by destination port, then source address, so one longest-prefix lookup judges a packet by
//! its own link's ranges. Everything else that reaches the interface is not ours to judge and
//! passes. One judgement for two hooks: XDP (a frame before or, in skb mode, after the kernel
//! made an skb of it) and TC ingress (the kernel's skb as it is, headers in its linear part).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use devicelink_proxy_common::{
    AclKeyV4, AclKeyV6, MAX_ACL_ENTRIES, MAX_LINKS, PORT_BITS, XdpVerdict,
};

/// LPM tries must be created with `BPF_F_NO_PREALLOC`.
const BPF_F_NO_PREALLOC: u32 = 1;

/// (port, IPv4 prefix) -> the link's slot.
#[map]
static ACL_V4: LpmTrie<AclKeyV4, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

/// (port, IPv6 prefix) -> the link's slot.
#[map]
static ACL_V6: LpmTrie<AclKeyV6, u32> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

/// Destination port (host order) -> the slot of the link listening on it. Only these ports are
/// judged.
#[map]
static LINK_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_LINKS, 0);

/// Per-CPU packet counts indexed by [`XdpVerdict`].
#[map]
static XDP_VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpVerdict::COUNT, 0);

/// Per-CPU drops of each link, indexed by its slot.
#[map]
static XDP_LINK_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_LINKS, 0);

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HDR_LEN: usize = 40;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Extension headers walked before TCP: each of the four kinds once, plus a second
/// destination-options header (allowed before a routing header) and one to spare. A packet
/// with more passes as not inspected (the verifier needs a bound, and such a chain is no real
/// client's); the accept-time check still judges the connection it might open.
const MAX_EXTENSION_HEADERS: usize = 6;

/// Bytes the TC hook makes linear when a header lies past the skb's linear part: a tunnel's or
/// a driver's skb may start its payload early. Headers behind more than that are no real
/// client's and pass as malformed, as they would past the end of a frame.
const TC_PULL_MAX: u32 = 512;

/// A packet's bytes as the hook sees them: from the Ethernet header to the end of what may be
/// read directly.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// What the hook does with a packet.
pub enum Action {
    Pass,
    Drop,
}

/// What a packet is, as far as the ACL cares.
enum Verdict {
    /// A packet the ACL does not judge, with why.
    Skip(XdpVerdict),
    /// TCP to a port some link uses: judge its source by that link's ranges.
    Judge { slot: u32, allowed: bool },
}

/// Judges an XDP frame: the whole frame (or, in skb mode, the linearized skb) is readable.
#[inline(always)]
pub fn judge_frame(ctx: &XdpContext) -> Action {
    count(classify(ctx))
}

/// Judges a TC ingress skb. Only its linear part is readable; should a header lie past it,
/// that much is made linear (`bpf_skb_pull_data`) and the packet read again. A local sender's
/// segments and a NIC's receives carry their headers in the linear part, so this is rare, and
/// the payload is never touched: generic XDP copies every such skb whole instead.
#[inline(always)]
pub fn judge_skb(ctx: &TcContext) -> Action {
    let mut verdict = classify(ctx);
    // A truncated packet is as rare as a split header, so both take the second read.
    if matches!(verdict, Verdict::Skip(XdpVerdict::Malformed))
        && ctx.pull_data(ctx.len().min(TC_PULL_MAX)).is_ok()
    {
        verdict = classify(ctx);
    }
    count(verdict)
}

/// Counts a verdict (and a drop against its link) and says what to do.
#[inline(always)]
fn count(verdict: Verdict) -> Action {
    let (verdict, action) = match verdict {
        Verdict::Skip(why) => (why, Action::Pass),
        Verdict::Judge {
            allowed: true,
            slot: _,
        } => (XdpVerdict::Pass, Action::Pass),
        Verdict::Judge {
            allowed: false,
            slot,
        } => {
            if let Some(drops) = XDP_LINK_DROPS.get_ptr_mut(slot) {
                // SAFETY: a per-CPU slot that only this CPU writes, and neither hook nests on a
                // CPU, so no other writer can race this increment.
                unsafe { *drops += 1 };
            }
            (XdpVerdict::DropSource, Action::Drop)
        }
    };
    if let Some(count) = XDP_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: as above, a per-CPU slot with no concurrent writer.
        unsafe { *count += 1 };
    }
    action
}

#[inline(always)]
fn classify<F: Frame>(ctx: &F) -> Verdict {
    let Some(mut ether_type) = read_be16(ctx, 12) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    let mut ip = ETH_HDR_LEN;
    // One VLAN tag (a trunk port, or a provider tag): the IP header follows the tag.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(inner) = read_be16(ctx, ETH_HDR_LEN + 2) else {
            return Verdict::Skip(XdpVerdict::Malformed);
        };
        ether_type = inner;
        ip += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IP => classify_v4(ctx, ip),
        ETH_P_IPV6 => classify_v6(ctx, ip),
        // ARP, double-tagged frames and the rest: user space still checks every accepted client.
        _ => Verdict::Skip(XdpVerdict::NotInspected),
    }
}

#[inline(always)]
fn classify_v4<F: Frame>(ctx: &F, ip: usize) -> Verdict {
    let (Some(version_ihl), Some(frag), Some(protocol)) = (
        read_u8(ctx, ip),
        read_be16(ctx, ip + 6),
        read_u8(ctx, ip + 9),
    ) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    if protocol != IPPROTO_TCP {
        return Verdict::Skip(XdpVerdict::NotInspected);
    }
    // Fragments after the first carry no TCP header and cannot be judged by port; without the
    // first one (which is judged and dropped for a disallowed source) they never reach a
    // socket, and the stack discards them when reassembly times out. Remembering dropped
    // first fragments (by source and IP ID) would need a map sized against a flood, and a later
    // fragment cannot rewrite the judged ports: a first fragment holds at least 8 bytes of TCP
    // (every fragment but the last carries a multiple of 8), and the stack discards a datagram
    // whose fragments overlap.
    if frag & 0x1fff != 0 {
        return Verdict::Skip(XdpVerdict::NotInspected);
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return Verdict::Skip(XdpVerdict::Malformed);
    }
    let Some(src) = read_array::<F, 4>(ctx, ip + 12) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    let Some(port) = read_array::<F, 2>(ctx, ip + header_len + 2) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    let Some(slot) = link_slot(port) else {
        return Verdict::Skip(XdpVerdict::NotInspected);
    };
    let key: AclKeyV4 = [port[0], port[1], src[0], src[1], src[2], src[3]];
    Verdict::Judge {
        slot,
        allowed: ACL_V4.get(Key::new(PORT_BITS + 32, key)).is_some(),
    }
}

#[inline(always)]
fn classify_v6<F: Frame>(ctx: &F, ip: usize) -> Verdict {
    let Some(mut next_header) = read_u8(ctx, ip + 6) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    let Some(src) = read_array::<F, 16>(ctx, ip + 8) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    // Walk the extension headers a sender may put before TCP, so a SYN behind a
    // destination-options header is judged like any other.
    let mut offset = ip + IPV6_HDR_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next_header {
            IPPROTO_TCP => break,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                // Both bytes in one read: a one-byte read at a variable offset compiles to a
                // bounds check the verifier cannot use.
                let Some([next, len]) = read_array::<F, 2>(ctx, offset) else {
                    return Verdict::Skip(XdpVerdict::Malformed);
                };
                next_header = next;
                // Length in 8-byte units, not counting the first 8 bytes.
                offset += (usize::from(len) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some([next, _reserved, frag_high, frag_low]) = read_array::<F, 4>(ctx, offset)
                else {
                    return Verdict::Skip(XdpVerdict::Malformed);
                };
                let frag = u16::from_be_bytes([frag_high, frag_low]);
                // As for IPv4: only the first fragment carries the TCP header.
                if frag & 0xfff8 != 0 {
                    return Verdict::Skip(XdpVerdict::NotInspected);
                }
                next_header = next;
                offset += 8;
            }
            // UDP, ICMPv6, ESP, AH and the rest: not TCP, or TCP that the stack reaches only
            // through an IPsec state it authenticated.
            _ => return Verdict::Skip(XdpVerdict::NotInspected),
        }
    }
    if next_header != IPPROTO_TCP {
        return Verdict::Skip(XdpVerdict::NotInspected);
    }
    // A first fragment cut before the ports passes as malformed: the stack drops an IPv6 first
    // fragment that lacks the whole TCP header (RFC 7112) before any reassembly.
    let Some(port) = read_array::<F, 2>(ctx, offset + 2) else {
        return Verdict::Skip(XdpVerdict::Malformed);
    };
    let Some(slot) = link_slot(port) else {
        return Verdict::Skip(XdpVerdict::NotInspected);
    };
    let mut key: AclKeyV6 = [0; 18];
    key[0] = port[0];
    key[1] = port[1];
    key[2..].copy_from_slice(&src);
    Verdict::Judge {
        slot,
        allowed: ACL_V6.get(Key::new(PORT_BITS + 128, key)).is_some(),
    }
}

/// The slot of the link that listens on `port` (network order), if any.
#[inline(always)]
fn link_slot(port: [u8; 2]) -> Option<u32> {
    // SAFETY: the value is copied out at once; user space replaces entries whole, so a
    // concurrent update yields the old or the new slot, either of which is valid.
    unsafe { LINK_PORTS.get(u16::from_be_bytes(port)) }.copied()
}

/// The one bounds-checked accessor for packet bytes: `N` bytes at `offset`, or `None` when the
/// packet is shorter.
#[inline(always)]
fn read_array<F: Frame, const N: usize>(ctx: &F, offset: usize) -> Option<[u8; N]> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: `start + offset .. start + offset + N` lies within the packet, checked against
    // data_end just above; the read is unaligned-safe.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn read_u8<F: Frame>(ctx: &F, offset: usize) -> Option<u8> {
    read_array::<F, 1>(ctx, offset).map(|[b]| b)
}

#[inline(always)]
fn read_be16<F: Frame>(ctx: &F, offset: usize) -> Option<u16> {
    read_array::<F, 2>(ctx, offset).map(u16::from_be_bytes)
}
