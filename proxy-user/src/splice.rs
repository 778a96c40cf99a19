//! One connection carried by the kernel: the client and device sockets enter the splice hash and
//! the verdict program moves every byte; user space only watches for the end of each direction
//! and propagates it once every byte has moved.
//!
//! Keeping bytes intact and in order while the two sockets enter the hash one after the other:
//! 1. `SO_RCVLOWAT` is raised to its maximum: TCP then calls `data_ready` (which runs the verdict
//!    program) for new bytes only under memory pressure or for a FIN; bytes that arrived before,
//!    or arrive now, wait in the receive queue.
//! 2. Both links are written, then the client socket enters the hash, then the device socket.
//! 3. `SO_RCVLOWAT` goes back to 1, which makes TCP call `data_ready`: the verdict program
//!    forwards whatever is queued, in order (SSH and VNC servers speak first; their banner is
//!    waiting there).
//! 4. If the verdict program ran on a socket whose peer was not in the hash yet, it kept those
//!    bytes on the socket ("held", readable with `recv`) and keeps holding every later byte until
//!    user space has forwarded the held ones (`SPLICE_FORWARDED` catches up), so none overtakes.
//!
//! The end of a direction (FIN) reaches user space as `EPOLLRDHUP` on its source socket. The
//! peer's write side is shut only once every byte has moved: the source's received bytes (less
//! the FIN's sequence number) all went through the verdict program or user space, and all of
//! those are in the target's send queue. Shutting earlier loses what the peer's psock still holds.

use std::{
    collections::HashMap,
    io,
    net::TcpStream as StdTcpStream,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use devicelink_proxy_common::Direction;
use tokio::{io::unix::AsyncFd, net::TcpStream, sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    copy::{CarryLimits, Outcome},
    kernel::KernelPlane,
    metrics::Metrics,
    sockopt,
};

/// Wakes a connection's task when one of its spliced sockets reports a FIN, an error or a
/// hang-up. One epoll set for all spliced sockets, itself polled by tokio.
///
/// The sockets are deliberately not registered with tokio: tokio always asks for `EPOLLIN`, and a
/// spliced socket signals "readable" for every skb the verdict program redirects, which would
/// wake the proxy for each packet. This set asks only for `EPOLLRDHUP` (plus the errors epoll
/// always reports), so the proxy sleeps while bytes flow.
pub struct SpliceWatcher {
    epoll: AsyncFd<OwnedFd>,
    waiters: Mutex<HashMap<u64, Arc<Notify>>>,
    next_token: AtomicU64,
}

/// A connection's membership in the watcher; dropping it stops its wake-ups (closing the sockets
/// takes them out of the epoll set).
struct Registration<'a> {
    watcher: &'a SpliceWatcher,
    token: u64,
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // The sockets leave the epoll set when they are closed, right after this; events that
        // arrive in between find no waiter and are ignored.
        self.watcher
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

impl SpliceWatcher {
    pub fn start() -> io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd keeps the epoll fd open for as long as the AsyncFd owns it.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        let watcher = Arc::new(Self {
            epoll,
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        });
        let dispatcher = Arc::clone(&watcher);
        tokio::spawn(async move { dispatcher.dispatch().await });
        Ok(watcher)
    }

    async fn dispatch(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let Ok(mut guard) = self.epoll.readable().await else {
                return;
            };
            // SAFETY: `events` has room for `len` entries; zero timeout.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    0,
                )
            };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    warn!(%err, "epoll_wait on spliced sockets failed");
                }
                continue;
            }
            if (ready as usize) < events.len() {
                guard.clear_ready();
            }
            let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for event in &events[..ready as usize] {
                let token = event.u64;
                if let Some(notify) = waiters.get(&token) {
                    notify.notify_one();
                }
            }
        }
    }

    fn register(&self, fds: [RawFd; 2]) -> io::Result<Registration<'_>> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, Arc::clone(&notify));
        let registration = Registration {
            watcher: self,
            token,
            notify,
        };
        for fd in fds {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: valid epoll fd, valid socket fd, valid event pointer.
            if unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
            } < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(registration)
    }
}

/// One socket of a spliced pair, with what user space itself moved through it.
struct SplicedSocket {
    stream: StdTcpStream,
    cookie: u64,
    /// Held bytes user space read from this socket and forwarded to its peer.
    user_read: u64,
    /// `bytes_acked + SIOCOUTQ` when the splice started: bytes put into its send queue before.
    queued_base: u64,
    /// Bytes user space wrote into this socket after `queued_base` was taken.
    user_written: u64,
}

/// What becomes of a connection offered to the kernel path.
pub enum Spliced {
    /// Carried to the end in the kernel.
    Done(Outcome),
    /// Could not enter the kernel path (for example the client already sent its FIN: a socket
    /// that is no longer ESTABLISHED cannot enter a sockmap); carry it in user space from here.
    /// No byte was lost or reordered: the kernel forwarded nothing.
    Fallback {
        client: TcpStream,
        device: TcpStream,
        reason: String,
    },
}

/// Carries one connection in the kernel, or hands it back for the userspace path.
pub async fn carry(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Spliced {
    // Out of tokio's reactor: it would wake the proxy for every skb the kernel moves.
    let (client, device) = match (client.into_std(), device.into_std()) {
        (Ok(client), Ok(device)) => (client, device),
        (Err(err), _) | (_, Err(err)) => return Spliced::Done(Outcome::from_io(err)),
    };
    let mut pair = match enter(plane, client, device, limits.splice_sndbuf) {
        Ok(pair) => pair,
        Err(EnterError::Refused {
            client,
            device,
            reason,
        }) => {
            return match (TcpStream::from_std(client), TcpStream::from_std(device)) {
                (Ok(client), Ok(device)) => Spliced::Fallback {
                    client,
                    device,
                    reason,
                },
                (Err(err), _) | (_, Err(err)) => Spliced::Done(Outcome::from_io(err)),
            };
        }
        Err(EnterError::Io(err)) => return Spliced::Done(Outcome::from_io(err)),
    };
    let outcome = watch(plane, watcher, &mut pair, limits, metrics, cancel).await;
    for socket in &pair {
        // Closing the socket (below) takes it out of the hash.
        plane.unlink(socket.cookie, socket.user_read > 0);
    }
    if matches!(outcome, Outcome::Reset { .. }) {
        // Pass the reset on: closing with a zero linger sends RST to whichever side is still up.
        for socket in &pair {
            let _ = sockopt::set_linger_reset(&socket.stream);
        }
    }
    Spliced::Done(outcome)
}

enum EnterError {
    Refused {
        client: StdTcpStream,
        device: StdTcpStream,
        reason: String,
    },
    Io(io::Error),
}

/// Steps 1 to 3. Returns `[client, device]`.
fn enter(
    plane: &KernelPlane,
    client: StdTcpStream,
    device: StdTcpStream,
    sndbuf: u32,
) -> Result<[SplicedSocket; 2], EnterError> {
    let mut pair = [client, device].map(|stream| SplicedSocket {
        stream,
        cookie: 0,
        user_read: 0,
        queued_base: 0,
        user_written: 0,
    });
    // Any failure resets both sides and leaves nothing in the maps.
    let fail = |pair: &[SplicedSocket; 2], err: io::Error| {
        for socket in pair {
            plane.release(socket.cookie);
            let _ = sockopt::set_linger_reset(&socket.stream);
        }
        EnterError::Io(err)
    };
    for socket in &mut pair {
        let prepared = (|| {
            sockopt::set_rcvlowat(&socket.stream, i32::MAX)?;
            // Without a deep send buffer the psock backlog meets EAGAIN and retries a jiffy
            // later, which caps a bulk stream (see the README's benchmark).
            if let Err(err) = sockopt::force_sndbuf(&socket.stream, sndbuf) {
                debug!(%err, "SO_SNDBUFFORCE refused; keeping the default send buffer");
            }
            socket.cookie = sockopt::cookie(&socket.stream)?;
            // Nothing was written to either socket yet, so its send queue is empty and what it
            // has put on the wire so far (the SYN) is all acknowledged.
            socket.queued_base = sockopt::tcp_info(&socket.stream)?.tcpi_bytes_acked;
            Ok::<_, io::Error>(())
        })();
        if let Err(err) = prepared {
            return Err(fail(&pair, err));
        }
    }
    let [client, device] = &pair;
    let armed = plane
        .arm(client.cookie, device.cookie, Direction::ToDevice)
        .and_then(|()| plane.arm(device.cookie, client.cookie, Direction::FromDevice))
        .map_err(|err| io::Error::other(format!("arming the splice: {err}")));
    if let Err(err) = armed {
        return Err(fail(&pair, err));
    }
    // The client first: it is the side that may already have sent its FIN (a request sent whole),
    // and if it cannot enter, nothing has been in the hash yet.
    for (inserted, socket) in pair.iter().enumerate() {
        if let Err(err) = plane.insert_socket(socket.cookie, &socket.stream) {
            // Typically EOPNOTSUPP: the socket is no longer ESTABLISHED.
            if inserted > 0 && plane.link_bytes(pair[0].cookie).1 > 0 {
                // The client's bytes were held waiting for the device socket; they live in the
                // client's psock, which leaving the hash discards. Nothing can carry them now.
                return Err(fail(
                    &pair,
                    io::Error::other(format!(
                        "the device socket could not enter the splice ({err}) after the client's bytes did"
                    )),
                ));
            }
            for socket in &pair {
                plane.release(socket.cookie);
                let _ = sockopt::set_rcvlowat(&socket.stream, 1);
            }
            let [client, device] = pair;
            return Err(EnterError::Refused {
                client: client.stream,
                device: device.stream,
                reason: format!(
                    "{} socket could not enter the splice hash: {}",
                    if inserted == 0 { "client" } else { "device" },
                    std::error::Error::source(&err)
                        .map_or_else(|| err.to_string(), ToString::to_string)
                ),
            });
        }
    }
    for socket in &pair {
        if let Err(err) = sockopt::set_rcvlowat(&socket.stream, 1) {
            return Err(fail(&pair, err));
        }
    }
    Ok(pair)
}

/// After held bytes were forwarded (or at start), look again after these delays: a verdict run
/// that read the old forwarded count may still be adding to the held count.
const HELD_RECHECKS: [Duration; 3] = [
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
];

/// Step 4 and the connection's life: forward held bytes, wait for FINs, errors, idleness or
/// cancellation.
async fn watch(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    pair: &mut [SplicedSocket; 2],
    limits: &CarryLimits,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Outcome {
    let registration =
        match watcher.register([pair[0].stream.as_raw_fd(), pair[1].stream.as_raw_fd()]) {
            Ok(registration) => registration,
            Err(err) => return Outcome::from_io(err),
        };

    // Directions: 0 = client -> device, 1 = device -> client. `finished` once the FIN is passed on.
    let mut finished = [false; 2];
    let mut last_bytes = u64::MAX;
    let mut last_activity = Instant::now();
    let idle_check = limits
        .idle_timeout
        .map(|idle| (idle / 8).clamp(Duration::from_millis(20), Duration::from_secs(5)));
    let mut drain_wait = Duration::from_millis(1);
    // At start one look 1 ms later is enough: a verdict run that failed to redirect (peer not in
    // the hash yet) began before `enter` returned and ends within microseconds. The longer
    // rechecks only follow an actual forward.
    let mut recheck = Some((HELD_RECHECKS.len() - 1, Instant::now() + HELD_RECHECKS[0]));
    loop {
        let now = Instant::now();
        let mut draining = false;
        for source in [0, 1] {
            match forward_held(plane, pair, source, metrics).await {
                Ok(HeldState::Forwarded) => recheck = Some((0, now + HELD_RECHECKS[0])),
                Ok(HeldState::Pending) => {
                    recheck = Some((
                        0,
                        recheck.map_or(now + HELD_RECHECKS[0], |(_, at)| {
                            at.min(now + HELD_RECHECKS[0])
                        }),
                    ));
                }
                Ok(HeldState::None) => {}
                Err(err) => {
                    return Outcome::Reset {
                        side: "proxy",
                        error: format!("forwarding held bytes: {err}"),
                    };
                }
            }
        }
        if let Some((step, at)) = recheck
            && now >= at
        {
            recheck = HELD_RECHECKS
                .get(step + 1)
                .map(|delay| (step + 1, now + *delay));
        }
        for source in [0, 1] {
            let target = 1 - source;
            let state = match sockopt::poll_state(&pair[source].stream) {
                Ok(state) => state,
                Err(err) => return Outcome::from_io(err),
            };
            if state.error {
                let error = sockopt::take_error(&pair[source].stream)
                    .ok()
                    .flatten()
                    .map_or_else(|| "connection error".to_string(), |e| e.to_string());
                return Outcome::Reset {
                    side: if source == 0 { "client" } else { "device" },
                    error,
                };
            }
            if finished[source] || !state.read_closed {
                continue;
            }
            match drained(plane, pair, source) {
                Ok(true) => {
                    if let Err(err) = sockopt::shutdown_write(&pair[target].stream) {
                        return Outcome::from_io(err);
                    }
                    finished[source] = true;
                    drain_wait = Duration::from_millis(1);
                }
                Ok(false) => draining = true,
                Err(err) => return Outcome::from_io(err),
            }
        }
        if finished == [true, true] {
            return Outcome::Completed;
        }

        if let Some(idle) = limits.idle_timeout {
            let bytes = plane.link_bytes(pair[0].cookie).0
                + plane.link_bytes(pair[1].cookie).0
                + pair[0].user_read
                + pair[1].user_read;
            if bytes != last_bytes {
                last_bytes = bytes;
                last_activity = now;
            } else if now.duration_since(last_activity) >= idle {
                return Outcome::IdleTimeout;
            }
        }
        let mut wake_at = idle_check.map(|every| now + every);
        let mut sooner = |at: Instant| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
        if draining {
            // Bytes are still on their way through a psock: look again shortly.
            sooner(now + drain_wait);
            drain_wait = (drain_wait * 2).min(Duration::from_millis(50));
        }
        if let Some((_, at)) = recheck {
            sooner(at);
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = registration.notify.notified() => {}
            () = sleep => {}
            () = cancel.cancelled() => return Outcome::Cancelled,
        }
    }
}

/// Whether every byte of direction `source -> 1 - source` has moved: all that the source
/// received (less the FIN) went through the verdict program or user space, and all of that is in
/// the target's send queue.
fn drained(plane: &KernelPlane, pair: &[SplicedSocket; 2], source: usize) -> io::Result<bool> {
    let src = &pair[source];
    let dst = &pair[1 - source];
    let (redirected, _) = plane.link_bytes(src.cookie);
    let received = sockopt::tcp_info(&src.stream)?.tcpi_bytes_received;
    let consumed = src.user_read + redirected;
    // The FIN takes one sequence number.
    if received.saturating_sub(1) != consumed {
        return Ok(false);
    }
    let queued = sockopt::bytes_queued_total(&dst.stream)?;
    Ok(queued.saturating_sub(dst.queued_base) == dst.user_written + redirected)
}

enum HeldState {
    /// Nothing held beyond what was forwarded.
    None,
    /// Held bytes were forwarded just now.
    Forwarded,
    /// Held bytes are counted but not readable yet (still on their way into the psock queue).
    Pending,
}

/// Forwards the bytes the verdict program held on `source` (see step 4): read them from the
/// socket's psock queue, write them to the peer, then tell the verdict program.
async fn forward_held(
    plane: &KernelPlane,
    pair: &mut [SplicedSocket; 2],
    source: usize,
    metrics: &Metrics,
) -> io::Result<HeldState> {
    let (_, held) = plane.link_bytes(pair[source].cookie);
    let pending = held.saturating_sub(pair[source].user_read);
    if pending == 0 {
        return Ok(HeldState::None);
    }
    let direction = if source == 0 {
        Direction::ToDevice
    } else {
        Direction::FromDevice
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut moved = 0u64;
    while moved < pending {
        let want = (pending - moved).min(buf.len() as u64) as usize;
        let n = recv_nonblocking(&pair[source].stream, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        send_all(&pair[1 - source].stream, &buf[..n]).await?;
        moved += n as u64;
        pair[source].user_read += n as u64;
        pair[1 - source].user_written += n as u64;
        metrics.add_bytes(direction, n as u64);
    }
    if moved == 0 {
        return Ok(HeldState::Pending);
    }
    debug!(moved, "forwarded bytes held while the splice was set up");
    plane
        .set_forwarded(pair[source].cookie, pair[source].user_read)
        .map_err(|err| io::Error::other(format!("updating the forwarded count: {err}")))?;
    Ok(HeldState::Forwarded)
}

fn recv_nonblocking(stream: &StdTcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid fd and buffer.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

async fn send_all(stream: &StdTcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}
