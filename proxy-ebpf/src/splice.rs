//! The sk_skb stream verdict: the in-kernel splice between a client socket and its device socket.
//!
//! User space puts both sockets of a connection into `SPLICE_SOCKETS` (keyed by socket cookie) and
//! records each one's peer in `SPLICE_LINKS`. Every skb that then arrives on either socket is
//! redirected out of the peer (flags 0 = egress), so payload never reaches user space.

use aya_ebpf::{
    bindings::sk_action,
    helpers::generated::bpf_get_socket_cookie,
    macros::map,
    maps::{HashMap, PerCpuArray, SockHash},
    programs::SkBuffContext,
};
use devicelink_proxy_common::{Direction, MAX_SPLICED_SOCKETS, SpliceCounter, SpliceLink};

#[map]
static SPLICE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map]
static SPLICE_LINKS: HashMap<u64, SpliceLink> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Bytes that arrived on a socket already in `SPLICE_SOCKETS` but not yet armed (its link entry
/// not written), keyed by cookie. They stay on that socket (in its psock queue), where user space
/// picks them up; it creates the entry before inserting the socket and reads it after arming.
#[map]
static SPLICE_HELD: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

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
    let Some(link) = SPLICE_LINKS.get_ptr_mut(&cookie) else {
        // Not armed yet (user space arms a pair only once both sockets are in the hash) or being
        // torn down: keep the bytes on this socket rather than drop them.
        count(SpliceCounter::Unlinked);
        if let Some(held) = SPLICE_HELD.get_ptr_mut(&cookie) {
            // SAFETY: a valid map value pointer; one socket's skbs are processed one at a time.
            unsafe { *held += u64::from(len) };
        }
        return Ok(sk_action::SK_PASS);
    };
    // SAFETY: a valid map value pointer; one socket's skbs are processed one at a time.
    let link = unsafe { &mut *link };
    link.bytes += u64::from(len);
    if let Some(total) = SPLICE_BYTES.get_ptr_mut(link.direction) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *total += u64::from(len) };
    }
    let verdict = SPLICE_SOCKETS.redirect_skb(ctx, link.peer_cookie, 0);
    Ok(verdict as u32)
}

#[inline(always)]
fn count(counter: SpliceCounter) {
    if let Some(slot) = SPLICE_EVENTS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *slot += 1 };
    }
}
