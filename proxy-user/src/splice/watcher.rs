//! The wake-ups of spliced connections: one epoll set for the FINs, errors and hang-ups of all
//! spliced sockets, and the verdict program's ring buffer of notices, each waking the task of the
//! connection it concerns.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::Notify};
use tracing::warn;

use super::socket::Sockets;
use crate::kernel::KernelPlane;

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
pub(super) struct Registration<'a> {
    watcher: &'a SpliceWatcher,
    token: u64,
    cookies: [u64; 2],
    /// The sockets' fds, open while the connection's watch (which holds this) lasts.
    fds: [RawFd; 2],
    notify: Arc<Notify>,
}

impl Registration<'_> {
    /// Resolves at the connection's next wake-up (or at once if one came since the last).
    pub(super) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Out of the epoll set now, not only when closed: a connection that comes back into
        // the splice after a spell in the copy registers the same sockets again.
        for fd in self.fds {
            // SAFETY: the watcher's epoll fd is open while `self.watcher` is; `fd` is one of
            // the connection's sockets, open while its watch lasts; DEL reads no event.
            unsafe {
                libc::epoll_ctl(
                    self.watcher.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
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
    /// Creates the epoll set and starts the two tasks that turn its events and the verdict
    /// program's notices into wake-ups. Takes the plane's notice ring buffer: one watcher per
    /// plane.
    pub fn start(plane: &Arc<KernelPlane>) -> io::Result<Arc<Self>> {
        // SAFETY: epoll_create1 takes no pointers; its only effect is a new fd, checked below and
        // owned right after.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is open; nothing else owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, which keeps this one epoll fd open and returns
        // it from `as_raw_fd` until the AsyncFd drops it.
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
        // SAFETY: the AsyncFd owns the ring buffer, which owns its map fd: that fd stays open
        // and is the one `as_raw_fd` returns until the AsyncFd drops it.
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
            // SAFETY: `events` is a live buffer of `events.len()` epoll_event entries, the most
            // the kernel writes; the epoll fd is open while `self` is; a zero timeout never
            // blocks the runtime's thread.
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

    /// Adds a connection's sockets: from now on its FINs, errors and hang-ups, and the verdict
    /// program's notices about them, wake the returned registration.
    pub(super) fn register(&self, sockets: &Sockets) -> io::Result<Registration<'_>> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let cookies = sockets.both().map(|socket| socket.cookie);
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
            fds: sockets.both().map(|socket| socket.stream.as_raw_fd()),
            notify,
        };
        for socket in sockets.both() {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: both fds are open (the watcher's epoll set, and a socket `sockets`
            // borrows); `event` is a live epoll_event the kernel only reads.
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
