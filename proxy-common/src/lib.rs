//! Types shared by the kernel programs (`devicelink-proxy-ebpf`) and the proxy daemon
//! (`devicelink-proxy`). Everything here is `#[repr(C)]` and laid out for BPF maps; numbers that
//! appear in maps or metrics are stable and never renumbered.
#![no_std]

/// Capacity of the splice socket hash and of its link table: two sockets per connection.
/// User space may lower it at load time from `--max-connections`.
pub const MAX_SPLICED_SOCKETS: u32 = 2 * 4096;

/// Links one proxy carries at most: the capacity of the port map and of the per-link XDP drop
/// counters, indexed by a link's slot.
pub const MAX_LINKS: u32 = 4096;

/// Capacity of each source ACL trie (v4 and v6), over every link: a thousand links with a
/// few dozen ranges each. Tries are created without preallocation, so unused room costs nothing.
pub const MAX_ACL_ENTRIES: u32 = 65_536;

/// Bits of an ACL trie key taken by the destination port, ahead of the source address: a lookup
/// with `PORT_BITS + 32` (or `+ 128`) finds the longest prefix among one port's ranges only.
pub const PORT_BITS: u32 = 16;

/// Key data of the IPv4 ACL trie: destination port (network order), then the source address.
pub type AclKeyV4 = [u8; 6];

/// Key data of the IPv6 ACL trie: destination port (network order), then the source address.
pub type AclKeyV6 = [u8; 18];

/// One spliced socket's entry in the link table, keyed by that socket's cookie
/// (`SO_COOKIE`, equal to `bpf_get_socket_cookie` in the verdict program).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceLink {
    /// Cookie of the socket that bytes arriving on this socket are redirected to.
    pub peer_cookie: u64,
    /// Payload bytes the verdict program has redirected from this socket to its peer.
    /// One socket's skbs are handled in order, so a plain add is exact without atomics.
    pub bytes: u64,
    /// Payload bytes the verdict program kept on this socket instead (its peer was not in the
    /// hash yet, or earlier kept bytes were still being forwarded by user space), in order.
    /// User space reads them from the socket and forwards them; see [`SpliceCredit::forwarded`].
    pub held: u64,
    /// Which way bytes from this socket travel: a [`Direction`] as `u32`.
    pub direction: u32,
    /// TCP sequence number just past the last byte the verdict program took from this socket
    /// (valid once `seq_known` is 1): a retransmitted skb that starts before it overlaps bytes
    /// already taken, and the overlap is cut off (the kernel's sockmap reader does not).
    pub next_seq: u32,
    pub seq_known: u32,
    pub _pad: u32,
    /// One more than the [`SpliceCredit::pace_gen`] for which the program last told user space
    /// that `bytes` passed `pace_limit` (0: never): one notice per generation.
    pub paced_gen: u64,
    /// One more than the [`SpliceCredit::look_gen`] for which the program last told user space
    /// that `bytes` passed `look_mark` (0: never): one notice per generation.
    pub looked_gen: u64,
}

/// Where a direction with `limit` bytes of `--splice-max-queued` starts being paced: a quarter of
/// it. The rest is the margin a sender may still fill (the window it was already granted, the
/// moment user space takes to clamp it, a psock backlog waiting out a full send buffer) before
/// the hard limit makes bytes be held and copied. Measured on a saturated iperf3 upload: pacing
/// at half of 32M reached the hard limit often enough that the proxy copied 5-10% of the bytes;
/// at a quarter of 64M it copied none and ran 13-14 Gbit/s (the psock backlog's own pace here).
pub const fn pace_mark(limit: u64) -> u64 {
    limit / 4
}

/// What user space grants one spliced socket, keyed by its cookie. Written only by user space
/// (the verdict program reads it), so the two never race on one value. A socket without an
/// entry has forwarded nothing and may redirect up to the loader-set default queue limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceCredit {
    /// Held bytes user space has read from this socket and forwarded. While
    /// [`SpliceLink::held`] is ahead of it, new bytes are held too, so none overtakes them.
    pub forwarded: u64,
    /// [`SpliceLink::bytes`] may not pass this. The kernel queues redirected bytes for the peer
    /// without any bound of its own, so a fast sender facing a slow receiver would have the proxy
    /// buffer without limit; past this mark bytes are held on their socket instead, which fills
    /// its receive buffer and closes its TCP window: the sender waits for the receiver.
    pub redirect_limit: u64,
    /// Soft mark below `redirect_limit`: when [`SpliceLink::bytes`] passes it, the program wakes
    /// user space (once per `pace_gen`), which shrinks the source's TCP window so that the
    /// sender slows to a trickle before the hard limit makes bytes be held and copied.
    pub pace_limit: u64,
    /// Bumped by user space each time it lets a paced direction run at full speed again.
    pub pace_gen: u64,
    /// Non-zero while user space carries this socket's bytes itself (the kernel path fell behind
    /// what the sockets could carry): every byte is held, none redirected, until user space
    /// clears it and has forwarded what was held.
    pub carry: u64,
    /// When [`SpliceLink::bytes`] passes this the program wakes user space (once per
    /// `look_gen`), which looks whether the kernel keeps up with what it redirects; 0: never.
    pub look_mark: u64,
    /// Bumped by user space each time it sets a new `look_mark`.
    pub look_gen: u64,
}

/// Redirected bytes between two looks at whether a direction's kernel path keeps up: a look
/// costs a few syscalls, so at 10 Gbit/s this is about 600 looks a second, and a connection that
/// moves nothing costs none.
pub const LOOK_STEP: u64 = 2 << 20;

/// The way bytes travel through the proxy.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client -> device: read from the client socket, sent out of the device socket.
    ToDevice = 0,
    /// Device -> client.
    FromDevice = 1,
}

impl Direction {
    pub const COUNT: u32 = 2;
}

/// Index into the per-CPU XDP verdict counters. Stable: metrics and dashboards use them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpVerdict {
    /// A TCP packet to a link's port from a source inside that link's ACL.
    Pass = 0,
    /// A TCP packet to a link's port from a source outside that link's ACL.
    DropSource = 1,
    /// Not ours to judge (a port no link uses, another protocol, non-IP, a fragment after the
    /// first): passed untouched.
    NotInspected = 2,
    /// Truncated headers: passed, the stack drops what it cannot parse.
    Malformed = 3,
}

impl XdpVerdict {
    pub const COUNT: u32 = 4;
}

/// Index into the per-CPU splice counters kept by the verdict program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceCounter {
    /// Zero-length skbs (end of stream) dropped instead of redirected (TCP already has the FIN).
    EndOfStream = 0,
    /// Skbs seen on a socket with no link entry (being torn down): passed.
    Unlinked = 1,
    /// Skbs kept on their socket for user space to forward, to keep bytes in order.
    Held = 2,
    /// Of the held skbs, those held because their direction reached its queue limit.
    QueueFull = 3,
    /// Notices to user space ("this socket started holding") lost to a full ring buffer.
    NoticeLost = 4,
    /// Skbs that began with bytes already taken (a retransmission overlapping what was
    /// received): the overlap was cut off, or the whole skb dropped if it held nothing new.
    OverlapTrimmed = 5,
    /// Skbs whose TCP sequence could not be read or did not match their length: passed on
    /// without the overlap check (user space's count check still catches a duplicate).
    SeqUnknown = 6,
    /// Skbs whose overlap could not be cut off (the kernel refused to shrink the skb): passed
    /// on whole, and user space's count check resets the connection.
    OverlapUntrimmed = 7,
    /// Times a direction passed its pace mark (user space then slowed its sender).
    Paced = 8,
    /// Skbs kept on their socket because user space carries the connection (the kernel path
    /// fell behind): passed, for user space to read and forward.
    Carried = 9,
}

impl SpliceCounter {
    pub const COUNT: u32 = 10;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding fields; any bit pattern is valid.
    unsafe impl aya::Pod for super::SpliceLink {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceCredit {}
}
