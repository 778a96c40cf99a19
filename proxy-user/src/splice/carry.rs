//! Carrying a spliced connection in user space while its sockets stay in the splice hash: the
//! move the `trial` module decides on.
//!
//! Taking a socket out of the hash mid-connection is not safe on every kernel (reads can fail
//! after it leaves; where it is safe, the `leave` module does it once user space won a trial),
//! so while carrying, the sockets stay in and the verdict program is told to hold every byte
//! (`SpliceCredit::carry`): it passes each skb to its own socket, where `recv` reads it, and the
//! proxy writes it to the peer, woken by the sockets themselves through tokio. No byte is
//! reordered: a direction writes nothing until every byte the kernel redirected before has
//! entered its target's send queue. Moving back clears the flag; the verdict program keeps
//! holding until user space has forwarded what it held (the `hold` module), then redirects again
//! behind those bytes.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

use devicelink_proxy_common::{Direction, SpliceCredit};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    direction::{BOTH, PerDirection},
    nonblocking::{recv_into, send_nonblocking},
    socket::{Sockets, SplicedSocket, target_caught_up},
};
use crate::{kernel::KernelPlane, session::ConnectionCounters};

/// Bytes one direction reads at a time, and the most it keeps between a read and the write that
/// takes it: the userspace copy's buffer, which the memory budget counts for spliced connections
/// too.
const CARRY_BUFFER: usize = devicelink_spec::memory::COPY_BUFFER_BYTES as usize;

/// How soon to look again while a direction's first bytes wait for what the kernel redirected
/// before them to leave its psock queue (the kernel gives no wake-up for that).
const CATCH_UP_LOOK: Duration = Duration::from_millis(1);

/// One direction's bytes between its source and its target.
struct Pipe {
    buf: Box<[u8]>,
    /// Bytes `[start, end)` of `buf` were read from the source and not yet written.
    start: usize,
    end: usize,
    /// Whether every byte the kernel redirected on this direction before the carry began has
    /// entered the target: until then nothing read here may be written.
    caught_up: bool,
    /// Whether the source reached its end of stream.
    eof: bool,
    /// The most it may still read, when set (see [`Carrying::limit_reads`]).
    read_limit: Option<u64>,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: vec![0u8; CARRY_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            caught_up: false,
            eof: false,
            read_limit: None,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room for `more` bytes after those pending, growing the buffer if it must.
    fn make_room(&mut self, more: usize) {
        if self.buf.len() - self.end >= more {
            return;
        }
        let pending = self.end - self.start;
        let mut grown = vec![0u8; (pending + more).max(CARRY_BUFFER)].into_boxed_slice();
        grown[..pending].copy_from_slice(self.pending());
        self.buf = grown;
        self.start = 0;
        self.end = pending;
    }

    /// Accounts `read` bytes just received into `buf[end..]` from `src`.
    fn took(&mut self, src: &mut SplicedSocket, read: usize) {
        if let Some(limit) = self.read_limit.as_mut() {
            *limit = limit.saturating_sub(read as u64);
        }
        // Held bytes the hold path forwarded but had not read off yet come first: they were
        // written before. They head the socket's queue, so nothing read is pending then.
        let skip = src.to_discard.min(read);
        src.to_discard -= skip;
        if skip > 0 {
            debug_assert_eq!(self.start, self.end, "bytes read before forwarded ones");
            self.start = self.end + skip;
        }
        self.end += read;
        src.user_read += (read - skip) as u64;
    }
}

/// What a direction waits for before it can move more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Its source to have bytes.
    Readable,
    /// Its target to take bytes.
    Writable,
    /// The kernel to send what it redirected before (no wake-up: look again shortly).
    CatchUp,
    /// Nothing: its source ended and everything read was written.
    Done,
    /// Nothing: it read as much as it may (see [`Carrying::limit_reads`]).
    Limited,
}

/// A connection while user space carries it.
pub(super) struct Carrying {
    /// Client and device socket, registered with tokio for as long as the carry lasts.
    /// Each a duplicate of the socket's descriptor, so the registration owns what it watches.
    fds: [AsyncFd<OwnedFd>; 2],
    pipes: PerDirection<Pipe>,
    waits: PerDirection<Wait>,
}

impl Carrying {
    /// Tells the verdict program to hold every byte of both sockets, lifts any pacing (user
    /// space reads only what it can write, which is all the flow control a copy needs), and
    /// registers the sockets for wake-ups.
    pub(super) fn start(plane: &KernelPlane, sockets: &mut Sockets) -> io::Result<Self> {
        for socket in sockets.both_mut() {
            let credit = SpliceCredit {
                carry: 1,
                ..socket.credit
            };
            socket.grant(plane, credit)?;
        }
        let register = |stream: &std::net::TcpStream| -> io::Result<AsyncFd<OwnedFd>> {
            let fd = stream.as_fd().try_clone_to_owned()?;
            // SAFETY: `fd` is owned by the registration, so it stays open and names the same
            // socket for as long as the registration lives.
            let registered = unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
            };
            Ok(registered?)
        };
        let fds = [
            register(&sockets.client.stream)?,
            register(&sockets.device.stream)?,
        ];
        Ok(Self {
            fds,
            pipes: PerDirection {
                to_device: Pipe::new(),
                from_device: Pipe::new(),
            },
            waits: PerDirection {
                to_device: Wait::Readable,
                from_device: Wait::Readable,
            },
        })
    }

    /// Moves in both directions whatever moves without waiting.
    pub(super) fn pump(
        &mut self,
        plane: &KernelPlane,
        sockets: &mut Sockets,
        metrics: &ConnectionCounters,
    ) -> io::Result<()> {
        for direction in BOTH {
            let (src, dst) = sockets.ends_mut(direction);
            let pipe = &mut self.pipes[direction];
            self.waits[direction] = loop {
                if pipe.start < pipe.end {
                    if !pipe.caught_up {
                        // Read after the bytes at hand: every redirect came before them, so the
                        // count is final.
                        let (redirected, _) = plane.link_bytes(src.cookie);
                        if !target_caught_up(dst, redirected)? {
                            break Wait::CatchUp;
                        }
                        pipe.caught_up = true;
                    }
                    let written = send_nonblocking(&dst.stream, pipe.pending())?;
                    pipe.start += written;
                    dst.user_written += written as u64;
                    metrics.add_bytes(direction, written as u64);
                    if pipe.start < pipe.end {
                        break Wait::Writable;
                    }
                }
                pipe.start = 0;
                pipe.end = 0;
                if pipe.buf.len() > CARRY_BUFFER {
                    // Grown to read what the splice held at once (see `read_all_held`).
                    pipe.buf = vec![0u8; CARRY_BUFFER].into_boxed_slice();
                }
                if pipe.eof {
                    break Wait::Done;
                }
                let room = match pipe.read_limit {
                    Some(0) => break Wait::Limited,
                    Some(limit) => pipe
                        .buf
                        .len()
                        .min(usize::try_from(limit).unwrap_or(usize::MAX)),
                    None => pipe.buf.len(),
                };
                match recv_into(&src.stream, &mut pipe.buf[..room])? {
                    None => break Wait::Readable,
                    Some(0) => pipe.eof = true,
                    Some(read) => pipe.took(src, read),
                }
            };
        }
        Ok(())
    }

    /// Resolves when a socket may let a waiting direction move, or when a direction waiting
    /// for the kernel to catch up should look again.
    pub(super) async fn ready(&self) {
        // Client to device reads the client (0) and writes the device (1); the other way back.
        let wait_one = |direction, source: usize, target: usize| {
            let wait = self.waits[direction];
            let fds = &self.fds;
            async move {
                match wait {
                    Wait::Readable => ready(&fds[source], Interest::READABLE).await,
                    Wait::Writable => ready(&fds[target], Interest::WRITABLE).await,
                    Wait::CatchUp => tokio::time::sleep(CATCH_UP_LOOK).await,
                    Wait::Done | Wait::Limited => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = wait_one(Direction::ToDevice, 0, 1) => {}
            () = wait_one(Direction::FromDevice, 1, 0) => {}
        }
    }

    /// Reads every byte the verdict program holds on `direction`'s source into its pipe at
    /// once, however many (the pipe grows for them; the kernel frees as much as it hands over):
    /// a connection leaving the splice under a sender that keeps the window full needs an
    /// instant with nothing held unread, and reading a psock's queue a buffer at a time lets
    /// the sender refill it between two reads. Stops early when `recv` has nothing (the
    /// socket's own receive queue has bytes and the splice's gate is shut) or at the end of
    /// the stream. True when nothing held is left unread.
    pub(super) fn read_all_held(
        &mut self,
        plane: &KernelPlane,
        sockets: &mut Sockets,
        direction: Direction,
    ) -> io::Result<bool> {
        let (src, _) = sockets.ends_mut(direction);
        let pipe = &mut self.pipes[direction];
        let unread = |src: &SplicedSocket| {
            let (_, held) = plane.link_bytes(src.cookie);
            usize::try_from(held.saturating_sub(src.user_read))
                .unwrap_or(usize::MAX)
                .saturating_add(src.to_discard)
        };
        // What is held now, no more: a sender that keeps the receive buffer under pressure
        // gets past the shut gate, and reading on as it refills would never end.
        let mut left = unread(src);
        pipe.make_room(left);
        while left > 0 && !pipe.eof {
            let end = pipe.end;
            match recv_into(&src.stream, &mut pipe.buf[end..end + left])? {
                None => break,
                Some(0) => pipe.eof = true,
                Some(read) => {
                    pipe.took(src, read);
                    left -= read;
                }
            }
        }
        Ok(unread(src) == 0)
    }

    /// Lets `direction` read at most `limit` more bytes off its source (`None`: no limit): a
    /// connection on its way out of the splice reads exactly what the verdict program held, and
    /// leaves the rest to the copy.
    pub(super) fn limit_reads(&mut self, direction: Direction, limit: Option<u64>) {
        self.pipes[direction].read_limit = limit;
    }

    /// Whether a direction's source has ended (its FIN is then passed on by the whole look).
    pub(super) fn source_ended(&self) -> bool {
        BOTH.into_iter().any(|direction| self.pipes[direction].eof)
    }

    /// Whether nothing read is left unwritten, so the kernel path may take over.
    pub(super) fn empty(&self) -> bool {
        BOTH.into_iter()
            .all(|direction| self.pipes[direction].start == self.pipes[direction].end)
    }

    /// Ends the carry: the verdict program goes on holding until the hold path has forwarded
    /// what it held meanwhile (its `forwarded` count is behind), then redirects again. Only
    /// once [`Self::empty`]: bytes read and not written would be overtaken.
    pub(super) fn finish(self, plane: &KernelPlane, sockets: &mut Sockets) -> io::Result<()> {
        debug_assert!(self.empty());
        // Out of tokio's reactor first: the kernel path wakes no one per skb.
        drop(self.fds);
        for socket in sockets.both_mut() {
            let credit = SpliceCredit {
                carry: 0,
                ..socket.credit
            };
            socket.grant(plane, credit)?;
        }
        Ok(())
    }
}

/// Waits until tokio's reactor reports `interest` on `fd`, and clears that report: the caller
/// tries the socket next, and an edge that comes after that try sets it again.
async fn ready(fd: &AsyncFd<OwnedFd>, interest: Interest) {
    match fd.ready(interest).await {
        Ok(mut guard) => guard.clear_ready(),
        // Only when the reactor is gone (the runtime shutting down): the caller's cancellation
        // ends the connection.
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> SplicedSocket {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        SplicedSocket::new(stream, SpliceCredit::default())
    }

    /// Puts `bytes` into the pipe as a read from `src` would.
    fn read_into(pipe: &mut Pipe, src: &mut SplicedSocket, bytes: &[u8]) {
        pipe.make_room(bytes.len());
        pipe.buf[pipe.end..pipe.end + bytes.len()].copy_from_slice(bytes);
        pipe.took(src, bytes.len());
    }

    #[test]
    fn a_pipe_grows_for_what_the_splice_held_and_keeps_what_is_pending() {
        let mut src = socket();
        let mut pipe = Pipe::new();
        read_into(&mut pipe, &mut src, b"first");
        pipe.start = 2;
        let held = vec![7u8; CARRY_BUFFER * 3];
        read_into(&mut pipe, &mut src, &held);
        assert_eq!(&pipe.pending()[..3], b"rst", "pending bytes kept, in order");
        assert_eq!(pipe.pending().len(), 3 + held.len());
        assert_eq!(src.user_read, 5 + held.len() as u64);
    }

    #[test]
    fn bytes_the_hold_path_forwarded_are_skipped_and_not_counted_again() {
        let mut src = socket();
        src.to_discard = 3;
        let mut pipe = Pipe::new();
        pipe.read_limit = Some(10);
        read_into(&mut pipe, &mut src, b"olda");
        assert_eq!(pipe.pending(), b"a");
        assert_eq!((src.to_discard, src.user_read), (0, 1));
        assert_eq!(pipe.read_limit, Some(6), "the limit counts every byte read");
    }
}
