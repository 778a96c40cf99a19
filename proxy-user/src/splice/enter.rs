//! Putting a connection's two sockets into the splice without losing or reordering a byte,
//! although they enter the hash one after the other:
//! 1. `SO_RCVLOWAT` is raised to its maximum: TCP then calls `data_ready` (which runs the verdict
//!    program) for new bytes only under memory pressure or for a FIN; bytes that arrived before,
//!    or arrive now, wait in the receive queue.
//! 2. Both links are written, then the client socket enters the hash, then the device socket.
//! 3. `SO_RCVLOWAT` goes back to 1, which makes TCP call `data_ready`: the verdict program
//!    forwards whatever is queued, in order (SSH and VNC servers speak first; their banner is
//!    waiting there).
//!
//! If the verdict program ran on a socket whose peer was not in the hash yet, it held those
//! bytes; the `hold` module forwards them.

use std::{io, net::TcpStream as StdTcpStream};

use devicelink_proxy_common::{Direction, SpliceCredit, pace_mark};
use tracing::debug;

use super::{
    hold::hold_rcvbuf,
    socket::{Sockets, SplicedSocket},
};
use crate::{kernel::KernelPlane, sockopt};

/// Why a connection did not enter the splice.
pub(super) enum EnterError {
    /// A socket could not enter the hash before any byte went through the kernel: the
    /// connection is whole and can be carried in user space.
    Refused {
        client: StdTcpStream,
        device: StdTcpStream,
        reason: String,
    },
    /// Anything else: both sides were reset.
    Io(io::Error),
}

/// Puts `client` and `device` into the splice (steps 1 to 3 above).
pub(super) fn enter(
    plane: &KernelPlane,
    client: StdTcpStream,
    device: StdTcpStream,
    sndbuf: u32,
    max_queued: u32,
    look_mark: u64,
) -> Result<Sockets, EnterError> {
    // What the verdict program assumes for a socket without a credit entry.
    let credit = SpliceCredit {
        forwarded: 0,
        redirect_limit: u64::from(max_queued),
        pace_limit: pace_mark(u64::from(max_queued)),
        pace_gen: 0,
        carry: 0,
        look_mark,
        look_gen: 0,
    };
    let mut sockets = Sockets {
        client: SplicedSocket::new(client, credit),
        device: SplicedSocket::new(device, credit),
    };
    // Any failure resets both sides and leaves nothing in the maps.
    let fail = |sockets: &Sockets, err: io::Error| {
        for socket in sockets.both() {
            plane.release(socket.cookie);
            let _ = sockopt::set_linger_reset(&socket.stream);
        }
        EnterError::Io(err)
    };
    let prepared = sockets
        .both_mut()
        .into_iter()
        .try_for_each(|socket| prepare(socket, sndbuf, max_queued));
    if let Err(err) = prepared {
        return Err(fail(&sockets, err));
    }
    let armed = plane
        .arm(
            sockets.client.cookie,
            sockets.device.cookie,
            Direction::ToDevice,
        )
        .and_then(|()| {
            plane.arm(
                sockets.device.cookie,
                sockets.client.cookie,
                Direction::FromDevice,
            )
        })
        .map_err(|err| io::Error::other(format!("arming the splice: {err}")));
    if let Err(err) = armed {
        return Err(fail(&sockets, err));
    }
    // The client first: it is the side that may already have sent its FIN (a request sent whole),
    // and if it cannot enter, nothing has been in the hash yet.
    let refused = ["client", "device"]
        .into_iter()
        .zip(sockets.both())
        .find_map(|(side, socket)| {
            let inserted = plane.insert_socket(socket.cookie, &socket.stream);
            inserted.err().map(|err| (side, err))
        });
    if let Some((side, err)) = refused {
        // Typically EOPNOTSUPP: the socket is no longer ESTABLISHED.
        if side == "device" && plane.link_bytes(sockets.client.cookie).1 > 0 {
            // The client's bytes were held waiting for the device socket; they live in the
            // client's psock, which leaving the hash discards. Nothing can carry them now.
            return Err(fail(
                &sockets,
                io::Error::other(format!(
                    "the device socket could not enter the splice ({err}) after the client's bytes did"
                )),
            ));
        }
        for socket in sockets.both() {
            plane.release(socket.cookie);
            let _ = sockopt::set_rcvlowat(&socket.stream, 1);
        }
        let reason = format!(
            "{side} socket could not enter the splice hash: {}",
            std::error::Error::source(&err).map_or_else(|| err.to_string(), ToString::to_string)
        );
        return Err(EnterError::Refused {
            client: sockets.client.stream,
            device: sockets.device.stream,
            reason,
        });
    }
    for socket in sockets.both() {
        if let Err(err) = sockopt::set_rcvlowat(&socket.stream, 1) {
            return Err(fail(&sockets, err));
        }
    }
    Ok(sockets)
}

/// Step 1 for one socket, with the buffers the splice needs and the counts it starts from.
fn prepare(socket: &mut SplicedSocket, sndbuf: u32, max_queued: u32) -> io::Result<()> {
    // A fixed receive buffer bounds what a hold keeps on the socket (about one TCP window) and
    // stops the gate below from raising the buffer to tcp_rmem's maximum.
    sockopt::set_rcvbuf(&socket.stream, hold_rcvbuf(max_queued))?;
    sockopt::set_rcvlowat(&socket.stream, i32::MAX)?;
    // Without a deep send buffer the psock backlog meets EAGAIN and retries a jiffy later, which
    // caps a bulk stream (see the `--splice-sndbuf` sweep in docs/benchmarks.md).
    if let Err(err) = sockopt::force_sndbuf(&socket.stream, sndbuf) {
        debug!(%err, "SO_SNDBUFFORCE refused; keeping the default send buffer");
    }
    socket.cookie = sockopt::cookie(&socket.stream)?;
    // What was put into its send queue before: nothing on a new connection, what the copy
    // wrote on one back from a spell there.
    socket.queued_base = sockopt::bytes_queued_total(&socket.stream)?;
    Ok(())
}
