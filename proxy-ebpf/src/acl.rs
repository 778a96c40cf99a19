//! The XDP source ACL: TCP packets to the listen port pass only when their source address is in
//! the allowed prefixes (longest-prefix-match tries, one per address family). Everything else that
//! reaches the interface is not ours to judge and passes.

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use devicelink_proxy_common::{MAX_ACL_ENTRIES, XdpConfig, XdpVerdict};

/// LPM tries must be created with `BPF_F_NO_PREALLOC`.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static ACL_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static ACL_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static XDP_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Per-CPU packet counts indexed by [`XdpVerdict`].
#[map]
static XDP_VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpVerdict::COUNT, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HDR_LEN: usize = 40;

#[inline(always)]
pub fn judge(ctx: &XdpContext) -> Result<u32, ()> {
    let verdict = classify(ctx);
    if let Some(slot) = XDP_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *slot += 1 };
    }
    Ok(match verdict {
        XdpVerdict::DropSource => xdp_action::XDP_DROP,
        XdpVerdict::Pass | XdpVerdict::NotInspected | XdpVerdict::Malformed => xdp_action::XDP_PASS,
    })
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> XdpVerdict {
    let Some(ether_type) = read_be16(ctx, 12) else {
        return XdpVerdict::Malformed;
    };
    match ether_type {
        ETH_P_IP => classify_v4(ctx),
        ETH_P_IPV6 => classify_v6(ctx),
        // ARP, VLAN-tagged frames and the rest: user space still checks every accepted client.
        _ => XdpVerdict::NotInspected,
    }
}

#[inline(always)]
fn classify_v4(ctx: &XdpContext) -> XdpVerdict {
    let ip = ETH_HDR_LEN;
    let (Some(version_ihl), Some(frag), Some(protocol)) = (
        read_u8(ctx, ip),
        read_be16(ctx, ip + 6),
        read_u8(ctx, ip + 9),
    ) else {
        return XdpVerdict::Malformed;
    };
    if protocol != IPPROTO_TCP {
        return XdpVerdict::NotInspected;
    }
    // Non-first fragments carry no TCP header; without the first one they never reach a socket.
    if frag & 0x1fff != 0 {
        return XdpVerdict::NotInspected;
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return XdpVerdict::Malformed;
    }
    let Some(src) = read_array::<4>(ctx, ip + 12) else {
        return XdpVerdict::Malformed;
    };
    let Some(dst_port) = read_be16(ctx, ip + header_len + 2) else {
        return XdpVerdict::Malformed;
    };
    if !is_listen_port(dst_port) {
        return XdpVerdict::NotInspected;
    }
    if ACL_V4.get(Key::new(32, src)).is_some() {
        XdpVerdict::Pass
    } else {
        XdpVerdict::DropSource
    }
}

#[inline(always)]
fn classify_v6(ctx: &XdpContext) -> XdpVerdict {
    let ip = ETH_HDR_LEN;
    let Some(next_header) = read_u8(ctx, ip + 6) else {
        return XdpVerdict::Malformed;
    };
    // Extension headers before TCP are rare for TCP and not walked here; such packets pass to the
    // stack and the accept-time ACL in user space.
    if next_header != IPPROTO_TCP {
        return XdpVerdict::NotInspected;
    }
    let Some(src) = read_array::<16>(ctx, ip + 8) else {
        return XdpVerdict::Malformed;
    };
    let Some(dst_port) = read_be16(ctx, ip + IPV6_HDR_LEN + 2) else {
        return XdpVerdict::Malformed;
    };
    if !is_listen_port(dst_port) {
        return XdpVerdict::NotInspected;
    }
    if ACL_V6.get(Key::new(128, src)).is_some() {
        XdpVerdict::Pass
    } else {
        XdpVerdict::DropSource
    }
}

#[inline(always)]
fn is_listen_port(port: u16) -> bool {
    XDP_CONFIG
        .get(0)
        .is_some_and(|config| config.listen_port == port)
}

/// The one bounds-checked accessor for packet bytes: `N` bytes at `offset`, or `None` when the
/// packet is shorter.
#[inline(always)]
fn read_array<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    read_array::<1>(ctx, offset).map(|[b]| b)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read_array::<2>(ctx, offset).map(u16::from_be_bytes)
}
