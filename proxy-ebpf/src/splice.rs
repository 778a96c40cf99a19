//! The sk_skb stream verdict: the in-kernel splice between a client socket and its device socket.
//!
//! User space puts both sockets of a connection into `SPLICE_SOCKETS` (keyed by socket cookie) and
//! records each one's peer in `SPLICE_LINKS`. Every skb that then arrives on either socket is
//! redirected out of the peer (flags 0 = egress), so payload never reaches user space.

use aya_ebpf::{
    bindings::sk_action,
    helpers::generated::bpf_get_socket_cookie,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use devicelink_proxy_common::{
    Direction, MAX_SPLICED_SOCKETS, SpliceCounter, SpliceCredit, SpliceLink,
};

#[map]
static SPLICE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Where a socket leaving the splice waits, with no program attached: its psock (and the bytes
/// the verdict program held on it) lives on while it is here, so bytes held in the instant the
/// socket left `SPLICE_SOCKETS` can still be read (leaving drops a psock's queue with it).
/// Written only by user space.
#[map]
static SPLICE_PARKED: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map]
static SPLICE_LINKS: HashMap<u64, SpliceLink> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// What user space grants each socket (forwarded held bytes, queue limit), keyed by cookie;
/// written only by user space.
#[map]
static SPLICE_CREDITS: HashMap<u64, SpliceCredit> =
    HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Cookies of sockets that just started holding bytes: wakes user space, which otherwise sleeps
/// while the kernel moves the bytes.
#[map]
static SPLICE_NOTICES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Bytes one direction may have queued inside the proxy (redirected but not yet acknowledged by
/// the receiver) for a socket without a credit entry. Set by the loader from
/// `--splice-max-queued`; read-only once loaded.
#[unsafe(no_mangle)]
static SPLICE_QUEUE_LIMIT: u64 = 64 << 20;

/// The first look mark of a socket without a credit entry (see `SpliceCredit::look_mark`): the
/// redirected bytes after which user space first looks whether the kernel keeps up. Set by the
/// loader; 0 when `--splice-carry never` turns the looks off.
#[unsafe(no_mangle)]
static SPLICE_LOOK_MARK: u64 = 0;

/// Offset of `cb` in the kernel's `struct sk_buff`, where TCP keeps the skb's sequence numbers
/// (`struct tcp_skb_cb`: `seq`, then `end_seq`). Set by the loader from the kernel's BTF; 0
/// means unknown, and the overlap check is off.
#[unsafe(no_mangle)]
static SKB_CB_OFFSET: u32 = 0;

/// The most bytes `bpf_skb_adjust_room` removes from an sk_skb in one call.
const MAX_TRIM_STEP: u32 = 0xfff;

/// The smallest step tried before giving up on cutting an overlap.
const MIN_TRIM_STEP: u32 = 256;

/// Payload bytes redirected, per CPU, indexed by [`Direction`].
#[map]
static SPLICE_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Direction::COUNT, 0);

/// Skbs not redirected, per CPU, indexed by [`SpliceCounter`].
#[map]
static SPLICE_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SpliceCounter::COUNT, 0);

#[inline(always)]
pub fn redirect(ctx: &SkBuffContext) -> Result<u32, ()> {
    let len = ctx.len();
    if len == 0 {
        // End of stream arrives as a zero-length skb (the FIN's). It carries no byte, and both
        // other verdicts break the connection: redirected, the peer's backlog "sends" 0 bytes,
        // which it treats as a hard error (EPIPE, TX disabled for good); passed while this
        // socket's own psock still queues bytes for it to send (its sndbuf is full), the skb
        // joins that queue and the backlog hits the same 0-byte error on *this* socket, losing
        // what the peer sent back. Dropping it is safe: TCP already recorded the FIN
        // (RCV_SHUTDOWN, seen by user space as EPOLLRDHUP) before this program runs.
        count(SpliceCounter::EndOfStream);
        return Ok(sk_action::SK_DROP);
    }
    // SAFETY: the helper only reads the socket the skb belongs to.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(link) = SPLICE_LINKS.get_ptr_mut(cookie) else {
        // Being torn down: keep the bytes on this socket rather than drop them.
        count(SpliceCounter::Unlinked);
        return Ok(sk_action::SK_PASS);
    };
    // SAFETY: a valid map value pointer; one socket's skbs are processed one at a time.
    let link = unsafe { &mut *link };
    let len = match skip_overlap(ctx, link, len) {
        Some(len) => len,
        None => {
            // Nothing in this skb that was not taken before.
            count(SpliceCounter::OverlapTrimmed);
            return Ok(sk_action::SK_DROP);
        }
    };
    // SAFETY: plain value read; user space replaces the entry whole.
    let credit = unsafe { SPLICE_CREDITS.get(cookie) }
        .copied()
        .unwrap_or_else(|| {
            // SAFETY: a read-only global, set before load.
            let limit = unsafe { core::ptr::read_volatile(&SPLICE_QUEUE_LIMIT) };
            SpliceCredit {
                forwarded: 0,
                redirect_limit: limit,
                pace_limit: devicelink_proxy_common::pace_mark(limit),
                pace_gen: 0,
                carry: 0,
                // SAFETY: a read-only global, set before load.
                look_mark: unsafe { core::ptr::read_volatile(&SPLICE_LOOK_MARK) },
                look_gen: 0,
            }
        });
    if link.held != credit.forwarded {
        // User space is still forwarding bytes held earlier: these must queue behind them.
        return Ok(hold(link, len, SpliceCounter::Held));
    }
    if credit.carry != 0 {
        // User space carries this connection (the kernel path fell behind): it reads these
        // off the socket, woken by the socket itself, so no notice.
        return Ok(hold(link, len, SpliceCounter::Carried));
    }
    if credit.look_mark != 0
        && link.bytes + u64::from(len) > credit.look_mark
        && link.looked_gen != credit.look_gen + 1
    {
        // Time for user space to look whether the peer's queue keeps up (the skb goes on).
        link.looked_gen = credit.look_gen + 1;
        notice(cookie);
    }
    if link.bytes + u64::from(len) > credit.pace_limit && link.paced_gen != credit.pace_gen + 1 {
        // Past the soft mark: wake user space to slow the sender down (the skb still goes on).
        link.paced_gen = credit.pace_gen + 1;
        count(SpliceCounter::Paced);
        notice(cookie);
    }
    if link.bytes + u64::from(len) > credit.redirect_limit {
        // The peer has as much queued as this direction may have: hold, which closes this
        // socket's window, until user space sees the peer drained.
        count(SpliceCounter::QueueFull);
        notice(cookie);
        return Ok(hold(link, len, SpliceCounter::Held));
    }
    let verdict = SPLICE_SOCKETS.redirect_skb(ctx, link.peer_cookie, 0) as u32;
    if verdict != sk_action::SK_PASS {
        // The peer is not in the hash yet (the two sockets of a pair enter one after the
        // other): keep the bytes on this socket; user space forwards them in order.
        notice(cookie);
        return Ok(hold(link, len, SpliceCounter::Held));
    }
    link.bytes += u64::from(len);
    if let Some(total) = SPLICE_BYTES.get_ptr_mut(link.direction) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *total += u64::from(len) };
    }
    Ok(verdict)
}

/// Cuts off the start of an skb that repeats bytes this socket already passed on, and returns
/// the length left (`None`: nothing new, drop it).
///
/// TCP queues a retransmitted segment that partly overlaps bytes already received as it came,
/// and `recvmsg` skips the overlap by sequence number; the sockmap's reader (`tcp_read_skb`)
/// hands the whole skb to this program instead, so without this the overlap would be sent to
/// the peer a second time (seen on 6.18 under heavy traffic both ways with retransmissions).
#[inline(always)]
fn skip_overlap(ctx: &SkBuffContext, link: &mut SpliceLink, len: u32) -> Option<u32> {
    // SAFETY: a read-only global, set before load.
    let cb_offset = unsafe { core::ptr::read_volatile(&SKB_CB_OFFSET) };
    if cb_offset == 0 {
        return Some(len);
    }
    // SAFETY: the context pointer is the kernel's sk_buff; the read goes through
    // bpf_probe_read_kernel, which faults safely.
    let seqs = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(
            ctx.skb
                .skb
                .cast::<u8>()
                .add(cb_offset as usize)
                .cast::<[u32; 2]>(),
        )
    };
    let Ok([seq, end_seq]) = seqs else {
        count(SpliceCounter::SeqUnknown);
        return Some(len);
    };
    // A data skb spans exactly its length (one more with a FIN): anything else means the
    // offset does not point at TCP's control block, and nothing is trimmed.
    let span = end_seq.wrapping_sub(seq);
    if span != len && span != len.wrapping_add(1) {
        count(SpliceCounter::SeqUnknown);
        return Some(len);
    }
    let end = seq.wrapping_add(len);
    if link.seq_known == 0 {
        link.seq_known = 1;
        link.next_seq = end;
        return Some(len);
    }
    let overlap = link.next_seq.wrapping_sub(seq) as i32;
    if overlap <= 0 {
        link.next_seq = end;
        return Some(len);
    }
    let overlap = overlap as u32;
    if overlap >= len {
        return None;
    }
    let mut left = overlap;
    let mut step_max = MAX_TRIM_STEP;
    // Bounded: an skb is at most 64 KiB plus frag lists; 64 steps of up to 4 KiB, shrinking
    // the step when the kernel cannot pull that much into the skb's head at once.
    for _ in 0..64 {
        if left == 0 || step_max < MIN_TRIM_STEP {
            break;
        }
        let step = if left > step_max { step_max } else { left };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            step_max /= 2;
            continue;
        }
        left -= step;
    }
    count(if left == 0 {
        SpliceCounter::OverlapTrimmed
    } else {
        SpliceCounter::OverlapUntrimmed
    });
    link.next_seq = end;
    Some(ctx.len())
}

/// Keeps an skb on its own socket (SK_PASS puts it in the socket's psock queue, readable with
/// `recv`) and counts it, so user space knows how much to forward.
#[inline(always)]
fn hold(link: &mut SpliceLink, len: u32, counter: SpliceCounter) -> u32 {
    link.held += u64::from(len);
    count(counter);
    sk_action::SK_PASS
}

/// Wakes user space for `cookie`, which started holding bytes.
#[inline(always)]
fn notice(cookie: u64) {
    if SPLICE_NOTICES.output::<u64>(&cookie, 0).is_err() {
        count(SpliceCounter::NoticeLost);
    }
}

#[inline(always)]
fn count(counter: SpliceCounter) {
    if let Some(slot) = SPLICE_EVENTS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *slot += 1 };
    }
}
