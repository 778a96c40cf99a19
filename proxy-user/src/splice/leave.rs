//! A connection leaving the splice for the userspace copy mid-stream: its sockets come out of
//! the splice hash, and the copy carries it from there to its end.
//!
//! Only a connection user space already carries (the verdict program holds every byte) leaves,
//! and only once nothing can be lost: leaving the hash discards what the socket's psock still
//! queues, both bytes redirected to it and bytes held on it. So it waits until every byte
//! redirected has entered its target's send queue, every held byte was read and written, and
//! then shuts the gate the splice entered through (`SO_RCVLOWAT` at its maximum: new bytes stay
//! in the socket's own receive queue instead of reaching the verdict program). A byte held
//! after the last look (only under receive-memory pressure or at a FIN, with the gate shut)
//! would be lost with the psock: the held count is read again once the sockets are out, and a
//! connection missing bytes is reset, never carried on short.

use std::io;

use super::{
    carry::Carrying,
    socket::{Sockets, both_caught_up},
};
use crate::{kernel::KernelPlane, sockopt};

/// Where a connection stands on its way out of the splice.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Leaving {
    /// Bytes are still on their way through a psock: look again shortly.
    NotYet,
    /// Out of the hash: the copy takes over.
    Left,
}

/// Takes the carried connection's sockets out of the splice hash once nothing can be lost.
pub(super) fn try_leave(
    carry: &Carrying,
    plane: &KernelPlane,
    sockets: &Sockets,
) -> io::Result<Leaving> {
    if !carry.empty() || !all_held_read(plane, sockets) || !both_caught_up(plane, sockets)? {
        return Ok(Leaving::NotYet);
    }
    for socket in sockets.both() {
        sockopt::set_rcvlowat(&socket.stream, i32::MAX)?;
    }
    if !all_held_read(plane, sockets) {
        // The verdict program held more between the two looks: read it first.
        for socket in sockets.both() {
            sockopt::set_rcvlowat(&socket.stream, 1)?;
        }
        return Ok(Leaving::NotYet);
    }
    for socket in sockets.both() {
        plane
            .remove_socket(socket.cookie)
            .map_err(|err| io::Error::other(format!("taking a socket out of the splice: {err}")))?;
    }
    if !all_held_read(plane, sockets) {
        return Err(io::Error::other(
            "bytes held while the connection left the splice were lost with the socket's psock queue",
        ));
    }
    // Out of the hash: the gate would only slow the copy's reads down.
    for socket in sockets.both() {
        sockopt::set_rcvlowat(&socket.stream, 1)?;
    }
    Ok(Leaving::Left)
}

/// Whether every byte the verdict program held was read off its socket.
fn all_held_read(plane: &KernelPlane, sockets: &Sockets) -> bool {
    sockets.both().into_iter().all(|socket| {
        socket.to_discard == 0 && plane.link_bytes(socket.cookie).1 == socket.user_read
    })
}
