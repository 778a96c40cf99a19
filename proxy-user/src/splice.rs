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
//!    user space has forwarded the held ones (the `forwarded` count in `SPLICE_CREDITS` catches
//!    up), so none overtakes.
//!
//! Flow control. The kernel queues redirected bytes for the peer socket without any bound of
//! its own (the skbs leave the source's receive buffer, whose window reopens at once), so a fast
//! client uploading to a slow device would have the proxy buffer the whole upload in kernel
//! memory while the client believed it delivered. So each direction may have at most
//! `--splice-max-queued` bytes redirected and not yet acknowledged by the receiver:
//! - each time a quarter of the limit more is redirected the verdict program wakes user space
//!   (`pace_limit`, a ring buffer notice), which either moves the marks on (the receiver keeps
//!   up) or clamps the source's TCP window until the queue is back under a quarter (see
//!   [`pace`]): the sender slows, nothing is copied;
//! - a sender that still reaches the hard limit (`redirect_limit`) has its bytes held as in
//!   step 4; they stay charged to the source's receive buffer, so its window shuts. User space
//!   waits until the receiver has drained half the limit and every redirected byte is in the
//!   target's send queue, forwards the held bytes and grants a new limit (see [`forward_held`]).
//!
//! The end of a direction (FIN) reaches user space as `EPOLLRDHUP` on its source socket. The
//! peer's write side is shut only once every byte has moved: the source's received bytes (less
//! the FIN's sequence number) all went through the verdict program or user space, and all of
//! those are in the target's send queue. Shutting earlier loses what the peer's psock still holds.

use std::{
    collections::HashMap,
    io,
    net::TcpStream as StdTcpStream,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use devicelink_proxy_common::{Direction, SpliceCredit, pace_mark};
use tokio::{io::unix::AsyncFd, net::TcpStream, sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    copy::{CarryLimits, Outcome},
    kernel::KernelPlane,
    session::ConnectionCounters,
    sockopt,
};

/// Wakes a connection's task when one of its spliced sockets reports a FIN, an error or a
/// hang-up, or when the verdict program starts holding bytes on one (a notice in its ring
/// buffer). One epoll set for all spliced sockets, itself polled by tokio.
///
/// The sockets are deliberately not registered with tokio: tokio always asks for `EPOLLIN`, and a
/// spliced socket signals "readable" for every skb the verdict program redirects, which would
/// wake the proxy for each packet. This set asks only for `EPOLLRDHUP` (plus the errors epoll
/// always reports), so the proxy sleeps while bytes flow.
pub struct SpliceWatcher {
    epoll: AsyncFd<OwnedFd>,
    waiters: Mutex<Waiters>,
    next_token: AtomicU64,
}

#[derive(Default)]
struct Waiters {
    by_token: HashMap<u64, Arc<Notify>>,
    /// Socket cookie -> token, for the verdict program's notices.
    by_cookie: HashMap<u64, u64>,
}

/// A connection's membership in the watcher; dropping it stops its wake-ups (closing the sockets
/// takes them out of the epoll set).
struct Registration<'a> {
    watcher: &'a SpliceWatcher,
    token: u64,
    cookies: [u64; 2],
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // The sockets leave the epoll set when they are closed, right after this; events that
        // arrive in between find no waiter and are ignored.
        let mut waiters = self
            .watcher
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiters.by_token.remove(&self.token);
        for cookie in self.cookies {
            waiters.by_cookie.remove(&cookie);
        }
    }
}

/// How often the watcher checks whether notices were lost (the ring buffer was full): then it
/// wakes every connection, which looks for held bytes itself.
const LOST_NOTICE_CHECK: Duration = Duration::from_secs(1);

impl SpliceWatcher {
    pub fn start(plane: &Arc<KernelPlane>) -> io::Result<Arc<Self>> {
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
            waiters: Mutex::new(Waiters::default()),
            next_token: AtomicU64::new(1),
        });
        let dispatcher = Arc::clone(&watcher);
        tokio::spawn(async move { dispatcher.dispatch().await });
        let notices = plane
            .take_notices()
            .ok_or_else(|| io::Error::other("the splice notices are already watched"))?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd owns it.
        let notices =
            unsafe { AsyncFd::register_with_interest(notices, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        let dispatcher = Arc::clone(&watcher);
        let plane = Arc::clone(plane);
        tokio::spawn(async move { dispatcher.dispatch_notices(notices, &plane).await });
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
                if let Some(notify) = waiters.by_token.get(&token) {
                    notify.notify_one();
                }
            }
        }
    }

    /// Wakes the connection of each socket the verdict program names in its ring buffer.
    async fn dispatch_notices(&self, mut ring: AsyncFd<RingBuf<MapData>>, plane: &KernelPlane) {
        let mut lost_seen = plane.counters().lost_notices;
        let mut check = tokio::time::interval(LOST_NOTICE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let Ok(mut guard) = ready else { return };
                    let mut cookies = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        if let Some(bytes) = item.get(..8) {
                            let mut cookie = [0u8; 8];
                            cookie.copy_from_slice(bytes);
                            cookies.push(u64::from_ne_bytes(cookie));
                        }
                    }
                    guard.clear_ready();
                    let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                    for cookie in cookies {
                        if let Some(notify) = waiters
                            .by_cookie
                            .get(&cookie)
                            .and_then(|token| waiters.by_token.get(token))
                        {
                            notify.notify_one();
                        }
                    }
                }
                _ = check.tick() => {
                    let lost = plane.counters().lost_notices;
                    if lost != lost_seen {
                        lost_seen = lost;
                        warn!("splice notices were lost (ring buffer full); waking every connection");
                        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                        for notify in waiters.by_token.values() {
                            notify.notify_one();
                        }
                    }
                }
            }
        }
    }

    fn register(&self, pair: &[SplicedSocket; 2]) -> io::Result<Registration<'_>> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let cookies = [pair[0].cookie, pair[1].cookie];
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            waiters.by_token.insert(token, Arc::clone(&notify));
            for cookie in cookies {
                waiters.by_cookie.insert(cookie, token);
            }
        }
        let registration = Registration {
            watcher: self,
            token,
            cookies,
            notify,
        };
        for socket in pair {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: valid epoll fd, valid socket fd, valid event pointer.
            if unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    socket.stream.as_raw_fd(),
                    &mut event,
                )
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
    /// Whether user space wrote a `SPLICE_CREDITS` entry for it (to remove at the end).
    credit_written: bool,
    /// Held bytes already forwarded that are still at the head of the socket's queue (reading
    /// them off failed for the moment); taken off before anything else is read.
    to_discard: usize,
    /// What user space last granted this socket (its `SPLICE_CREDITS` entry, or the defaults
    /// the verdict program assumes without one).
    credit: SpliceCredit,
    /// The `TCP_WINDOW_CLAMP` to restore when a paced direction may run again; see [`unclamped_window`].
    window_clamp: i32,
    /// Whether its window is clamped to slow its sender (the direction it feeds is paced).
    paced: bool,
    /// What the clamp on its window may still let in; see [`Clamp`].
    clamped: Clamp,
    /// Whether the clamp failed to slow its sender and was lifted (see [`pace`]); until the
    /// queue is back under the mark its receive buffer is small and the hold stops the sender.
    clamp_failed: bool,
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
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Spliced {
    // Out of tokio's reactor: it would wake the proxy for every skb the kernel moves.
    let (client, device) = match (client.into_std(), device.into_std()) {
        (Ok(client), Ok(device)) => (client, device),
        (Err(err), _) | (_, Err(err)) => return Spliced::Done(Outcome::from_io(err)),
    };
    let mut pair = match enter(
        plane,
        client,
        device,
        limits.splice_sndbuf,
        limits.splice_max_queued,
    ) {
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
    let [client_socket, device_socket] = &pair;
    metrics.spliced(client_socket.cookie, device_socket.cookie);
    let outcome = watch(plane, watcher, &mut pair, limits, metrics, cancel).await;
    // The kernel's counts go with the link entries below: keep them for the session's record.
    metrics.splice_ended(
        pair.each_ref()
            .map(|socket| plane.link_bytes(socket.cookie).0),
    );
    for socket in &pair {
        // Closing the socket (below) takes it out of the hash.
        plane.unlink(socket.cookie, socket.credit_written);
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
    max_queued: u32,
) -> Result<[SplicedSocket; 2], EnterError> {
    let mut pair = [client, device].map(|stream| SplicedSocket {
        stream,
        cookie: 0,
        user_read: 0,
        queued_base: 0,
        user_written: 0,
        credit_written: false,
        to_discard: 0,
        credit: SpliceCredit {
            forwarded: 0,
            redirect_limit: u64::from(max_queued),
            pace_limit: pace_mark(u64::from(max_queued)),
            pace_gen: 0,
        },
        window_clamp: 0,
        paced: false,
        clamped: Clamp::default(),
        clamp_failed: false,
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
            // A fixed receive buffer bounds what a hold keeps on the socket (about one TCP
            // window) and stops the gate below from raising the buffer to tcp_rmem's maximum.
            sockopt::set_rcvbuf(&socket.stream, hold_rcvbuf(max_queued))?;
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

/// When to look again at a direction waiting for its target to drain `excess` more bytes:
/// when the drain rate seen since the last look says it will have, within 1-50 ms. A fast
/// receiver is looked at often enough that its queue never runs dry; a slow one (a device on
/// LTE) costs a few looks a second.
fn next_drain_look(last: Option<(Instant, u64)>, now: Instant, excess: u64) -> Duration {
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(50);
    match (last, drain_eta(last, now, excess)) {
        (_, Some(eta)) => eta.clamp(MIN, MAX),
        (None, None) => MIN,
        // Nothing drained since the last look: back off.
        (Some((at, _)), None) => (now.duration_since(at) * 2).clamp(MIN, MAX),
    }
}

/// How long until `excess` more bytes have drained, at the rate seen since the look `last`
/// (when, and how much was still to drain then); `None` without a look before or without any
/// drain since.
fn drain_eta(last: Option<(Instant, u64)>, now: Instant, excess: u64) -> Option<Duration> {
    let (at, last_excess) = last?;
    let elapsed = now.duration_since(at).as_secs_f64();
    let drained = last_excess.saturating_sub(excess) as f64;
    (drained > 0.0 && elapsed > 0.0)
        .then(|| Duration::from_secs_f64(excess as f64 * elapsed / drained))
}

/// Step 4 and the connection's life: forward held bytes, wait for FINs, errors, idleness or
/// cancellation.
async fn watch(
    plane: &KernelPlane,
    watcher: &SpliceWatcher,
    pair: &mut [SplicedSocket; 2],
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Outcome {
    let registration = match watcher.register(pair) {
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
    // Per direction, while it waits for its target to drain below half the queue limit: when it
    // last looked and how much was still to drain, to time the next look from the drain rate.
    let mut drain_watch: [Option<(Instant, u64)>; 2] = [None, None];
    // The same for a paced direction waiting to run at full speed again.
    let mut pace_watch: [Option<(Instant, u64)>; 2] = [None, None];
    // At start one look 1 ms later is enough: a verdict run that failed to redirect (peer not in
    // the hash yet) began before `enter` returned and ends within microseconds. The longer
    // rechecks only follow an actual forward.
    let mut recheck = Some((HELD_RECHECKS.len() - 1, Instant::now() + HELD_RECHECKS[0]));
    let mut integrity_due = Instant::now();
    // Where held bytes are peeked and read off, kept from one look to the next while a
    // direction is forwarding (the next look follows within a millisecond): a hold is forwarded
    // over many rounds of up to megabytes each, and a fresh zeroed buffer per look put page
    // faults and zeroing at 4-12% of the proxy's samples in profiles of bulk streams that hit
    // holds (nothing is zeroed since: see `recv_nonblocking`). Dropped at any other look, since
    // waiting for a device to drain can take seconds on a slow link: connections holding at
    // once must not each keep megabytes meanwhile.
    let mut held_buf = Vec::new();
    loop {
        let now = Instant::now();
        let mut draining = false;
        let mut limit_wake: Option<Instant> = None;
        let mut forwarding = false;
        for source in [0, 1] {
            let state = forward_held(plane, pair, source, limits, metrics, &mut held_buf);
            forwarding |= matches!(state, Ok(HeldState::Forwarded));
            match state {
                Ok(HeldState::Forwarded) => {
                    recheck = Some((0, now + HELD_RECHECKS[0]));
                    drain_watch[source] = None;
                }
                Ok(HeldState::Waiting { excess }) => {
                    let wait = next_drain_look(drain_watch[source], now, excess);
                    drain_watch[source] = Some((now, excess));
                    limit_wake = Some(limit_wake.map_or(now + wait, |at| at.min(now + wait)));
                }
                // Not all forwarded yet: look again at the shortest delay, from now (a recheck
                // time already past would otherwise advance the schedule to its longer steps).
                Ok(HeldState::Pending) => recheck = Some((0, now + HELD_RECHECKS[0])),
                Ok(HeldState::None) => {}
                Err(err) => {
                    return Outcome::Reset {
                        side: "proxy",
                        error: format!("forwarding held bytes: {err}"),
                    };
                }
            }
        }
        if !forwarding {
            held_buf = Vec::new();
        }
        let pace_wake = match pace_both(plane, pair, limits, finished, &mut pace_watch, now) {
            Ok(wake) => wake,
            Err(err) => return Outcome::from_io(err),
        };
        if let Some((step, at)) = recheck
            && now >= at
        {
            recheck = HELD_RECHECKS
                .get(step + 1)
                .map(|delay| (step + 1, now + *delay));
        }
        if now >= integrity_due {
            integrity_due = now + INTEGRITY_CHECK_EVERY;
            for source in [0, 1] {
                if !finished[source]
                    && let Some(outcome) = check_integrity(plane, pair, source, metrics)
                {
                    return outcome;
                }
            }
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
                    // The last chance to stop a corrupted stream: before its FIN is passed on.
                    if let Some(outcome) = check_integrity(plane, pair, source, metrics) {
                        return outcome;
                    }
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
            // Forwarded bytes not read off yet (a hand-back still pending) are not the peer's
            // concern, but read them off so that closing never looks like unread data.
            for socket in pair.iter_mut() {
                let _ = discard_forwarded(socket, &mut held_buf);
            }
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
        if let Some(at) = limit_wake {
            sooner(at);
        }
        // A paced direction looks every few milliseconds whether its receiver caught up (see
        // `next_pace_look`). Until something else is due those looks do only that, two
        // syscalls each, not the whole look above.
        let mut pace_at = pace_wake;
        loop {
            let deadline = match (wake_at, pace_at) {
                (Some(other), Some(pace)) => Some(other.min(pace)),
                (other, pace) => other.or(pace),
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = registration.notify.notified() => break,
                () = sleep => {}
                () = cancel.cancelled() => return Outcome::Cancelled,
            }
            let now = Instant::now();
            if pace_at.is_none() || wake_at.is_some_and(|at| now >= at) {
                break;
            }
            pace_at = match pace_both(plane, pair, limits, finished, &mut pace_watch, now) {
                Ok(wake) => wake,
                Err(err) => return Outcome::from_io(err),
            };
            if pace_at.is_none() {
                // Running at full speed again: a whole look moves everything else on.
                break;
            }
        }
    }
}

/// [`pace`] for both directions still running; returns when the next paced look is due, if
/// either direction is paced. `pace_watch` keeps, per direction, when it last looked and how
/// much was still to drain, to time the next look from the drain rate.
fn pace_both(
    plane: &KernelPlane,
    pair: &mut [SplicedSocket; 2],
    limits: &CarryLimits,
    finished: [bool; 2],
    pace_watch: &mut [Option<(Instant, u64)>; 2],
    now: Instant,
) -> io::Result<Option<Instant>> {
    let mut wake: Option<Instant> = None;
    for source in [0, 1] {
        if finished[source] {
            continue;
        }
        match pace(plane, pair, source, limits, now)? {
            Some(excess) => {
                let look =
                    next_pace_look(pace_watch[source], now, excess, pair[source].clamp_failed);
                pace_watch[source] = Some((now, excess));
                wake = Some(wake.map_or(now + look, |at| at.min(now + look)));
            }
            None => pace_watch[source] = None,
        }
    }
    Ok(wake)
}

/// How often a connection's byte counts are checked for bytes the kernel passed twice (see
/// [`check_integrity`]), besides once per direction before its FIN is passed on. Each check
/// reads `TCP_INFO` on both sockets, which takes their locks (the psock kworker often holds the
/// sending one) and runs pending softirq work in the proxy's context on release; checking at
/// every look (each pace notice, every few milliseconds) made these reads more than half of a
/// bulk stream's `getsockopt` calls (~2000 of a 3 s run; ~900 since). A fault is caught 50 ms
/// later at most: the bytes have reached the peer by the time any check sees them anyway, and
/// the reset follows.
const INTEGRITY_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Whether direction `source -> 1 - source` passed bytes twice ([`excess_consumed`],
/// [`excess_sent`]): if so, counts and logs it and returns the reset that ends the connection.
fn check_integrity(
    plane: &KernelPlane,
    pair: &[SplicedSocket; 2],
    source: usize,
    metrics: &ConnectionCounters,
) -> Option<Outcome> {
    match excess_consumed(plane, pair, source)
        .and_then(|excess| Ok(excess.max(excess_sent(plane, pair, source)?)))
    {
        Ok(0) => None,
        Ok(excess) => {
            metrics.count_integrity_error();
            let target = if source == 0 { "device" } else { "client" };
            error!(
                excess,
                target,
                "the kernel splice passed {excess} bytes to the {target} twice (a kernel sockmap fault under retransmissions); resetting the connection rather than passing on a corrupted stream"
            );
            Some(Outcome::Reset {
                side: "proxy",
                error: format!("splice integrity: {excess} bytes passed twice to the {target}"),
            })
        }
        Err(err) => Some(Outcome::from_io(err)),
    }
}

/// How many bytes more than its socket received the verdict program and user space together took
/// from the source of direction `source -> 1 - source`: always 0, unless the kernel handed the
/// verdict program bytes it had handed over before. Seen on this kernel (6.18) under heavy traffic
/// both ways at once, about one 256 MiB echo in ten, always with TCP retransmissions: a
/// retransmitted segment that partly overlaps bytes already received is queued whole, and the
/// sockmap's reader (`tcp_read_skb`) passes skbs on whole, without trimming the overlap by
/// sequence number as `recvmsg` does. The counts are read before the received count, which only
/// grows, so bytes arriving in between cannot look like an excess.
fn excess_consumed(
    plane: &KernelPlane,
    pair: &[SplicedSocket; 2],
    source: usize,
) -> io::Result<u64> {
    let src = &pair[source];
    let (redirected, _) = plane.link_bytes(src.cookie);
    let received = sockopt::tcp_info(&src.stream)?.tcpi_bytes_received;
    Ok((redirected + src.user_read).saturating_sub(received))
}

/// How many bytes more than it was given the target of direction `source -> 1 - source` has
/// taken into its send queue: always 0, unless the kernel splice sent bytes twice (the companion
/// of [`excess_consumed`], on the sending side). The count of bytes in the send queue is read
/// before the redirected count, which only grows, so a byte redirected in between cannot look
/// like an excess.
fn excess_sent(plane: &KernelPlane, pair: &[SplicedSocket; 2], source: usize) -> io::Result<u64> {
    let dst = &pair[1 - source];
    let entered = bytes_entered(dst)?;
    let (redirected, _) = plane.link_bytes(pair[source].cookie);
    Ok(entered.saturating_sub(redirected + dst.user_written))
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
    target_caught_up(dst, redirected)
}

/// Bytes that entered `target`'s send queue since the splice started (acknowledged or not).
fn bytes_entered(target: &SplicedSocket) -> io::Result<u64> {
    Ok(sockopt::bytes_queued_total(&target.stream)?.saturating_sub(target.queued_base))
}

#[derive(Debug, PartialEq, Eq)]
enum HeldState {
    /// Nothing held beyond what was forwarded.
    None,
    /// Held bytes were forwarded just now, and the kernel path is open again.
    Forwarded,
    /// Held bytes are counted but not all forwarded yet: not readable yet (still on their way
    /// into the psock queue), or more kept arriving; look again shortly.
    Pending,
    /// The direction reached its queue limit: the target must drain to half of it (this many
    /// bytes more) before held bytes go on.
    Waiting { excess: u64 },
}

/// Bytes of direction `source -> 1 - source` inside the proxy: put on their way to the target
/// (redirected by the kernel or written by user space) and not yet acknowledged by the receiver.
/// This is what `--splice-max-queued` bounds.
fn queued_in_proxy(target: &SplicedSocket, redirected: u64) -> io::Result<u64> {
    let acked = sockopt::tcp_info(&target.stream)?
        .tcpi_bytes_acked
        .saturating_sub(target.queued_base);
    Ok((redirected + target.user_written).saturating_sub(acked))
}

/// How many rounds one call forwards newly held bytes before it yields to the connection's
/// other work (it is called again 1 ms later).
const CATCH_UP_ROUNDS: usize = 16;

/// The most held bytes one round copies.
const MAX_ROUND_BYTES: u64 = 16 << 20;

/// Reads off `src` the held bytes already forwarded (with `MSG_PEEK`) that are still at its head.
/// False if some are left: the socket's receive path refused for the moment (it does while new
/// bytes wait for the verdict program), and they are taken at the next look.
fn discard_forwarded(src: &mut SplicedSocket, buf: &mut Vec<u8>) -> io::Result<bool> {
    while src.to_discard > 0 {
        let want = src.to_discard.min(MAX_ROUND_BYTES as usize);
        let n = recv_nonblocking(&src.stream, buf, want, 0)?;
        if n == 0 {
            return Ok(false);
        }
        src.to_discard -= n;
    }
    Ok(true)
}

/// The receive window a paced sender is held to: a trickle (2 KiB per round trip: 70 KB/s across
/// the internet, 80 MB/s at a LAN round trip, but 200 MB/s and more between namespaces on one
/// host, where a slow receiver cannot keep up with it; see [`pace`]) that the receiver drains
/// while the queue shrinks.
const PACED_WINDOW: i32 = 2048;

/// How long after clamping the queue may still grow, at least: the sender may send the window
/// it was already granted (up to a receive buffer, ~8 MB, about 5 ms at full speed here), and
/// it takes about a round trip to arrive (twice the sender's smoothed RTT is allowed).
const CLAMP_SETTLE: Duration = Duration::from_millis(5);

/// How much a clamped queue may grow again once settled, before the clamp counts as failed.
const CLAMP_GROWTH: u64 = 1 << 20;

/// What a clamp on a source socket's window may still let in, to tell a clamp that works from
/// one whose trickle outruns the receiver (see [`clamp_failing`]).
#[derive(Clone, Copy, Debug)]
struct Clamp {
    /// When the window granted before the clamp has had time to arrive.
    settles_at: Instant,
    /// The least queued seen since it settled (0 until then).
    low: u64,
    /// Above this much queued the clamp has failed, settled or not; see [`clamp_ceiling`].
    ceiling: u64,
}

impl Default for Clamp {
    fn default() -> Self {
        Self {
            settles_at: Instant::now(),
            low: 0,
            ceiling: 0,
        }
    }
}

/// Above how much queued a clamp set at `queued`, on a sender granted `window` bytes, has
/// failed even before it settled: half the limit, or what the granted window explains if there
/// is room for another window after that under three quarters of the limit.
///
/// Half the limit alone misjudged single bulk streams: the clamp may come late (the verdict
/// program wakes user space at most every half mark), and a sender granted an 8 MB window at
/// 30 MiB queued legitimately takes the queue to 38 MiB; each such false failure sent the
/// stream into holds (and copies) at the hard limit, several times per 4 s run. But when the
/// window is large against the limit (a fast sender into `--splice-max-queued 8M`), waiting for
/// it leaves no room to stop a clamp that fails for real before the hard limit, where holds
/// with a full receive buffer copy a lot (10% of a slow device's upload against 1.5-3%).
/// Without `tcpi_rcv_wnd` in `TCP_INFO` (kernels before 6.2) the window reads 0: half the limit.
fn clamp_ceiling(queued: u64, window: u64, limit: u64) -> u64 {
    let explained = queued + window;
    if explained + window <= limit / 4 * 3 {
        explained.max(limit / 2)
    } else {
        limit / 2
    }
}

/// Whether a clamp fails to slow its sender: the queue passed its ceiling ([`clamp_ceiling`]),
/// or once the window granted before had time to arrive it grew again by a MiB. Across the
/// internet a clamped sender trickles at kilobytes per second and never grows a queue that fast.
fn clamp_failing(clamp: Clamp, now: Instant, queued: u64, limit: u64) -> bool {
    queued > clamp.ceiling.max(limit / 2)
        || (now >= clamp.settles_at && clamp.low > 0 && queued > clamp.low + CLAMP_GROWTH)
}

/// The receive buffer of a sender the clamp failed to slow (`SO_RCVBUF`, doubled by the
/// kernel): the hold at the hard limit keeps at most about this much for user space to copy.
const PACED_RCVBUF: u32 = 128 << 10;

/// When a paced direction looks again whether its receiver caught up: when the drain rate seen
/// since its last look says the excess will be gone, within 2-10 ms. At the moment the clamp is
/// lifted a quarter of the limit is still queued (about 10 ms of work for a fast receiver here),
/// so a look a little late costs nothing, but one far too late lets the psock backlog run dry:
/// looks backing off to 50 ms cost 15% of a saturated stream (11-11.8 against 13-13.8 Gbit/s).
/// Each look is a wake-up of the proxy, and with tick-based CPU accounting the network work
/// that runs while it is awake is charged to it (`TCP_INFO` takes the socket lock, and
/// releasing it runs pending softirq work in the proxy's context): a look every millisecond
/// cost 0.08 s of proxy CPU per GiB. 2-10 ms instead of 1-5, together with [`clamp_ceiling`],
/// took a single stream's proxy CPU from 0.070 to 0.061 s/GiB uploading and from 0.065 to
/// 0.046 downloading (medians of 6 runs of 4 s, same throughput). Right after the clamp the
/// queue still grows (the window already granted), which says nothing about the drain: look
/// again soon.
///
/// A direction whose clamp failed (`clamp_failed`, see [`pace`]) is stopped by holds, not by
/// these looks, which only give its receive buffer back once the queue is under the mark: they
/// come every 10-20 ms (every 1-5 ms cost the proxy 0.04-0.05 s of CPU per GiB with eight
/// streams each way).
fn next_pace_look(
    last: Option<(Instant, u64)>,
    now: Instant,
    excess: u64,
    clamp_failed: bool,
) -> Duration {
    let (min, max) = if clamp_failed {
        (Duration::from_millis(10), Duration::from_millis(20))
    } else {
        (Duration::from_millis(2), Duration::from_millis(10))
    };
    drain_eta(last, now, excess).map_or(min, |eta| eta.clamp(min, max))
}

/// Slows the sender of direction `source -> 1 - source` before its queue limit makes the verdict
/// program hold (and user space copy) its bytes, and lets it run again once the receiver caught
/// up. While the direction is paced, returns how much more its receiver must drain (see
/// [`next_pace_look`]).
///
/// Each time the direction has redirected a quarter of the limit more ([`pace_mark`]), the
/// verdict program wakes user space. If the receiver keeps up (a quarter of the limit or less is
/// queued), both marks move on. Otherwise user space clamps the source socket's TCP window
/// (`TCP_WINDOW_CLAMP`); TCP does not take back window it already advertised, so the sender may
/// still send up to one receive buffer (an eighth of the limit at most), which the remaining
/// three quarters have room for. When the queue is back under a quarter the clamp is lifted
/// (the window grows back within a few round trips) and the marks move on. Measured on a
/// saturated iperf3 upload: the share of bytes the proxy copies fell from 15-20% (holding at
/// the hard limit) to none.
///
/// The clamp slows a sender only if its trickle is slower than the receiver. Between namespaces
/// on one host (round trips of ~10 µs) it is not when the receiver is slow, and then clamping
/// many connections floods the machine with 2 KiB segments: iperf3 `-P 8 --bidir` fell to 0.2
/// Gbit/s (12 with the userspace copy). So if the queue of a clamped direction grows again
/// ([`clamp_failing`]), the clamp is lifted and the receive buffer made small instead: the
/// sender runs into the hard limit, where the hold shuts its window with few bytes to copy
/// (12-16 Gbit/s, 0-2% copied). Across the internet the trickle is far slower than any receiver
/// and the clamp does the work.
fn pace(
    plane: &KernelPlane,
    pair: &mut [SplicedSocket; 2],
    source: usize,
    limits: &CarryLimits,
    now: Instant,
) -> io::Result<Option<u64>> {
    let limit = u64::from(limits.splice_max_queued);
    let [client, device] = pair.each_mut();
    let (src, dst) = if source == 0 {
        (client, device)
    } else {
        (device, client)
    };
    let (redirected, _) = plane.link_bytes(src.cookie);
    if !src.paced && redirected <= src.credit.pace_limit {
        return Ok(None);
    }
    let queued = queued_in_proxy(dst, redirected)?;
    let pace_at = pace_mark(limit);
    if queued > pace_at {
        if !src.paced && !src.clamp_failed {
            src.window_clamp = sockopt::window_clamp(&src.stream)?;
            sockopt::set_window_clamp(&src.stream, PACED_WINDOW)?;
            src.paced = true;
            // The window already granted arrives within about a round trip (this socket mostly
            // receives: its receive-side estimate is the fresher one).
            let info = sockopt::tcp_info(&src.stream)?;
            let rtt = Duration::from_micros(u64::from(info.tcpi_rtt.max(info.tcpi_rcv_rtt)));
            src.clamped = Clamp {
                settles_at: now + CLAMP_SETTLE.max(rtt * 2),
                low: 0,
                ceiling: clamp_ceiling(queued, u64::from(info.tcpi_rcv_wnd), limit),
            };
        } else if src.paced && clamp_failing(src.clamped, now, queued, limit) {
            // The trickle outruns the receiver (a round trip of microseconds). Clamping on only
            // floods the machine with tiny segments; let the hold at the hard limit stop the
            // sender (a shut window), with a small receive buffer so that the hold keeps few
            // bytes to copy.
            sockopt::set_window_clamp(&src.stream, unclamped_window(src)?)?;
            sockopt::set_rcvbuf(&src.stream, PACED_RCVBUF)?;
            debug!(
                queued,
                low = src.clamped.low,
                ceiling = src.clamped.ceiling,
                "the window clamp does not slow this sender; its queue limit stops it instead"
            );
            src.paced = false;
            src.clamp_failed = true;
        } else if src.paced && now >= src.clamped.settles_at {
            // The lowest the queue got since the clamp settled.
            src.clamped.low = match src.clamped.low {
                0 => queued,
                low => low.min(queued),
            };
        }
        return Ok(Some(queued - pace_at));
    }
    if src.paced {
        sockopt::set_window_clamp(&src.stream, unclamped_window(src)?)?;
        src.paced = false;
    }
    if src.clamp_failed {
        sockopt::set_rcvbuf(&src.stream, hold_rcvbuf(limits.splice_max_queued))?;
        src.clamp_failed = false;
    }
    // The receiver keeps up (or caught up): move both marks on from what is queued now. The
    // limit is a bound on what is queued, not a budget of bytes: without this a direction
    // whose receiver keeps up would still stop at every `limit` bytes. The next notice comes at
    // least half a mark later: a queue hovering just under the mark (a receiver a little slower
    // than the sender) otherwise woke the proxy every few hundred KB, five times as often, and
    // the overshoot this allows is well inside the margin above the mark.
    let credit = SpliceCredit {
        redirect_limit: redirected + limit.saturating_sub(queued),
        pace_limit: redirected + pace_at.saturating_sub(queued).max(pace_at / 2),
        pace_gen: src.credit.pace_gen + 1,
        ..src.credit
    };
    grant(plane, src, credit)?;
    Ok(None)
}

/// Writes `src`'s `SPLICE_CREDITS` entry, which the verdict program reads for each skb.
fn grant(plane: &KernelPlane, src: &mut SplicedSocket, credit: SpliceCredit) -> io::Result<()> {
    plane
        .set_credit(src.cookie, credit)
        .map_err(|err| io::Error::other(format!("updating the splice credit: {err}")))?;
    src.credit = credit;
    src.credit_written = true;
    Ok(())
}

/// The window clamp a paced socket gets back: the one it had when pacing began, or its receive
/// buffer if that is larger. The kernel sets the clamp from the receive buffer only once it has
/// seen a few segments (64 KB at accept, ~7.5 MB a moment later with the 4 MiB buffer), and
/// afterwards only when the segments' size-to-memory ratio changes, which a steady bulk stream's
/// does not: a socket paced in its first moments and given back that early value kept a 64 KB
/// window for the rest of the connection, which cut a bulk stream here from 13 to 9 Gbit/s.
/// The receive buffer is the most the window could use anyway.
fn unclamped_window(src: &SplicedSocket) -> io::Result<i32> {
    Ok(src.window_clamp.max(sockopt::rcvbuf(&src.stream)?))
}

/// Whether every byte put on its way to `target` (redirected by the kernel, written by user
/// space) has entered its send queue, so that bytes written to it now go behind all of them.
fn target_caught_up(target: &SplicedSocket, redirected: u64) -> io::Result<bool> {
    Ok(bytes_entered(target)? == redirected + target.user_written)
}

/// Forwards the bytes the verdict program held on `source` (see step 4) and lets it redirect
/// again.
///
/// A direction that hit its queue limit first waits for the target to drain to half of it and
/// to have send-buffer room for every held byte, so that one round forwards them all and the
/// next stretch runs in the kernel, and for every redirected byte to have entered the target's
/// send queue, so that none is overtaken. Then, per round, the held bytes are copied with
/// `MSG_PEEK` and written to the target, and the verdict program is told (from then on it
/// redirects, behind them) if it held nothing more meanwhile.
///
/// Forwarded bytes are read off the source only once the direction is handed back. Until then
/// they stay charged to its receive buffer, which keeps the sender's window shut, so the held
/// count stops growing and the next round can hand back. Reading them off after each round
/// reopened the window to a sender with more to send: its new bytes were held behind the rest,
/// round after round, and a saturated direction stayed on this copy path (10-40% of a transfer
/// copied, seen with iperf3, most with traffic both ways).
fn forward_held(
    plane: &KernelPlane,
    pair: &mut [SplicedSocket; 2],
    source: usize,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    buf: &mut Vec<u8>,
) -> io::Result<HeldState> {
    let limit = u64::from(limits.splice_max_queued);
    let direction = if source == 0 {
        Direction::ToDevice
    } else {
        Direction::FromDevice
    };
    let [client, device] = pair.each_mut();
    let (src, dst) = if source == 0 {
        (client, device)
    } else {
        (device, client)
    };
    let mut state = HeldState::None;
    for _ in 0..CATCH_UP_ROUNDS {
        let (redirected, held) = plane.link_bytes(src.cookie);
        let pending = held.saturating_sub(src.user_read);
        if pending == 0 {
            if src.credit.forwarded != src.user_read {
                // Everything held is forwarded, but the verdict program was not told (it held
                // more while the last round wrote): tell it now, if it still held nothing more.
                if !hand_back(
                    plane,
                    src,
                    redirected,
                    queued_in_proxy(dst, redirected)?,
                    limit,
                )? {
                    continue;
                }
            }
            if !discard_forwarded(src, buf)? {
                return Ok(HeldState::Pending);
            }
            return Ok(state);
        }
        // While it holds, the verdict program redirects nothing: `redirected` stays current.
        let queued = queued_in_proxy(dst, redirected)?;
        if state == HeldState::None {
            // Room for the held bytes too, so that writing them does not wait on the target
            // (but never wait for room an empty queue cannot give).
            let over_limit = if queued > 0 {
                (queued + pending).saturating_sub(limit / 2)
            } else {
                0
            };
            // And room in the target's send buffer for all of them, so that one round
            // forwards them all.
            let payload_room = u64::try_from(sockopt::sndbuf(&dst.stream)? / 2).unwrap_or(0);
            let over_room = sockopt::unacked_outq(&dst.stream)?
                .saturating_sub(payload_room.saturating_sub(pending));
            let excess = over_limit.max(over_room);
            if excess > 0 {
                return Ok(HeldState::Waiting { excess });
            }
        }
        if !target_caught_up(dst, redirected)? {
            // Redirected bytes still wait in the target's psock queue; written now, the held
            // bytes would overtake them.
            return Ok(HeldState::Pending);
        }
        // The bytes already forwarded are still at the head of the socket: peek past them.
        // Held bytes are charged to the receive buffer, which bounds them; a round takes at
        // most this much (the next round takes the rest).
        let skip = src.to_discard;
        let want = skip + pending.min(MAX_ROUND_BYTES) as usize;
        let peeked = recv_nonblocking(&src.stream, buf, want, libc::MSG_PEEK)?;
        if peeked <= skip {
            // Counted but not readable yet: still on its way into the psock queue.
            return Ok(HeldState::Pending);
        }
        // Never wait on the target here: while this task waited, the other direction could not
        // be served, and a device that echoes would stop reading.
        let written = send_nonblocking(&dst.stream, &buf[skip..peeked])?;
        if written == 0 {
            return Ok(HeldState::Pending);
        }
        dst.user_written += written as u64;
        src.user_read += written as u64;
        src.to_discard += written;
        metrics.add_bytes(direction, written as u64);
        let handed_back = hand_back(plane, src, redirected, queued + written as u64, limit)?;
        debug!(written, queued, handed_back, "forwarded held bytes");
        if handed_back && !discard_forwarded(src, buf)? {
            return Ok(HeldState::Pending);
        }
        if written < peeked - skip {
            // The target is full: the rest waits for the next look.
            return Ok(HeldState::Pending);
        }
        state = HeldState::Forwarded;
    }
    Ok(HeldState::Pending)
}

/// Lets the verdict program redirect `src`'s bytes again, behind the `src.user_read` bytes
/// user space forwarded, with a new queue limit from what is `queued` now; only if it held
/// nothing more than those (a byte held after that must go through user space too, behind
/// them). The held count is read right before the update, to keep that window to two
/// syscalls. Returns whether it was handed back.
fn hand_back(
    plane: &KernelPlane,
    src: &mut SplicedSocket,
    redirected: u64,
    queued: u64,
    limit: u64,
) -> io::Result<bool> {
    if plane.link_bytes(src.cookie).1 != src.user_read {
        return Ok(false);
    }
    let credit = SpliceCredit {
        forwarded: src.user_read,
        redirect_limit: redirected + limit.saturating_sub(queued),
        ..src.credit
    };
    grant(plane, src, credit)?;
    Ok(true)
}

/// The receive buffer fixed on spliced sockets for `--splice-max-queued`: a hold keeps about one
/// window of bytes on the source socket, which user space then copies, so it is kept well under
/// the queue limit (the kernel path moves the rest), yet deep enough for a fast client far away
/// (2 MiB carries about 160 Mbit/s at 100 ms round trip).
fn hold_rcvbuf(max_queued: u32) -> u32 {
    (max_queued / 8).clamp(256 << 10, 4 << 20)
}

/// Receives up to `len` bytes into `buf`, replacing its contents (never blocks: 0 when nothing
/// is there). The bytes land in `buf`'s spare capacity, which is not zeroed first: held bytes
/// are peeked in rounds of megabytes, and zeroing each round's buffer first showed in profiles.
fn recv_nonblocking(
    stream: &StdTcpStream,
    buf: &mut Vec<u8>,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    buf.clear();
    if buf.capacity() < len {
        // A fresh allocation: growing the old one would copy its stale bytes along.
        *buf = Vec::with_capacity(len);
    }
    // SAFETY: valid fd; `buf` has room for `len` bytes past its (zero) length.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_DONTWAIT | flags,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(err);
    }
    let n = n as usize;
    // SAFETY: the kernel wrote `n <= len` bytes at the start of the reserved capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Writes as much of `buf` as the socket takes now.
fn send_nonblocking(stream: &StdTcpStream, mut buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
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
            match err.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
        written += n as usize;
        buf = &buf[n as usize..];
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_clamp_fails_only_once_settled_and_growing_again() {
        let limit = 64 * MIB;
        let settles = Instant::now() + CLAMP_SETTLE;
        let before = settles - Duration::from_millis(1);
        let after = settles + Duration::from_millis(1);
        let clamp = |low, ceiling| Clamp {
            settles_at: settles,
            low,
            ceiling,
        };
        // Still settling: the window granted before the clamp may arrive, however much.
        assert!(!clamp_failing(clamp(0, 0), before, 30 * MIB, limit));
        // Settled, no low point seen yet: nothing to compare with.
        assert!(!clamp_failing(clamp(0, 0), after, 30 * MIB, limit));
        // Settled at 20 MiB: draining, or within a MiB of it, is the clamp working.
        assert!(!clamp_failing(clamp(20 * MIB, 0), after, 18 * MIB, limit));
        assert!(!clamp_failing(clamp(20 * MIB, 0), after, 21 * MIB, limit));
        // Grown again by more than a MiB: the trickle outruns the receiver.
        assert!(clamp_failing(
            clamp(20 * MIB, 0),
            after,
            21 * MIB + 1,
            limit
        ));
        // Half the limit fails it at any time...
        assert!(clamp_failing(clamp(0, 0), before, 32 * MIB + 1, limit));
        // ...unless the window granted before a late clamp explains it: clamped at 30 MiB with
        // 8 MiB granted, the queue may reach 38 MiB.
        let late = clamp_ceiling(30 * MIB, 8 * MIB, limit);
        assert_eq!(late, 38 * MIB);
        assert!(!clamp_failing(clamp(0, late), before, 38 * MIB, limit));
        assert!(clamp_failing(clamp(0, late), before, 38 * MIB + 1, limit));
    }

    #[test]
    fn a_late_clamp_waits_for_the_granted_window_only_with_room_for_another() {
        let limit = 64 * MIB;
        // On time: half the limit.
        assert_eq!(clamp_ceiling(17 * MIB, 8 * MIB, limit), 32 * MIB);
        // Late, with room for another window under 48 MiB: what the window explains.
        assert_eq!(clamp_ceiling(30 * MIB, 8 * MIB, limit), 38 * MIB);
        // Too late for that: half the limit.
        assert_eq!(clamp_ceiling(34 * MIB, 8 * MIB, limit), 32 * MIB);
        // A window large against a small limit (8M): half the limit.
        assert_eq!(clamp_ceiling(3 * MIB, 2 * MIB, 8 * MIB), 4 * MIB);
    }

    #[test]
    fn pace_looks_follow_the_drain_and_slow_down_once_the_clamp_failed() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // No drain rate yet: look soon.
        assert_eq!(next_pace_look(None, now, MIB, false), ms(2));
        assert_eq!(next_pace_look(None, now, MIB, true), ms(10));
        // 4 MiB drained in 2 ms, 6 MiB to go: 3 ms.
        let last = Some((now - ms(2), 10 * MIB));
        assert_eq!(drain_eta(last, now, 6 * MIB), Some(ms(3)));
        assert_eq!(next_pace_look(last, now, 6 * MIB, false), ms(3));
        assert_eq!(next_pace_look(last, now, 6 * MIB, true), ms(10));
        // Growing, not draining: no estimate; bounded either way.
        assert_eq!(drain_eta(Some((now - ms(2), MIB)), now, 2 * MIB), None);
        let slow = Some((now - ms(2), 10 * MIB + 1));
        assert_eq!(next_pace_look(slow, now, 10 * MIB, false), ms(10));
        assert_eq!(next_pace_look(slow, now, 10 * MIB, true), ms(20));
    }

    #[test]
    fn the_paced_receive_buffer_is_below_any_hold_buffer() {
        // A clamp that gave way must leave the hold less to copy than a normal one would.
        for max_queued in [256 << 10, 8 << 20, 64 << 20, 1 << 30] {
            assert!(PACED_RCVBUF < hold_rcvbuf(max_queued), "{max_queued}");
        }
    }
}
