//! Quick ACKs to the device for exactly as long as the kernel carries the connection.
//!
//! The splice never reads the device socket, so without the quick-ACK route TCP delays its ACKs
//! to the device (see `crate::route`); a socket user space reads (carried for a trial, or on its
//! way to the copy) ACKs as a reader does, and an ACK for every segment there only costs the
//! device and the proxy's CPU. The route applies to sockets with the mark, so the mark follows
//! the path: set when the kernel takes the connection, cleared when user space does.

use tracing::debug;

use super::socket::Sockets;
use crate::sockopt;

/// Which path carries the connection now, as far as its ACKs to the device go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reader {
    Kernel,
    UserSpace,
}

/// Marks the device socket for the quick-ACK route while the kernel carries it, and clears the
/// mark when user space reads it. `mark` is `None` when the proxy keeps no such routes. A
/// failure only costs speed (the socket keeps its ACK behaviour), so it is logged, not raised.
pub(super) fn follow(sockets: &Sockets, mark: Option<u32>, reader: Reader) {
    let Some(mark) = mark else {
        return;
    };
    let mark = match reader {
        Reader::Kernel => mark,
        Reader::UserSpace => 0,
    };
    if let Err(err) = sockopt::set_mark(&sockets.device.stream, mark) {
        debug!(%err, ?reader, "could not set the device socket's mark for quick ACKs");
    }
}
