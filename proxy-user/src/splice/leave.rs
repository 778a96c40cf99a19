//! A connection leaving the splice for the userspace copy mid-stream: its sockets come out of
//! the splice hash, and the copy carries it from there to its end.
//!
//! Only a connection user space already carries (the verdict program holds every byte) leaves,
//! and only once nothing can be lost: leaving the hash drops the socket's psock with whatever it
//! still queues, both bytes redirected to it and bytes held on it. So it waits until every byte
//! redirected has entered its target's send queue and every held byte was read and written, then
//! shuts the gate the splice entered through (`SO_RCVLOWAT` at its maximum: new bytes stay in the
//! socket's own receive queue instead of reaching the verdict program).
//!
//! The gate does not stop everything: a FIN, or a receive buffer close to full, makes TCP run
//! the verdict program anyway, which then holds what was queued. That can happen in the instant
//! between the last look and the socket leaving the hash, and those bytes would go with the
//! psock. So each socket first enters the parking hash, which has no program and keeps the psock
//! (and its queue) alive; then it leaves the splice hash, where the verdict program stops for
//! it; bytes it held in that instant with a FIN are read off by the carry (nothing follows a FIN,
//! so the read position TCP then keeps behind does not matter); and only then the socket leaves
//! the parking hash, its psock with it. Bytes held in that instant without a FIN (a sender that
//! fills the receive window wakes the reader whatever the gate) cannot be read that way: the
//! sockets go back into the splice hash, the carry reads them there, and they try again.

use std::{io, time::Duration};

use tokio::time::Instant;
use tracing::debug;

use super::{
    carry::Carrying,
    direction::BOTH,
    nonblocking::recv_nonblocking,
    socket::{Sockets, both_caught_up},
};
use crate::{copy::Unwritten, kernel::KernelPlane, sockopt};

/// How long bytes held as the sockets left the splice may take to be read and written; a
/// connection that cannot is reset, never carried on short.
const HELD_READ_WAIT: Duration = Duration::from_secs(1);

/// How long a connection tries to leave at an instant when nothing it held is unread before it
/// stalls its senders (see [`Departure::try_leave`]).
const STALL_AFTER: Duration = Duration::from_millis(20);

/// How long the held counts must stay put, once the sources are no longer read, for the senders
/// to count as stalled at a closed window.
const STALL_SETTLE: Duration = Duration::from_millis(2);

/// Where a connection stands on its way out of the splice.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Leaving {
    /// Bytes are still on their way through a psock: look again shortly.
    NotYet,
    /// Out of both hashes: the copy takes over, writing these bytes first.
    Left(Unwritten),
    /// A socket is no longer ESTABLISHED (its FIN came): it cannot enter the parking hash, so
    /// the connection stays in the splice.
    Cannot,
}

/// A connection's way out of the splice.
#[derive(Debug, Default)]
pub(super) struct Departure {
    /// Set once the sockets are out of the splice hash and wait in the parking hash for the
    /// carry to read what the verdict program held as they left: since when.
    parked_at: Option<Instant>,
    /// Set once a socket could not enter the parking hash: the connection stays in the splice.
    refused: bool,
    /// Since when it tries to leave.
    trying_since: Option<Instant>,
    /// While its sources are not read (a stall): the held counts last seen, and since when.
    still: Option<([u64; 2], Instant)>,
}

impl Departure {
    /// Whether the connection may still try to leave.
    pub(super) fn may_leave(&self) -> bool {
        !self.refused
    }

    /// Takes the carried connection's sockets out of the splice hash once nothing can be lost.
    ///
    /// A sender that keeps the window full keeps the psock's queue of held bytes full too, so
    /// an instant with nothing held unread may not come. After [`STALL_AFTER`] of trying, the
    /// carry stops reading the sources: held bytes fill the receive buffers, the windows close
    /// and the senders stop. Then the gates shut and each socket's held bytes are read in one
    /// `recv` (the kernel reads a socket's psock queue only while its own receive queue is
    /// empty, which a stalled sender leaves it), to be written by the copy first.
    pub(super) fn try_leave(
        &mut self,
        carry: &mut Carrying,
        plane: &KernelPlane,
        sockets: &mut Sockets,
        now: Instant,
    ) -> io::Result<Leaving> {
        if let Some(since) = self.parked_at {
            return self.read_held_then_go(carry, plane, sockets, since, now);
        }
        let caught_up = carry.empty() && both_caught_up(plane, sockets)?;
        let mut unwritten = Unwritten::default();
        if caught_up && all_held_read(plane, sockets) {
            set_gates(sockets, i32::MAX)?;
            if !all_held_read(plane, sockets) {
                // The verdict program held more between the two looks: read it first.
                set_gates(sockets, 1)?;
                return Ok(Leaving::NotYet);
            }
        } else {
            let trying = *self.trying_since.get_or_insert(now);
            if now.duration_since(trying) < STALL_AFTER {
                return Ok(Leaving::NotYet);
            }
            for direction in BOTH {
                carry.limit_reads(direction, Some(0));
            }
            if !caught_up || sockets.both().iter().any(|socket| socket.to_discard != 0) {
                self.still = None;
                return Ok(Leaving::NotYet);
            }
            let held = sockets
                .both()
                .map(|socket| plane.link_bytes(socket.cookie).1);
            match self.still {
                Some((seen, since)) if seen == held => {
                    if now.duration_since(since) < STALL_SETTLE {
                        return Ok(Leaving::NotYet);
                    }
                }
                _ => {
                    self.still = Some((held, now));
                    return Ok(Leaving::NotYet);
                }
            }
            self.still = None;
            set_gates(sockets, i32::MAX)?;
            for ((socket, held), bytes) in
                sockets.both_mut().into_iter().zip(held).zip(&mut unwritten)
            {
                let unread =
                    usize::try_from(held.saturating_sub(socket.user_read)).unwrap_or(usize::MAX);
                if unread > 0 {
                    let read = recv_nonblocking(&socket.stream, bytes, unread, 0)?;
                    socket.user_read += read as u64;
                }
            }
            if !all_held_read(plane, sockets) {
                // Held more meanwhile, or a read came short: carried on, and tried again.
                debug!("the senders did not stall: the connection tries to leave again");
                return self
                    .stay(carry, sockets, unwritten)
                    .map(|()| Leaving::NotYet);
            }
            debug!(
                client_bytes = unwritten[0].len(),
                device_bytes = unwritten[1].len(),
                "the senders stalled at a closed window: read what the splice held in one go"
            );
        }
        for (index, socket) in sockets.both().into_iter().enumerate() {
            if let Err(err) = plane.park(socket.cookie, &socket.stream) {
                for parked in &sockets.both()[..index] {
                    plane.unpark(parked.cookie).map_err(|err| {
                        io::Error::other(format!("taking a socket out of the parking hash: {err}"))
                    })?;
                }
                debug!(%err, "a socket of the connection could not enter the parking hash");
                self.refused = true;
                self.stay(carry, sockets, unwritten)?;
                return Ok(Leaving::Cannot);
            }
        }
        for socket in sockets.both() {
            plane.remove_socket(socket.cookie).map_err(|err| {
                io::Error::other(format!("taking a socket out of the splice: {err}"))
            })?;
        }
        // Out of the splice hash, the verdict program no longer runs for them and the held
        // counts are final; without the gate, the carry is woken for bytes as they come.
        set_gates(sockets, 1)?;
        let mut held_without_fin = false;
        for socket in sockets.both() {
            if plane.link_bytes(socket.cookie).1 != socket.user_read
                && !sockopt::poll_state(&socket.stream)?.read_closed
            {
                held_without_fin = true;
            }
        }
        if held_without_fin {
            // Held because the receive window was about to close (TCP then wakes the reader
            // whatever the gate), not for a FIN: read now, those bytes would leave TCP's read
            // position behind what follows (the kernel counts a psock's bytes as read only
            // while the socket is in a hash with the program). Back into the splice, where
            // the carry reads them, and out again at a later look.
            for socket in sockets.both() {
                plane.insert_socket(socket.cookie, &socket.stream).map_err(|err| {
                    io::Error::other(format!(
                        "bytes the splice held as the connection left it could not be carried on: back into the splice hash: {err}"
                    ))
                })?;
            }
            for socket in sockets.both() {
                plane.unpark(socket.cookie).map_err(|err| {
                    io::Error::other(format!("taking a socket out of the parking hash: {err}"))
                })?;
            }
            debug!("bytes arrived as the connection left the splice: back into it to read them");
            self.stay(carry, sockets, unwritten)?;
            return Ok(Leaving::NotYet);
        }
        if !all_held_read(plane, sockets) {
            debug!(
                "bytes arrived with a FIN as the connection left the splice: read from the parking hash"
            );
            // What the drain read comes before them: the carry writes it first.
            for (direction, bytes) in BOTH.into_iter().zip(unwritten) {
                carry.push_unwritten(direction, bytes);
            }
            self.parked_at = Some(now);
            return self.read_held_then_go(carry, plane, sockets, now, now);
        }
        for socket in sockets.both() {
            plane.unpark(socket.cookie).map_err(|err| {
                io::Error::other(format!("taking a socket out of the parking hash: {err}"))
            })?;
        }
        Ok(Leaving::Left(unwritten))
    }

    /// Goes on carrying in the splice: what a drain read goes into the carry's pipes, the
    /// sources are read again, the gates open.
    fn stay(
        &mut self,
        carry: &mut Carrying,
        sockets: &Sockets,
        unwritten: Unwritten,
    ) -> io::Result<()> {
        for (direction, bytes) in BOTH.into_iter().zip(unwritten) {
            carry.push_unwritten(direction, bytes);
            carry.limit_reads(direction, None);
        }
        self.still = None;
        set_gates(sockets, 1)
    }

    /// Out of the splice hash: once the carry read and wrote every held byte, the sockets leave
    /// the parking hash.
    fn read_held_then_go(
        &mut self,
        carry: &mut Carrying,
        plane: &KernelPlane,
        sockets: &Sockets,
        since: Instant,
        now: Instant,
    ) -> io::Result<Leaving> {
        for (direction, socket) in BOTH.into_iter().zip(sockets.both()) {
            let held = plane.link_bytes(socket.cookie).1;
            carry.limit_reads(direction, Some(held.saturating_sub(socket.user_read)));
        }
        if !carry.empty() || !all_held_read(plane, sockets) {
            if now.duration_since(since) >= HELD_READ_WAIT {
                return Err(io::Error::other(
                    "bytes the splice held as the connection left it could not be read",
                ));
            }
            return Ok(Leaving::NotYet);
        }
        for socket in sockets.both() {
            plane.unpark(socket.cookie).map_err(|err| {
                io::Error::other(format!("taking a socket out of the parking hash: {err}"))
            })?;
        }
        Ok(Leaving::Left(Unwritten::default()))
    }
}

/// Sets both sockets' `SO_RCVLOWAT`: the splice's gate (see the `enter` module).
fn set_gates(sockets: &Sockets, lowat: i32) -> io::Result<()> {
    for socket in sockets.both() {
        sockopt::set_rcvlowat(&socket.stream, lowat)?;
    }
    Ok(())
}

/// Whether every byte the verdict program held was read off its socket.
fn all_held_read(plane: &KernelPlane, sockets: &Sockets) -> bool {
    sockets.both().into_iter().all(|socket| {
        socket.to_discard == 0 && plane.link_bytes(socket.cookie).1 == socket.user_read
    })
}
