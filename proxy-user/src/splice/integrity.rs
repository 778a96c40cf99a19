//! The integrity check: a direction whose byte counts say the kernel passed bytes twice is reset
//! rather than carried on as a corrupted stream.

use std::{io, time::Duration};

use devicelink_proxy_common::Direction;
use tokio::time::Instant;
use tracing::error;

use super::{
    direction::{BOTH, PerDirection, target_side},
    socket::{Sockets, bytes_entered},
};
use crate::{copy::Outcome, kernel::KernelPlane, session::ConnectionCounters, sockopt};

/// How often a connection's byte counts are checked for bytes the kernel passed twice, besides
/// once per direction before its FIN is passed on. Each check reads `TCP_INFO` on both sockets,
/// which takes their locks (the psock kworker often holds the sending one) and runs pending
/// softirq work in the proxy's context on release; checking at every look (each pace notice,
/// every few milliseconds) made these reads more than half of a bulk stream's `getsockopt`
/// calls (about 2000 in a 3 s stream, against about 900 with this period). A fault is caught
/// 50 ms later at most: the bytes have reached the peer by the time any check sees them anyway,
/// and the reset follows.
const INTEGRITY_CHECK_EVERY: Duration = Duration::from_millis(50);

/// When one connection's next periodic check is due.
pub(super) struct IntegrityChecks {
    due: Instant,
}

impl IntegrityChecks {
    /// The first check is due at once.
    pub(super) fn new(now: Instant) -> Self {
        Self { due: now }
    }

    /// Checks every direction not `finished` if a check is due: the reset that ends the
    /// connection if one passed bytes twice.
    pub(super) fn check_if_due(
        &mut self,
        plane: &KernelPlane,
        sockets: &Sockets,
        finished: &PerDirection<bool>,
        metrics: &ConnectionCounters,
        now: Instant,
    ) -> Option<Outcome> {
        if now < self.due {
            return None;
        }
        self.due = now + INTEGRITY_CHECK_EVERY;
        BOTH.into_iter()
            .filter(|&direction| !finished[direction])
            .find_map(|direction| check_integrity(plane, sockets, direction, metrics))
    }
}

/// Whether `direction` passed bytes twice ([`excess_consumed`], [`excess_sent`]): if so, counts
/// and logs it and returns the reset that ends the connection.
pub(super) fn check_integrity(
    plane: &KernelPlane,
    sockets: &Sockets,
    direction: Direction,
    metrics: &ConnectionCounters,
) -> Option<Outcome> {
    match excess_consumed(plane, sockets, direction)
        .and_then(|excess| Ok(excess.max(excess_sent(plane, sockets, direction)?)))
    {
        Ok(0) => None,
        Ok(excess) => {
            metrics.count_integrity_error();
            let target = target_side(direction);
            error!(
                excess,
                target,
                "the kernel splice passed {excess} bytes to the {target} twice (a kernel sockmap fault under retransmissions); resetting the connection rather than passing on a corrupted stream"
            );
            Some(Outcome::Reset {
                side: "proxy",
                error: format!("splice integrity: {excess} bytes passed twice to the {target}"),
            })
        }
        Err(err) => Some(Outcome::from_io(err)),
    }
}

/// How many bytes more than its socket received the verdict program and user space together took
/// from `direction`'s source: always 0, unless the kernel handed the verdict program bytes it had
/// handed over before. Seen on Linux 6.18 under heavy traffic both ways at once, always with TCP
/// retransmissions: a retransmitted segment that partly overlaps bytes already received is
/// queued whole, and the sockmap's reader (`tcp_read_skb`) passes skbs on whole, without
/// trimming the overlap by sequence number as `recvmsg` does. The counts are read before the
/// received count, which only grows, so bytes arriving in between cannot look like an excess.
fn excess_consumed(
    plane: &KernelPlane,
    sockets: &Sockets,
    direction: Direction,
) -> io::Result<u64> {
    let src = sockets.source(direction);
    let (redirected, _) = plane.link_bytes(src.cookie);
    let received = sockopt::tcp_info(&src.stream)?.tcpi_bytes_received;
    Ok((src.read_before + redirected + src.user_read).saturating_sub(received))
}

/// How many bytes more than it was given `direction`'s target has taken into its send queue:
/// always 0, unless the kernel splice sent bytes twice (the companion of [`excess_consumed`], on
/// the sending side). The count of bytes in the send queue is read before the redirected count,
/// which only grows, so a byte redirected in between cannot look like an excess.
fn excess_sent(plane: &KernelPlane, sockets: &Sockets, direction: Direction) -> io::Result<u64> {
    let dst = sockets.target(direction);
    let entered = bytes_entered(dst)?;
    let (redirected, _) = plane.link_bytes(sockets.source(direction).cookie);
    Ok(entered.saturating_sub(redirected + dst.user_written))
}
