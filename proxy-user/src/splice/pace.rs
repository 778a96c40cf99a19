//! Flow control: each direction may have at most `--splice-max-queued` bytes redirected and not
//! yet acknowledged by its receiver, and a sender is slowed well before that bound.
//!
//! The kernel queues redirected bytes for the peer socket without any bound of its own (the skbs
//! leave the source's receive buffer, whose window reopens at once), so a fast client uploading
//! to a slow device would otherwise have the proxy buffer the whole upload in kernel memory while
//! the client believed it delivered. Each time a quarter of the limit more is redirected the
//! verdict program wakes user space (`pace_limit`, a ring buffer notice), which either moves the
//! marks on (the receiver keeps up) or clamps the source's TCP window until the queue is back
//! under a quarter ([`pace`]): the sender slows, nothing is copied. A sender that still reaches
//! the hard limit (`redirect_limit`) is stopped by a hold (see the `hold` module).

use std::{io, time::Duration};

use devicelink_proxy_common::{Direction, SpliceCredit, pace_mark};
use tokio::time::Instant;
use tracing::debug;

use super::{
    direction::{BOTH, PerDirection},
    drain::{LastLook, drain_eta},
    hold::hold_rcvbuf,
    socket::{Sockets, SplicedSocket, queued_in_proxy},
};
use crate::{copy::CarryLimits, kernel::KernelPlane, sockopt};

/// The receive window a paced sender is held to: a trickle (2 KiB per round trip: 70 KB/s across
/// the internet, 80 MB/s at a LAN round trip, but 200 MB/s and more between namespaces on one
/// host, where a slow receiver cannot keep up with it; see [`pace`]) that the receiver drains
/// while the queue shrinks.
const PACED_WINDOW: i32 = 2048;

/// How long after clamping the queue may still grow, at least: the sender may send the window
/// it was already granted (up to a receive buffer, ~8 MB, about 5 ms at the splice's full speed
/// between namespaces on one host), and it takes about a round trip to arrive (twice the
/// sender's smoothed RTT is allowed).
const CLAMP_SETTLE: Duration = Duration::from_millis(5);

/// How much a clamped queue may grow again once settled, before the clamp counts as failed.
const CLAMP_GROWTH: u64 = 1 << 20;

/// The receive buffer of a sender the clamp failed to slow (`SO_RCVBUF`, doubled by the
/// kernel): the hold at the hard limit keeps at most about this much for user space to copy.
const PACED_RCVBUF: u32 = 128 << 10;

/// The receive buffer to give a sender whose clamp failed, last advertised a `window` of that
/// many bytes: [`PACED_RCVBUF`], or the window if larger. TCP never takes back a window it
/// advertised, and a buffer shrunk under it makes the kernel prune the receive queue and drop
/// what the sender sends into it, which the sender resends only at its retransmission timeout,
/// doubled each time (seen: senders idle 0.2-0.9 s; queue prunes in two rounds of the bench's
/// throughput measures through `auto` went from 42 to 7).
fn paced_rcvbuf(window: u32) -> u32 {
    PACED_RCVBUF.max(window)
}

/// How the sender feeding one spliced socket is being slowed.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// The `TCP_WINDOW_CLAMP` to restore when a paced direction may run again; see
    /// [`unclamped_window`].
    window_clamp: i32,
    /// Whether its window is clamped to slow its sender (the direction it feeds is paced).
    paced: bool,
    /// What the clamp on its window may still let in.
    clamped: Clamp,
    /// Whether the clamp failed to slow its sender and was lifted (see [`pace`]); until the
    /// queue is back under the mark its receive buffer is small and the hold stops the sender.
    clamp_failed: bool,
}

/// What a clamp on a source socket's window may still let in, to tell a clamp that works from
/// one whose trickle outruns the receiver (see [`clamp_failing`]).
#[derive(Clone, Copy, Debug)]
struct Clamp {
    /// When the window granted before the clamp has had time to arrive.
    settles_at: Instant,
    /// The least queued seen since it settled (0 until then).
    low: u64,
    /// Above this much queued the clamp has failed, settled or not; see [`clamp_ceiling`].
    ceiling: u64,
}

impl Default for Clamp {
    fn default() -> Self {
        Self {
            settles_at: Instant::now(),
            low: 0,
            ceiling: 0,
        }
    }
}

/// One connection's pacing: per direction, its last look while it is paced, to time the next
/// one from the drain rate.
#[derive(Default)]
pub(super) struct Pacer {
    watch: PerDirection<LastLook>,
}

impl Pacer {
    /// Lets every paced sender run at full speed again, for a connection user space now carries
    /// itself (a copy reads only what it can write: no other flow control needed). The marks
    /// stay: when the kernel path takes over again they apply from where they were.
    pub(super) fn release(
        &mut self,
        sockets: &mut Sockets,
        limits: &CarryLimits,
    ) -> io::Result<()> {
        for src in sockets.both_mut() {
            run_at_full_speed(src, limits)?;
        }
        self.watch = PerDirection::default();
        Ok(())
    }

    /// [`pace`] for both directions not `finished`; returns when the next paced look is due, if
    /// either direction is paced.
    ///
    /// `queue_limit`: this connection's share of `--splice-max-queued` ([`link_share`]).
    pub(super) fn look(
        &mut self,
        plane: &KernelPlane,
        sockets: &mut Sockets,
        limits: &CarryLimits,
        queue_limit: u64,
        finished: &PerDirection<bool>,
        now: Instant,
    ) -> io::Result<Option<Instant>> {
        let mut wake: Option<Instant> = None;
        for direction in BOTH {
            if finished[direction] {
                continue;
            }
            match pace(plane, sockets, direction, limits, queue_limit, now)? {
                Some(excess) => {
                    let clamp_failed = sockets.source(direction).pacing.clamp_failed;
                    let look = next_pace_look(self.watch[direction], now, excess, clamp_failed);
                    self.watch[direction] = Some((now, excess));
                    wake = Some(wake.map_or(now + look, |at| at.min(now + look)));
                }
                None => self.watch[direction] = None,
            }
        }
        Ok(wake)
    }
}

/// How much of `--splice-max-queued` (`limit`) each direction of a connection may have queued
/// when `busy` connections of its link are moving bytes through the kernel (where a link's
/// connections may move between paths): all of it for one or two, down to a quarter of it for
/// eight or more (twice the limit shared among them).
///
/// What a connection has queued is what the kernel must send before the connection can move to
/// user space, and on the CPU its bytes arrive on it sends that slowly when moving pays. With
/// the whole limit each, eight streams each way queued up to 512 MiB toward the slower side,
/// and a trial waited up to a second for the kernel to send it, carrying part of the link in
/// user space and part in the kernel meanwhile (slower than either alone). A single bulk stream
/// needs the whole limit (with a quarter of it: a third to a half of its rate, its sender
/// stopped at the hard limit between namespaces), eight streams do not (a quarter each: the
/// same rate).
pub(super) fn link_share(limit: u64, busy: usize) -> u64 {
    let busy = u64::try_from(busy.max(1)).unwrap_or(u64::MAX);
    (limit.saturating_mul(2) / busy).clamp(limit / 4, limit)
}

/// Above how much queued a clamp set at `queued`, on a sender granted `window` bytes, has
/// failed even before it settled: half the limit, or what the granted window explains if there
/// is room for another window after that under three quarters of the limit.
///
/// Half the limit alone misjudges single bulk streams: the clamp may come late (the verdict
/// program wakes user space at most every half mark), and a sender granted an 8 MB window at
/// 30 MiB queued legitimately takes the queue to 38 MiB; each such false failure sends the
/// stream into holds (and copies) at the hard limit. But when the window is large against the
/// limit (a fast sender into `--splice-max-queued 8M`), waiting for it leaves no room to stop a
/// clamp that fails for real before the hard limit, where holds with a full receive buffer copy
/// a lot. Without `tcpi_rcv_wnd` in `TCP_INFO` (kernels before 6.2) the window reads 0: half the
/// limit.
fn clamp_ceiling(queued: u64, window: u64, limit: u64) -> u64 {
    let explained = queued + window;
    if explained + window <= limit / 4 * 3 {
        explained.max(limit / 2)
    } else {
        limit / 2
    }
}

/// Whether a clamp fails to slow its sender: the queue passed its ceiling ([`clamp_ceiling`]),
/// or once the window granted before had time to arrive it grew again by a MiB. Across the
/// internet a clamped sender trickles at kilobytes per second and never grows a queue that fast.
fn clamp_failing(clamp: Clamp, now: Instant, queued: u64, limit: u64) -> bool {
    queued > clamp.ceiling.max(limit / 2)
        || (now >= clamp.settles_at && clamp.low > 0 && queued > clamp.low + CLAMP_GROWTH)
}

/// When a paced direction looks again whether its receiver caught up: when the drain rate seen
/// since its last look says the excess will be gone, within 2-10 ms. At the moment the clamp is
/// lifted a quarter of the limit is still queued (about 10 ms of work for a fast receiver
/// between namespaces on one host), so a look a little late costs nothing, but one far too late
/// lets the psock backlog run dry: with looks backing off to 50 ms a saturated stream ran 15%
/// slower (11-11.8 against 13-13.8 Gbit/s). Each look is a wake-up of the proxy, and with
/// tick-based CPU accounting the network work that runs while it is awake is charged to it
/// (`TCP_INFO` takes the socket lock, and releasing it runs pending softirq work in the proxy's
/// context): a look every millisecond cost 0.08 s of proxy CPU per GiB. Measured on a single
/// stream (medians of 6 runs of 4 s, same throughput, with [`clamp_ceiling`] in place): 2-10 ms
/// costs 0.061 s of proxy CPU per GiB uploading and 0.046 downloading, against 0.070 and 0.065
/// with 1-5 ms. Right after the clamp the queue still grows (the window already granted), which
/// says nothing about the drain: look again soon.
///
/// A direction whose clamp failed (`clamp_failed`, see [`pace`]) is stopped by holds, not by
/// these looks, which only give its receive buffer back once the queue is under the mark: they
/// come every 10-20 ms (every 1-5 ms cost the proxy 0.04-0.05 s of CPU per GiB with eight
/// streams each way).
fn next_pace_look(last: LastLook, now: Instant, excess: u64, clamp_failed: bool) -> Duration {
    let (min, max) = if clamp_failed {
        (Duration::from_millis(10), Duration::from_millis(20))
    } else {
        (Duration::from_millis(2), Duration::from_millis(10))
    };
    drain_eta(last, now, excess).map_or(min, |eta| eta.clamp(min, max))
}

/// Slows the sender of `direction` before its queue limit makes the verdict program hold (and
/// user space copy) its bytes, and lets it run again once the receiver caught up. While the
/// direction is paced, returns how much more its receiver must drain (see [`next_pace_look`]).
///
/// Each time the direction has redirected a quarter of the limit more ([`pace_mark`]), the
/// verdict program wakes user space. If the receiver keeps up (a quarter of the limit or less is
/// queued), both marks move on. Otherwise user space clamps the source socket's TCP window
/// (`TCP_WINDOW_CLAMP`); TCP does not take back window it already advertised, so the sender may
/// still send up to one receive buffer (an eighth of the limit at most), which the remaining
/// three quarters have room for. When the queue is back under a quarter the clamp is lifted
/// (the window grows back within a few round trips) and the marks move on. A saturated upload
/// then has none of its bytes copied, where holding at the hard limit alone copies a good share.
///
/// The clamp slows a sender only if its trickle is slower than the receiver. Between namespaces
/// on one host (round trips of ~10 µs) it is not when the receiver is slow, and then clamping
/// many connections floods the machine with 2 KiB segments, slower than the userspace copy. So
/// if the queue of a clamped direction grows again ([`clamp_failing`]), the clamp is lifted and
/// the receive buffer made small instead: the sender runs into the hard limit, where the hold
/// shuts its window with few bytes to copy. Across the internet the trickle is far slower than
/// any receiver and the clamp does the work.
fn pace(
    plane: &KernelPlane,
    sockets: &mut Sockets,
    direction: Direction,
    limits: &CarryLimits,
    limit: u64,
    now: Instant,
) -> io::Result<Option<u64>> {
    let (src, dst) = sockets.ends_mut(direction);
    let (redirected, _) = plane.link_bytes(src.cookie);
    if !src.pacing.paced && redirected <= src.credit.pace_limit {
        return Ok(None);
    }
    let queued = queued_in_proxy(dst, redirected)?;
    let hard_limit = redirected + limit.saturating_sub(queued);
    if limit < u64::from(limits.splice_max_queued) && hard_limit < src.credit.redirect_limit {
        // The connection's share of the link's queue is less than the whole limit (more of its
        // connections are busy): the hard limit comes down to it now, not at the next grant,
        // which a sender the clamp does not slow would otherwise reach only at the old one.
        // With the whole limit the last grant stands: bytes user space wrote since count
        // against it, and bringing it down for those would hold a saturated stream sooner.
        let credit = SpliceCredit {
            redirect_limit: hard_limit,
            ..src.credit
        };
        src.grant(plane, credit)?;
    }
    let pace_at = pace_mark(limit);
    if queued > pace_at {
        if !src.pacing.paced && !src.pacing.clamp_failed {
            src.pacing.window_clamp = sockopt::window_clamp(&src.stream)?;
            sockopt::set_window_clamp(&src.stream, PACED_WINDOW)?;
            src.pacing.paced = true;
            // The window already granted arrives within about a round trip (this socket mostly
            // receives: its receive-side estimate is the fresher one).
            let info = sockopt::tcp_info(&src.stream)?;
            let rtt = Duration::from_micros(u64::from(info.tcpi_rtt.max(info.tcpi_rcv_rtt)));
            src.pacing.clamped = Clamp {
                settles_at: now + CLAMP_SETTLE.max(rtt * 2),
                low: 0,
                ceiling: clamp_ceiling(queued, u64::from(info.tcpi_rcv_wnd), limit),
            };
        } else if src.pacing.paced && clamp_failing(src.pacing.clamped, now, queued, limit) {
            // The trickle outruns the receiver (a round trip of microseconds). Clamping on only
            // floods the machine with tiny segments; let the hold at the hard limit stop the
            // sender (a shut window), with a small receive buffer so that the hold keeps few
            // bytes to copy.
            sockopt::set_window_clamp(&src.stream, unclamped_window(src)?)?;
            let window = sockopt::tcp_info(&src.stream)?.tcpi_rcv_wnd;
            sockopt::set_rcvbuf(&src.stream, paced_rcvbuf(window))?;
            debug!(
                queued,
                low = src.pacing.clamped.low,
                ceiling = src.pacing.clamped.ceiling,
                "the window clamp does not slow this sender; its queue limit stops it instead"
            );
            src.pacing.paced = false;
            src.pacing.clamp_failed = true;
        } else if src.pacing.paced && now >= src.pacing.clamped.settles_at {
            // The lowest the queue got since the clamp settled.
            src.pacing.clamped.low = match src.pacing.clamped.low {
                0 => queued,
                low => low.min(queued),
            };
        }
        return Ok(Some(queued - pace_at));
    }
    run_at_full_speed(src, limits)?;
    // The receiver keeps up (or caught up): move both marks on from what is queued now. The
    // limit is a bound on what is queued, not a budget of bytes: without this a direction
    // whose receiver keeps up would still stop at every `limit` bytes. The next notice comes at
    // least half a mark later: a queue hovering just under the mark (a receiver a little slower
    // than the sender) would otherwise wake the proxy every few hundred KB, and the overshoot
    // this allows is well inside the margin above the mark.
    let credit = SpliceCredit {
        redirect_limit: redirected + limit.saturating_sub(queued),
        pace_limit: redirected + pace_at.saturating_sub(queued).max(pace_at / 2),
        pace_gen: src.credit.pace_gen + 1,
        ..src.credit
    };
    src.grant(plane, credit)?;
    Ok(None)
}

/// Lifts whatever slows the sender feeding `src`: its window clamp, or the small receive
/// buffer a failed clamp left.
fn run_at_full_speed(src: &mut SplicedSocket, limits: &CarryLimits) -> io::Result<()> {
    if src.pacing.paced {
        sockopt::set_window_clamp(&src.stream, unclamped_window(src)?)?;
        src.pacing.paced = false;
    }
    if src.pacing.clamp_failed {
        sockopt::set_rcvbuf(&src.stream, hold_rcvbuf(limits.splice_max_queued))?;
        src.pacing.clamp_failed = false;
        debug!("the queue is back under the mark: the sender's receive buffer is given back");
    }
    Ok(())
}

/// The window clamp a paced socket gets back: the one it had when pacing began, or its receive
/// buffer if that is larger. The kernel sets the clamp from the receive buffer only once it has
/// seen a few segments (64 KB at accept, ~7.5 MB a moment later with a 4 MiB buffer), and
/// afterwards only when the segments' size-to-memory ratio changes, which a steady bulk stream's
/// does not: a socket paced in its first moments and given back that early value would keep a
/// 64 KB window for the rest of the connection, far less than a bulk stream needs. The receive
/// buffer is the most the window could use anyway.
fn unclamped_window(src: &SplicedSocket) -> io::Result<i32> {
    Ok(src.pacing.window_clamp.max(sockopt::rcvbuf(&src.stream)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_clamp_fails_only_once_settled_and_growing_again() {
        let limit = 64 * MIB;
        let settles = Instant::now() + CLAMP_SETTLE;
        let before = settles - Duration::from_millis(1);
        let after = settles + Duration::from_millis(1);
        let clamp = |low, ceiling| Clamp {
            settles_at: settles,
            low,
            ceiling,
        };
        // Still settling: the window granted before the clamp may arrive, however much.
        assert!(!clamp_failing(clamp(0, 0), before, 30 * MIB, limit));
        // Settled, no low point seen yet: nothing to compare with.
        assert!(!clamp_failing(clamp(0, 0), after, 30 * MIB, limit));
        // Settled at 20 MiB: draining, or within a MiB of it, is the clamp working.
        assert!(!clamp_failing(clamp(20 * MIB, 0), after, 18 * MIB, limit));
        assert!(!clamp_failing(clamp(20 * MIB, 0), after, 21 * MIB, limit));
        // Grown again by more than a MiB: the trickle outruns the receiver.
        assert!(clamp_failing(
            clamp(20 * MIB, 0),
            after,
            21 * MIB + 1,
            limit
        ));
        // Half the limit fails it at any time...
        assert!(clamp_failing(clamp(0, 0), before, 32 * MIB + 1, limit));
        // ...unless the window granted before a late clamp explains it: clamped at 30 MiB with
        // 8 MiB granted, the queue may reach 38 MiB.
        let late = clamp_ceiling(30 * MIB, 8 * MIB, limit);
        assert_eq!(late, 38 * MIB);
        assert!(!clamp_failing(clamp(0, late), before, 38 * MIB, limit));
        assert!(clamp_failing(clamp(0, late), before, 38 * MIB + 1, limit));
    }

    #[test]
    fn a_busy_link_shares_twice_the_limit_down_to_a_quarter_each() {
        let limit = 64 * MIB;
        assert_eq!(link_share(limit, 0), limit, "not counted yet: all of it");
        assert_eq!(link_share(limit, 1), limit);
        assert_eq!(
            link_share(limit, 2),
            limit,
            "two bulk streams keep all of it"
        );
        assert_eq!(link_share(limit, 4), 32 * MIB);
        assert_eq!(link_share(limit, 8), 16 * MIB);
        assert_eq!(link_share(limit, 16), 16 * MIB, "never under a quarter");
    }

    #[test]
    fn a_late_clamp_waits_for_the_granted_window_only_with_room_for_another() {
        let limit = 64 * MIB;
        // On time: half the limit.
        assert_eq!(clamp_ceiling(17 * MIB, 8 * MIB, limit), 32 * MIB);
        // Late, with room for another window under 48 MiB: what the window explains.
        assert_eq!(clamp_ceiling(30 * MIB, 8 * MIB, limit), 38 * MIB);
        // Too late for that: half the limit.
        assert_eq!(clamp_ceiling(34 * MIB, 8 * MIB, limit), 32 * MIB);
        // A window large against a small limit (8M): half the limit.
        assert_eq!(clamp_ceiling(3 * MIB, 2 * MIB, 8 * MIB), 4 * MIB);
    }

    #[test]
    fn pace_looks_follow_the_drain_and_slow_down_once_the_clamp_failed() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // No drain rate yet: look soon.
        assert_eq!(next_pace_look(None, now, MIB, false), ms(2));
        assert_eq!(next_pace_look(None, now, MIB, true), ms(10));
        // 4 MiB drained in 2 ms, 6 MiB to go: 3 ms.
        let last = Some((now - ms(2), 10 * MIB));
        assert_eq!(drain_eta(last, now, 6 * MIB), Some(ms(3)));
        assert_eq!(next_pace_look(last, now, 6 * MIB, false), ms(3));
        assert_eq!(next_pace_look(last, now, 6 * MIB, true), ms(10));
        // Growing, not draining: no estimate; bounded either way.
        assert_eq!(drain_eta(Some((now - ms(2), MIB)), now, 2 * MIB), None);
        let slow = Some((now - ms(2), 10 * MIB + 1));
        assert_eq!(next_pace_look(slow, now, 10 * MIB, false), ms(10));
        assert_eq!(next_pace_look(slow, now, 10 * MIB, true), ms(20));
    }

    #[test]
    fn a_failed_clamp_never_shrinks_the_buffer_under_the_advertised_window() {
        assert_eq!(paced_rcvbuf(0), PACED_RCVBUF);
        assert_eq!(
            paced_rcvbuf(3072),
            PACED_RCVBUF,
            "a clamped window: the small buffer"
        );
        assert_eq!(
            paced_rcvbuf(4 << 20),
            4 << 20,
            "a window still open: room for it"
        );
    }

    #[test]
    fn the_paced_receive_buffer_is_below_any_hold_buffer() {
        // A clamp that gave way must leave the hold less to copy than a normal one would.
        for max_queued in [256 << 10, 8 << 20, 64 << 20, 1 << 30] {
            assert!(PACED_RCVBUF < hold_rcvbuf(max_queued), "{max_queued}");
        }
    }
}
