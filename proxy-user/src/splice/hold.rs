//! Held bytes: those the verdict program kept on a source socket instead of redirecting them,
//! which user space forwards itself before it lets the kernel path run again.
//!
//! The verdict program holds in two cases. While the two sockets enter the hash one after the
//! other, a socket whose peer is not in the hash yet cannot be redirected from; and a direction
//! that reached its hard queue limit (`redirect_limit`) is stopped. Either way it keeps those
//! bytes on the socket (readable with `recv`) and keeps holding every later byte until user
//! space has forwarded the held ones (the `forwarded` count in `SPLICE_CREDITS` catches up), so
//! none overtakes. Held bytes stay charged to the source's receive buffer, so its window shuts:
//! that is what stops a sender the pacing did not slow.

use std::{io, time::Duration};

use devicelink_proxy_common::{Direction, SpliceCredit};
use tokio::time::Instant;
use tracing::debug;

use super::{
    direction::{BOTH, PerDirection},
    drain::{LastLook, next_drain_look},
    nonblocking::{recv_nonblocking, send_nonblocking},
    socket::{Sockets, SplicedSocket, queued_in_proxy, target_caught_up},
};
use crate::{kernel::KernelPlane, session::ConnectionCounters, sockopt};

/// After held bytes were forwarded (or at start), look again after these delays: a verdict run
/// that read the old forwarded count may still be adding to the held count.
const HELD_RECHECKS: [Duration; 3] = [
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
];

/// How many rounds one call forwards newly held bytes before it yields to the connection's
/// other work (it is called again 1 ms later).
const CATCH_UP_ROUNDS: usize = 16;

/// The most held bytes one round copies.
const MAX_ROUND_BYTES: u64 = 16 << 20;

/// The receive buffer fixed on spliced sockets for `--splice-max-queued`: a hold keeps about one
/// window of bytes on the source socket, which user space then copies, so it is kept well under
/// the queue limit (the kernel path moves the rest), yet deep enough for a fast client far away
/// (2 MiB carries about 160 Mbit/s at 100 ms round trip).
pub(super) fn hold_rcvbuf(max_queued: u32) -> u32 {
    // The memory budget counts this buffer in a connection's worst case: one formula for both.
    devicelink_spec::memory::splice_receive_buffer(u64::from(max_queued)) as u32
}

#[derive(Debug, PartialEq, Eq)]
enum HeldState {
    /// Nothing held beyond what was forwarded.
    None,
    /// Held bytes were forwarded just now, and the kernel path is open again.
    Forwarded,
    /// Held bytes are counted but not all forwarded yet: not readable yet (still on their way
    /// into the psock queue), or more kept arriving; look again shortly.
    Pending,
    /// The direction reached its queue limit: the target must drain to half of it (this many
    /// bytes more) before held bytes go on.
    Waiting { excess: u64 },
}

/// One connection's forwarding of held bytes: when to look again, and the buffer it copies
/// through.
pub(super) struct Holds {
    /// The step of [`HELD_RECHECKS`] due next, and when; `None` once the last step passed.
    recheck: Option<(usize, Instant)>,
    /// Per direction, while it waits for its target to drain below half the queue limit, its
    /// last look, to time the next one from the drain rate.
    drain_watch: PerDirection<LastLook>,
    /// Where held bytes are peeked and read off, kept from one look to the next while a
    /// direction is forwarding (the next look follows within a millisecond): a hold is
    /// forwarded over many rounds of up to megabytes each, and a fresh buffer per look showed
    /// in profiles of bulk streams that hit holds. Dropped at any other look, since waiting for
    /// a device to drain can take seconds on a slow link: connections holding at once must not
    /// each keep megabytes meanwhile.
    buf: Vec<u8>,
}

impl Holds {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            // At start one look 1 ms later is enough: a verdict run that failed to redirect
            // (peer not in the hash yet) began before the sockets entered and ends within
            // microseconds. The longer rechecks only follow an actual forward.
            recheck: Some((HELD_RECHECKS.len() - 1, now + HELD_RECHECKS[0])),
            drain_watch: PerDirection::default(),
            buf: Vec::new(),
        }
    }

    /// Forwards what each direction holds ([`forward_held`]), each direction allowed
    /// `queue_limit` queued (the connection's share of `--splice-max-queued`). Returns when the
    /// next look is due for a direction that waits for its target to drain, if one does.
    pub(super) fn forward(
        &mut self,
        plane: &KernelPlane,
        sockets: &mut Sockets,
        queue_limit: u64,
        metrics: &ConnectionCounters,
        now: Instant,
    ) -> io::Result<Option<Instant>> {
        let mut drain_wake: Option<Instant> = None;
        let mut forwarding = false;
        for direction in BOTH {
            let state = forward_held(
                plane,
                sockets,
                direction,
                queue_limit,
                metrics,
                &mut self.buf,
            )?;
            match state {
                HeldState::Forwarded => {
                    forwarding = true;
                    self.recheck = Some((0, now + HELD_RECHECKS[0]));
                    self.drain_watch[direction] = None;
                }
                HeldState::Waiting { excess } => {
                    let wait = next_drain_look(self.drain_watch[direction], now, excess);
                    self.drain_watch[direction] = Some((now, excess));
                    drain_wake = Some(drain_wake.map_or(now + wait, |at| at.min(now + wait)));
                }
                // Not all forwarded yet: look again at the shortest delay, from now (a recheck
                // time already past would otherwise advance the schedule to its longer steps).
                HeldState::Pending => self.recheck = Some((0, now + HELD_RECHECKS[0])),
                HeldState::None => {}
            }
        }
        if !forwarding {
            self.buf = Vec::new();
        }
        Ok(drain_wake)
    }

    /// Moves the recheck schedule on to its next step once the current one is due.
    pub(super) fn advance_recheck(&mut self, now: Instant) {
        if let Some((step, at)) = self.recheck
            && now >= at
        {
            self.recheck = HELD_RECHECKS
                .get(step + 1)
                .map(|delay| (step + 1, now + *delay));
        }
    }

    /// Looks again shortly, as after a forward: the connection came back from user space, and
    /// bytes held meanwhile may still be on their way into the psock queue.
    pub(super) fn recheck_soon(&mut self, now: Instant) {
        self.recheck = Some((0, now + HELD_RECHECKS[0]));
    }

    /// When the next recheck is due, if one is.
    pub(super) fn recheck_at(&self) -> Option<Instant> {
        self.recheck.map(|(_, at)| at)
    }

    /// Reads off both sockets the forwarded bytes still at their heads. They are not the
    /// peer's concern, but a socket closed with unread bytes sends a reset, not a FIN.
    pub(super) fn discard_all_forwarded(&mut self, sockets: &mut Sockets) {
        for socket in sockets.both_mut() {
            let _ = discard_forwarded(socket, &mut self.buf);
        }
    }
}

/// Reads off `src` the held bytes already forwarded (with `MSG_PEEK`) that are still at its head.
/// False if some are left: the socket's receive path refused for the moment (it does while new
/// bytes wait for the verdict program), and they are taken at the next look.
fn discard_forwarded(src: &mut SplicedSocket, buf: &mut Vec<u8>) -> io::Result<bool> {
    while src.to_discard > 0 {
        let want = src.to_discard.min(MAX_ROUND_BYTES as usize);
        let n = recv_nonblocking(&src.stream, buf, want, 0)?;
        if n == 0 {
            return Ok(false);
        }
        src.to_discard -= n;
    }
    Ok(true)
}

/// Forwards the bytes the verdict program held on `direction`'s source and lets it redirect
/// again.
///
/// A direction that hit its queue limit first waits for the target to drain to half of it and
/// to have send-buffer room for every held byte, so that one round forwards them all and the
/// next stretch runs in the kernel, and for every redirected byte to have entered the target's
/// send queue, so that none is overtaken. Then, per round, the held bytes are copied with
/// `MSG_PEEK` and written to the target, and the verdict program is told (from then on it
/// redirects, behind them) if it held nothing more meanwhile.
///
/// Forwarded bytes are read off the source only once the direction is handed back. Until then
/// they stay charged to its receive buffer, which keeps the sender's window shut, so the held
/// count stops growing and the next round can hand back. Reading them off after each round
/// would reopen the window to a sender with more to send: its new bytes would be held behind
/// the rest, round after round, and a saturated direction would stay on this copy path.
fn forward_held(
    plane: &KernelPlane,
    sockets: &mut Sockets,
    direction: Direction,
    limit: u64,
    metrics: &ConnectionCounters,
    buf: &mut Vec<u8>,
) -> io::Result<HeldState> {
    let (src, dst) = sockets.ends_mut(direction);
    let mut state = HeldState::None;
    for _ in 0..CATCH_UP_ROUNDS {
        let (redirected, held) = plane.link_bytes(src.cookie);
        let pending = held.saturating_sub(src.user_read);
        if pending == 0 {
            if src.credit.forwarded != src.user_read {
                // Everything held is forwarded, but the verdict program was not told (it held
                // more while the last round wrote): tell it now, if it still held nothing more.
                if !hand_back(
                    plane,
                    src,
                    redirected,
                    queued_in_proxy(dst, redirected)?,
                    limit,
                )? {
                    continue;
                }
            }
            if !discard_forwarded(src, buf)? {
                return Ok(HeldState::Pending);
            }
            return Ok(state);
        }
        // While it holds, the verdict program redirects nothing: `redirected` stays current.
        let queued = queued_in_proxy(dst, redirected)?;
        if state == HeldState::None {
            // Room for the held bytes too, so that writing them does not wait on the target
            // (but never wait for room an empty queue cannot give).
            let over_limit = if queued > 0 {
                (queued + pending).saturating_sub(limit / 2)
            } else {
                0
            };
            // And room in the target's send buffer for all of them, so that one round
            // forwards them all.
            let payload_room = u64::try_from(sockopt::sndbuf(&dst.stream)? / 2).unwrap_or(0);
            let over_room = sockopt::unacked_outq(&dst.stream)?
                .saturating_sub(payload_room.saturating_sub(pending));
            let excess = over_limit.max(over_room);
            if excess > 0 {
                return Ok(HeldState::Waiting { excess });
            }
        }
        if !target_caught_up(dst, redirected)? {
            // Redirected bytes still wait in the target's psock queue; written now, the held
            // bytes would overtake them.
            return Ok(HeldState::Pending);
        }
        // The bytes already forwarded are still at the head of the socket: peek past them.
        // Held bytes are charged to the receive buffer, which bounds them; a round takes at
        // most this much (the next round takes the rest).
        let skip = src.to_discard;
        let want = skip + pending.min(MAX_ROUND_BYTES) as usize;
        let peeked = recv_nonblocking(&src.stream, buf, want, libc::MSG_PEEK)?;
        if peeked <= skip {
            // Counted but not readable yet: still on its way into the psock queue.
            return Ok(HeldState::Pending);
        }
        // Never wait on the target here: while this task waited, the other direction could not
        // be served, and a device that echoes would stop reading.
        let written = send_nonblocking(&dst.stream, &buf[skip..peeked])?;
        if written == 0 {
            return Ok(HeldState::Pending);
        }
        dst.user_written += written as u64;
        src.user_read += written as u64;
        src.to_discard += written;
        metrics.add_bytes(direction, written as u64);
        let handed_back = hand_back(plane, src, redirected, queued + written as u64, limit)?;
        debug!(written, queued, handed_back, "forwarded held bytes");
        if handed_back && !discard_forwarded(src, buf)? {
            return Ok(HeldState::Pending);
        }
        if written < peeked - skip {
            // The target is full: the rest waits for the next look.
            return Ok(HeldState::Pending);
        }
        state = HeldState::Forwarded;
    }
    Ok(HeldState::Pending)
}

/// Lets the verdict program redirect `src`'s bytes again, behind the `src.user_read` bytes
/// user space forwarded, with a new queue limit from what is `queued` now; only if it held
/// nothing more than those (a byte held after that must go through user space too, behind
/// them). The held count is read right before the update, to keep that window to two
/// syscalls. Returns whether it was handed back.
fn hand_back(
    plane: &KernelPlane,
    src: &mut SplicedSocket,
    redirected: u64,
    queued: u64,
    limit: u64,
) -> io::Result<bool> {
    if plane.link_bytes(src.cookie).1 != src.user_read {
        return Ok(false);
    }
    let credit = SpliceCredit {
        forwarded: src.user_read,
        redirect_limit: redirected + limit.saturating_sub(queued),
        ..src.credit
    };
    src.grant(plane, credit)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_buffer_stays_between_a_quarter_and_four_mebibytes() {
        assert_eq!(hold_rcvbuf(1 << 20), 256 << 10);
        assert_eq!(hold_rcvbuf(8 << 20), 1 << 20);
        assert_eq!(hold_rcvbuf(64 << 20), 4 << 20);
        assert_eq!(hold_rcvbuf(u32::MAX), 4 << 20);
    }

    #[test]
    fn rechecks_back_off_after_a_forward_and_then_stop() {
        let start = Instant::now();
        let mut holds = Holds::new(start);
        // At start a single look 1 ms later.
        assert_eq!(holds.recheck_at(), Some(start + HELD_RECHECKS[0]));
        let due = start + HELD_RECHECKS[0];
        holds.advance_recheck(due);
        assert_eq!(holds.recheck_at(), None);
        // After a forward: 1, 10 and 100 ms, each from the look before.
        holds.recheck = Some((0, due));
        holds.advance_recheck(due);
        assert_eq!(holds.recheck_at(), Some(due + HELD_RECHECKS[1]));
        let later = due + HELD_RECHECKS[1];
        holds.advance_recheck(later - Duration::from_micros(1));
        assert_eq!(holds.recheck_at(), Some(later), "not due yet: unchanged");
        holds.advance_recheck(later);
        assert_eq!(holds.recheck_at(), Some(later + HELD_RECHECKS[2]));
        holds.advance_recheck(later + HELD_RECHECKS[2]);
        assert_eq!(holds.recheck_at(), None);
    }
}
