//! A connection leaving the splice for the userspace copy mid-stream: its sockets come out of
//! the splice hash, and the copy carries it from there to its end.
//!
//! Only a connection user space already carries (the verdict program holds every byte) leaves,
//! and only once nothing can be lost: leaving the hash drops the socket's psock with whatever it
//! still queues, both bytes redirected to it and bytes held on it. So once every byte redirected
//! has entered its target's send queue, the carry stops reading a buffer at a time and writes
//! out what it read, while what arrives stays held; once it has written everything, the gate
//! the splice entered through is shut (`SO_RCVLOWAT` at its maximum: new bytes stay in the
//! socket's own receive queue instead of reaching the verdict program) and every held byte is
//! read in one go, however many, for the carry to write before the copy takes over. Read a
//! buffer at a time, a sender that keeps the window full refills the psock's queue between two
//! reads, and the instant with nothing held did not come for tenths of a second.
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
    socket::{Sockets, both_caught_up},
};
use crate::{kernel::KernelPlane, sockopt};

/// How long bytes held as the sockets left the splice may take to be read and written; a
/// connection that cannot is reset, never carried on short.
const HELD_READ_WAIT: Duration = Duration::from_secs(1);

/// Where a connection stands on its way out of the splice.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Leaving {
    /// Bytes are still on their way through a psock: look again shortly.
    NotYet,
    /// Out of both hashes: the copy takes over.
    Left,
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
    /// When the connection first tried to leave, and the looks that found it not ready, by
    /// what held it back: for the log line once it left.
    pub(super) first_try: Option<Instant>,
    pub(super) waits: LeaveWaits,
}

/// Looks at which a connection could not leave the splice yet, by what held it back.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LeaveWaits {
    /// Bytes the kernel redirected before the move were still in a psock.
    pub(super) kernel_sending: u32,
    /// Bytes user space read were not all written yet.
    pub(super) writing: u32,
    /// A byte arrived while the held ones were read (each look tries a few times).
    pub(super) reading_held: u32,
}

impl Departure {
    /// Whether the connection may still try to leave.
    pub(super) fn may_leave(&self) -> bool {
        !self.refused
    }

    /// Takes the carried connection's sockets out of the splice hash once nothing can be lost.
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
        self.first_try.get_or_insert(now);
        if !both_caught_up(plane, sockets)? {
            // Meanwhile a direction the kernel has caught up on is carried as usual (a
            // viewer's request while a frame is still on its way the other way).
            self.waits.kernel_sending += 1;
            return Ok(Leaving::NotYet);
        }
        // The carry reads nothing more a buffer at a time: it writes what it read, while what
        // arrives meanwhile stays held, to be read at once below.
        for direction in BOTH {
            carry.limit_reads(direction, Some(0));
        }
        if !carry.empty() {
            self.waits.writing += 1;
            return Ok(Leaving::NotYet);
        }
        if !read_held_behind_shut_gate(carry, plane, sockets)? {
            self.waits.reading_held += 1;
            return Ok(Leaving::NotYet);
        }
        for (index, socket) in sockets.both().into_iter().enumerate() {
            if let Err(err) = plane.park(socket.cookie, &socket.stream) {
                for parked in &sockets.both()[..index] {
                    plane.unpark(parked.cookie).map_err(|err| {
                        io::Error::other(format!("taking a socket out of the parking hash: {err}"))
                    })?;
                }
                set_gates(sockets, 1)?;
                for direction in BOTH {
                    carry.limit_reads(direction, None);
                }
                debug!(%err, "a socket of the connection could not enter the parking hash");
                self.refused = true;
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
            return Ok(Leaving::NotYet);
        }
        if !all_held_read(plane, sockets) {
            debug!(
                "bytes arrived with a FIN as the connection left the splice: read from the parking hash"
            );
        }
        self.parked_at = Some(now);
        self.read_held_then_go(carry, plane, sockets, now, now)
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
        if !all_held_read(plane, sockets) {
            if now.duration_since(since) >= HELD_READ_WAIT {
                return Err(io::Error::other(
                    "bytes the splice held as the connection left it could not be read",
                ));
            }
            return Ok(Leaving::NotYet);
        }
        if !carry.empty() {
            // Written as fast as the peer takes them: its flow control, not a fault.
            return Ok(Leaving::NotYet);
        }
        for socket in sockets.both() {
            plane.unpark(socket.cookie).map_err(|err| {
                io::Error::other(format!("taking a socket out of the parking hash: {err}"))
            })?;
        }
        Ok(Leaving::Left)
    }
}

/// How many times a leave shuts the gate and reads what the verdict program held before it
/// gives up until its next look.
const READ_HELD_TRIES: usize = 3;

/// Shuts the splice's gate and reads every held byte at once, so that nothing held is left
/// unread; true when that worked, with the gate left shut. New bytes then stay in the socket's
/// own receive queue, which the copy reads after the connection left; but while that queue has
/// bytes, the sockmap's `recv` refuses to read the psock's (it would pass them to the verdict
/// program first, which the shut gate forbids), so a byte arriving between shutting the gate
/// and the read fails the try: the gate opens again, the verdict program holds what waited,
/// and the next try reads that too.
fn read_held_behind_shut_gate(
    carry: &mut Carrying,
    plane: &KernelPlane,
    sockets: &mut Sockets,
) -> io::Result<bool> {
    for _ in 0..READ_HELD_TRIES {
        set_gates(sockets, i32::MAX)?;
        let mut all_read = true;
        for direction in BOTH {
            all_read &= carry.read_all_held(plane, sockets, direction)?;
        }
        if all_read && all_held_read(plane, sockets) {
            return Ok(true);
        }
        set_gates(sockets, 1)?;
    }
    Ok(false)
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
