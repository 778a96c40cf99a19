//! The end of a direction. Its FIN reaches user space as `EPOLLRDHUP` on its source socket; the
//! target's write side is shut only once every byte has moved: the source's received bytes (less
//! the FIN's sequence number) all went through the verdict program or user space, user space
//! wrote every byte it read, and all of those are in the target's send queue. Shutting earlier
//! loses what the target's psock or user space still holds.

use std::io;

use devicelink_proxy_common::Direction;

use super::{
    direction::source_side,
    integrity::check_integrity,
    socket::{Sockets, target_caught_up},
};
use crate::{copy::Outcome, kernel::KernelPlane, session::ConnectionCounters, sockopt};

/// Where a direction stands with its FIN.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FinState {
    /// No FIN from its source yet (or it was passed on before).
    NotYet,
    /// The FIN came but bytes before it are still on their way: look again shortly.
    Draining,
    /// The FIN was passed on just now: the target's write side is shut.
    PassedOn,
}

/// Looks at `direction`'s source socket: an error there ends the connection (the returned
/// outcome), and a FIN is passed on to the target once every byte before it has moved. A
/// direction already `finished` is only looked at for errors.
pub(super) fn pass_on_fin(
    plane: &KernelPlane,
    sockets: &Sockets,
    direction: Direction,
    finished: bool,
    metrics: &ConnectionCounters,
) -> Result<FinState, Outcome> {
    let source = sockets.source(direction);
    let state = sockopt::poll_state(&source.stream).map_err(Outcome::from_io)?;
    if state.error {
        let error = sockopt::take_error(&source.stream)
            .ok()
            .flatten()
            .map_or_else(|| "connection error".to_string(), |e| e.to_string());
        return Err(Outcome::Reset {
            side: source_side(direction),
            error,
        });
    }
    if finished || !state.read_closed {
        return Ok(FinState::NotYet);
    }
    if !drained(plane, sockets, direction).map_err(Outcome::from_io)? {
        return Ok(FinState::Draining);
    }
    // The last chance to stop a corrupted stream: before its FIN is passed on.
    if let Some(outcome) = check_integrity(plane, sockets, direction, metrics) {
        return Err(outcome);
    }
    sockopt::shutdown_write(&sockets.target(direction).stream).map_err(Outcome::from_io)?;
    Ok(FinState::PassedOn)
}

/// Whether every byte of `direction` has moved: all that the source received (less the FIN)
/// went through the verdict program or user space, and all of that is in the target's send queue.
fn drained(plane: &KernelPlane, sockets: &Sockets, direction: Direction) -> io::Result<bool> {
    let src = sockets.source(direction);
    let dst = sockets.target(direction);
    // User space carrying the connection may have read bytes it has not written yet (its
    // target was full, or bytes the kernel redirected before were still in a psock).
    if src.user_read != dst.user_written {
        return Ok(false);
    }
    let (redirected, _) = plane.link_bytes(src.cookie);
    let received = sockopt::tcp_info(&src.stream)?.tcpi_bytes_received;
    let consumed = src.read_before + src.user_read + redirected;
    // The FIN takes one sequence number.
    if received.saturating_sub(1) != consumed {
        return Ok(false);
    }
    target_caught_up(dst, redirected)
}
