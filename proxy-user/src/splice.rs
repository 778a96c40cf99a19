//! One connection carried by the kernel: the client and device sockets enter the splice hash and
//! the verdict program moves every byte; user space only watches for the end of each direction
//! and propagates it once every byte has moved.
//!
//! The order of the set-up steps is what keeps bytes intact:
//! 1. Bytes already queued on either socket are read and forwarded here, so that nothing large
//!    sits in a receive queue while the sockets enter the hash.
//! 2. `SO_RCVLOWAT` is raised to its maximum: TCP then does not call `data_ready` (which is what
//!    runs the verdict program) for new bytes, only for a FIN. Bytes stay in the receive queue.
//! 3. Both sockets enter the hash, then both links are armed, then `SO_RCVLOWAT` goes back to 1,
//!    which makes TCP call `data_ready` and the verdict program forwards the queue, in order.
//! 4. A FIN that arrived between 3's steps ran the verdict program on an unarmed socket: those
//!    bytes were held on the socket (`SPLICE_HELD`); they are read and forwarded here, before
//!    anything else could follow them (nothing follows a FIN).
//!
//! The end of a direction (FIN) reaches user space as `EPOLLRDHUP` on its source socket. The
//! peer's write side is shut only once every byte has moved: the source's received bytes (less
//! the FIN's sequence number) all went through the verdict program, and all of those are in the
//! target's send queue. Shutting earlier loses what the peer's psock still holds.

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

/// A connection's membership in the watcher; leaving it (drop) removes its sockets from the set.
struct Registration<'a> {
    watcher: &'a SpliceWatcher,
    token: u64,
    fds: [RawFd; 2],
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        for fd in self.fds {
            // SAFETY: removing a (still open) fd from our epoll set; errors are harmless here.
            unsafe {
                libc::epoll_ctl(
                    self.watcher.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
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
            fds,
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
    /// Bytes user space read from this socket (before the splice, or held bytes).
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
    /// No byte was lost or reordered: nothing was forwarded by the kernel.
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
    let mut user_bytes = [0u64; 2];
    // Step 1: what is already queued goes across here.
    match forward_queued(&client, &device, &mut user_bytes, metrics).await {
        Ok(true) => {}
        Ok(false) => {
            return Spliced::Fallback {
                client,
                device,
                reason: "a side closed before the splice was set up".into(),
            };
        }
        Err(err) => {
            // A side reset (or failed) before the splice: pass it on as a reset, not a FIN.
            let _ = sockopt::set_linger_reset(&client);
            let _ = sockopt::set_linger_reset(&device);
            return Spliced::Done(Outcome::from_io(err));
        }
    }
    let (client, device) = match (client.into_std(), device.into_std()) {
        (Ok(client), Ok(device)) => (client, device),
        (Err(err), _) | (_, Err(err)) => return Spliced::Done(Outcome::from_io(err)),
    };
    let mut pair = match enter(plane, client, device, user_bytes, limits.splice_sndbuf) {
        Ok(pair) => pair,
        Err(EnterError::Refused {
            client,
            device,
            reason,
        }) => {
            let reregister = |s: StdTcpStream| TcpStream::from_std(s);
            return match (reregister(client), reregister(device)) {
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
        plane.release(socket.cookie);
    }
    if matches!(outcome, Outcome::Reset { .. }) {
        // Pass the reset on: closing with a zero linger sends RST to whichever side is still up.
        for socket in &pair {
            let _ = sockopt::set_linger_reset(&socket.stream);
        }
    }
    Spliced::Done(outcome)
}

/// Reads whatever is queued on either socket and writes it to the other. `Ok(false)` when a
/// side has already closed (read returned 0): that connection goes the userspace way.
async fn forward_queued(
    client: &TcpStream,
    device: &TcpStream,
    user_bytes: &mut [u64; 2],
    metrics: &Metrics,
) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    for (direction, from, to) in [
        (Direction::ToDevice, client, device),
        (Direction::FromDevice, device, client),
    ] {
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    // `&TcpStream` has no write_all; a short loop keeps the borrow simple.
                    let mut written = 0;
                    while written < n {
                        to.writable().await?;
                        match to.try_write(&buf[written..n]) {
                            Ok(m) => written += m,
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(err) => return Err(err),
                        }
                    }
                    user_bytes[direction as usize] += n as u64;
                    metrics.add_bytes(direction, n as u64);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
    }
    Ok(true)
}

enum EnterError {
    Refused {
        client: StdTcpStream,
        device: StdTcpStream,
        reason: String,
    },
    Io(io::Error),
}

impl From<io::Error> for EnterError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Steps 2 and 3: gate, insert, arm, open the gate. Returns `[client, device]`.
fn enter(
    plane: &KernelPlane,
    client: StdTcpStream,
    device: StdTcpStream,
    user_bytes: [u64; 2],
    sndbuf: u32,
) -> Result<[SplicedSocket; 2], EnterError> {
    let mut pair = [client, device].map(|stream| SplicedSocket {
        stream,
        cookie: 0,
        user_read: 0,
        queued_base: 0,
        user_written: 0,
    });
    pair[0].user_read = user_bytes[Direction::ToDevice as usize];
    pair[1].user_read = user_bytes[Direction::FromDevice as usize];
    // Any failure past this point resets both sides and leaves nothing in the maps.
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
            socket.queued_base = sockopt::bytes_queued_total(&socket.stream)?;
            Ok::<_, io::Error>(())
        })();
        if let Err(err) = prepared {
            for socket in &pair {
                let _ = sockopt::set_linger_reset(&socket.stream);
            }
            return Err(EnterError::Io(err));
        }
    }
    for (inserted, socket) in pair.iter().enumerate() {
        if let Err(err) = plane.insert_socket(socket.cookie, &socket.stream) {
            // Typically EOPNOTSUPP: the socket left ESTABLISHED (a FIN arrived) since step 1.
            // A socket inserted before is gated and unarmed: unless a FIN made the verdict
            // program hold bytes on it (they live in its psock, which leaving the hash
            // discards), it can go back to user space untouched.
            if pair[..inserted].iter().any(|s| plane.held_bytes(s.cookie) > 0) {
                return Err(fail(
                    &pair,
                    io::Error::other("bytes arrived while the splice was being set up and a socket could not enter it"),
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
                reason: format!("socket could not enter the splice hash: {err}"),
            });
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
    for socket in &pair {
        if let Err(err) = sockopt::set_rcvlowat(&socket.stream, 1) {
            return Err(fail(&pair, err));
        }
    }
    Ok(pair)
}

/// Step 4 and the connection's life: wait for FINs, errors, idleness or cancellation.
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
    for source in [0, 1] {
        if plane.held_bytes(pair[source].cookie) > 0
            && let Err(err) = forward_held(plane, pair, source, metrics).await
        {
            warn!(%err, "splice set-up race could not be repaired; resetting the connection");
            return Outcome::Reset {
                side: "proxy",
                error: err.to_string(),
            };
        }
    }

    // Directions: 0 = client -> device, 1 = device -> client. `finished` once the FIN is passed on.
    let mut finished = [false; 2];
    let mut last_bytes = u64::MAX;
    let mut last_activity = Instant::now();
    let idle_check = limits
        .idle_timeout
        .map(|idle| (idle / 8).clamp(Duration::from_millis(20), Duration::from_secs(5)));
    let mut drain_wait = Duration::from_millis(1);
    loop {
        let mut draining = false;
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

        let now = Instant::now();
        if let Some(idle) = limits.idle_timeout {
            let bytes =
                plane.redirected_bytes(pair[0].cookie) + plane.redirected_bytes(pair[1].cookie);
            if bytes != last_bytes {
                last_bytes = bytes;
                last_activity = now;
            } else if now.duration_since(last_activity) >= idle {
                return Outcome::IdleTimeout;
            }
        }
        let mut wake_at = idle_check.map(|every| now + every);
        if draining {
            // Bytes are still on their way through a psock: look again shortly.
            let soon = now + drain_wait;
            wake_at = Some(wake_at.map_or(soon, |at| at.min(soon)));
            drain_wait = (drain_wait * 2).min(Duration::from_millis(50));
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
    let redirected = plane.redirected_bytes(src.cookie);
    let received = sockopt::tcp_info(&src.stream)?.tcpi_bytes_received;
    let consumed = src.user_read + redirected;
    // The FIN takes one sequence number.
    if received.saturating_sub(1) != consumed {
        return Ok(false);
    }
    let queued = sockopt::bytes_queued_total(&dst.stream)?;
    let done = queued.saturating_sub(dst.queued_base) == dst.user_written + redirected;
    tracing::trace!(source, received, consumed, queued, base = dst.queued_base, user_written = dst.user_written, redirected, done, "drain check");
    Ok(done)
}

/// Bytes the verdict program held on `source` because they arrived (with a FIN) between its
/// insertion and its arming: read them from the socket's psock queue and write them to the peer.
/// Safe only if nothing followed them, which holds when the FIN is among them.
async fn forward_held(
    plane: &KernelPlane,
    pair: &mut [SplicedSocket; 2],
    source: usize,
    metrics: &Metrics,
) -> io::Result<()> {
    let held = plane.held_bytes(pair[source].cookie);
    let state = sockopt::poll_state(&pair[source].stream)?;
    let received = sockopt::tcp_info(&pair[source].stream)?.tcpi_bytes_received;
    let redirected = plane.redirected_bytes(pair[source].cookie);
    if !state.read_closed
        || redirected != 0
        || received.saturating_sub(1) != pair[source].user_read + held
    {
        return Err(io::Error::other(format!(
            "{held} bytes arrived before the splice was armed and more may follow"
        )));
    }
    warn!(
        held,
        "forwarding bytes that arrived while the splice was being armed"
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut remaining = held;
    while remaining > 0 {
        let n = recv_nonblocking(&pair[source].stream, &mut buf)?;
        if n == 0 {
            break;
        }
        remaining = remaining.saturating_sub(n as u64);
        pair[source].user_read += n as u64;
        send_all(&pair[1 - source].stream, &buf[..n]).await?;
        pair[1 - source].user_written += n as u64;
        let direction = if source == 0 {
            Direction::ToDevice
        } else {
            Direction::FromDevice
        };
        metrics.add_bytes(direction, n as u64);
    }
    Ok(())
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
