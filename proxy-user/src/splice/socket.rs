//! The two sockets of a spliced connection and the byte accounting every other part reads:
//! what user space itself moved through each, and how far a direction's target has taken in
//! what was put on its way.

use std::{io, net::TcpStream as StdTcpStream};

use devicelink_proxy_common::{Direction, SpliceCredit};

use super::{direction::BOTH, pace::Pacing};
use crate::{kernel::KernelPlane, sockopt};

/// One socket of a spliced pair, with what user space itself moved through it.
pub(super) struct SplicedSocket {
    pub(super) stream: StdTcpStream,
    pub(super) cookie: u64,
    /// Held bytes user space read from this socket and forwarded to its peer.
    pub(super) user_read: u64,
    /// Bytes read from this socket before it entered the splice and not carried (a PROXY
    /// protocol header): the kernel counts them received, the verdict program never sees them.
    pub(super) read_before: u64,
    /// `bytes_acked + SIOCOUTQ` when the splice started: bytes put into its send queue before.
    pub(super) queued_base: u64,
    /// Bytes user space wrote into this socket after `queued_base` was taken.
    pub(super) user_written: u64,
    /// Whether user space wrote a `SPLICE_CREDITS` entry for it (to remove at the end).
    pub(super) credit_written: bool,
    /// Held bytes already forwarded that are still at the head of the socket's queue (reading
    /// them off failed for the moment); taken off before anything else is read.
    pub(super) to_discard: usize,
    /// What user space last granted this socket (its `SPLICE_CREDITS` entry, or the defaults
    /// the verdict program assumes without one).
    pub(super) credit: SpliceCredit,
    /// How the sender feeding this socket is being slowed, if it is.
    pub(super) pacing: Pacing,
}

impl SplicedSocket {
    /// A socket about to enter the splice, with nothing moved yet and the credit the verdict
    /// program assumes for a socket without an entry.
    pub(super) fn new(stream: StdTcpStream, credit: SpliceCredit) -> Self {
        Self {
            stream,
            cookie: 0,
            user_read: 0,
            read_before: 0,
            queued_base: 0,
            user_written: 0,
            credit_written: false,
            to_discard: 0,
            credit,
            pacing: Pacing::default(),
        }
    }

    /// Writes this socket's `SPLICE_CREDITS` entry, which the verdict program reads for each skb.
    pub(super) fn grant(&mut self, plane: &KernelPlane, credit: SpliceCredit) -> io::Result<()> {
        plane
            .set_credit(self.cookie, credit)
            .map_err(|err| io::Error::other(format!("updating the splice credit: {err}")))?;
        self.credit = credit;
        self.credit_written = true;
        Ok(())
    }
}

/// The client and the device socket of one spliced connection. Client to device reads from the
/// client socket and writes to the device socket; device to client the other way.
pub(super) struct Sockets {
    pub(super) client: SplicedSocket,
    pub(super) device: SplicedSocket,
}

impl Sockets {
    /// The socket `direction`'s bytes are read from.
    pub(super) fn source(&self, direction: Direction) -> &SplicedSocket {
        match direction {
            Direction::ToDevice => &self.client,
            Direction::FromDevice => &self.device,
        }
    }

    /// The socket `direction`'s bytes are written to.
    pub(super) fn target(&self, direction: Direction) -> &SplicedSocket {
        match direction {
            Direction::ToDevice => &self.device,
            Direction::FromDevice => &self.client,
        }
    }

    /// `direction`'s source and target sockets, both writable.
    pub(super) fn ends_mut(
        &mut self,
        direction: Direction,
    ) -> (&mut SplicedSocket, &mut SplicedSocket) {
        match direction {
            Direction::ToDevice => (&mut self.client, &mut self.device),
            Direction::FromDevice => (&mut self.device, &mut self.client),
        }
    }

    /// Both sockets, client first.
    pub(super) fn both(&self) -> [&SplicedSocket; 2] {
        [&self.client, &self.device]
    }

    /// Both sockets, client first, writable.
    pub(super) fn both_mut(&mut self) -> [&mut SplicedSocket; 2] {
        [&mut self.client, &mut self.device]
    }
}

/// Bytes that entered `target`'s send queue since the splice started (acknowledged or not).
pub(super) fn bytes_entered(target: &SplicedSocket) -> io::Result<u64> {
    Ok(sockopt::bytes_queued_total(&target.stream)?.saturating_sub(target.queued_base))
}

/// Whether every byte put on its way to `target` (redirected by the kernel, written by user
/// space) has entered its send queue, so that bytes written to it now go behind all of them.
pub(super) fn target_caught_up(target: &SplicedSocket, redirected: u64) -> io::Result<bool> {
    Ok(bytes_entered(target)? == redirected + target.user_written)
}

/// Whether, both ways, every byte the kernel redirected (and user space wrote) has entered the
/// target's send queue: nothing waits in a psock.
pub(super) fn both_caught_up(plane: &KernelPlane, sockets: &Sockets) -> io::Result<bool> {
    for direction in BOTH {
        let (redirected, _) = plane.link_bytes(sockets.source(direction).cookie);
        if !target_caught_up(sockets.target(direction), redirected)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bytes of a direction inside the proxy: put on their way to its `target` (redirected by the
/// kernel or written by user space) and not yet acknowledged by the receiver. This is what
/// `--splice-max-queued` bounds.
pub(super) fn queued_in_proxy(target: &SplicedSocket, redirected: u64) -> io::Result<u64> {
    let acked = sockopt::tcp_info(&target.stream)?
        .tcpi_bytes_acked
        .saturating_sub(target.queued_base);
    Ok((redirected + target.user_written).saturating_sub(acked))
}
