//! The connections the proxy carries now, across every link: who, since when, how many bytes
//! each way, and a handle to close one. The link table closes sessions through it when a source
//! leaves a link's ACL; the control socket lists and closes them; each leaves one audit line.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use devicelink_proxy_common::Direction;
use tokio_util::sync::CancellationToken;

use crate::{
    kernel::KernelPlane,
    metrics::{LinkStats, Metrics},
};

/// One client connection, from accept to close.
pub struct Session {
    pub id: u64,
    pub link: Arc<str>,
    pub client: SocketAddr,
    pub since: SystemTime,
    started: Instant,
    /// Bytes the proxy process copied itself, per direction (all of them in the userspace
    /// copy; in the splice only the bytes it held to keep order or to make a sender wait).
    copied: [AtomicU64; Direction::COUNT as usize],
    /// The spliced sockets' cookies once the connection entered the kernel path: its
    /// redirected bytes are read from the kernel's counters while it lasts.
    spliced: OnceLock<SplicedCookies>,
    /// Redirected bytes the kernel reported when the splice ended (its counters are gone then),
    /// summed over each time the connection was in it.
    kernel_final: [AtomicU64; Direction::COUNT as usize],
    splice_ended: AtomicBool,
    /// Which path carries it: "kernel" or "userspace", once chosen. Under `--data-plane auto`
    /// "userspace" while the copy carries its opening, then "kernel" once it entered the splice
    /// (and still "kernel" after a trial moved it to the copy, where
    /// `devicelink_splice_moves_total` counts it).
    path: Mutex<Option<&'static str>>,
    /// Fired to close this connection alone.
    pub cancel: CancellationToken,
    /// Why the proxy closed it, when it did (see [`Session::close`]).
    close_reason: OnceLock<&'static str>,
}

#[derive(Clone, Copy)]
struct SplicedCookies {
    client: u64,
    device: u64,
}

impl Session {
    pub fn duration(&self) -> Duration {
        self.started.elapsed()
    }

    /// Closes the connection (both sides) for `reason`, said in its audit line.
    pub fn close(&self, reason: &'static str) {
        let _ = self.close_reason.set(reason);
        self.cancel.cancel();
    }

    pub fn close_reason(&self) -> Option<&'static str> {
        self.close_reason.get().copied()
    }

    pub fn path(&self) -> Option<&'static str> {
        *self.path.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_path(&self, path: &'static str) {
        *self.path.lock().unwrap_or_else(PoisonError::into_inner) = Some(path);
    }

    /// Bytes carried so far: `[to_device, from_device]`.
    pub fn bytes(&self, plane: Option<&KernelPlane>) -> [u64; 2] {
        let live = self.live_kernel_bytes(plane);
        [Direction::ToDevice, Direction::FromDevice].map(|direction| {
            let i = direction as usize;
            self.copied[i].load(Ordering::Relaxed)
                + self.kernel_final[i].load(Ordering::Relaxed)
                + live[i]
        })
    }

    /// What the kernel has redirected on this connection while its splice lasts (after that,
    /// the final count is kept in the session and in its link's counters).
    pub fn live_kernel_bytes(&self, plane: Option<&KernelPlane>) -> [u64; 2] {
        match (self.spliced.get(), plane) {
            (Some(cookies), Some(plane)) if !self.splice_ended.load(Ordering::Relaxed) => [
                plane.link_bytes(cookies.client).0,
                plane.link_bytes(cookies.device).0,
            ],
            _ => [0, 0],
        }
    }
}

/// What a data plane reports while it carries one connection: the bytes it copied and the
/// integrity errors it met, counted for the process, the link and the session at once.
pub struct ConnectionCounters {
    pub process: Arc<Metrics>,
    pub link: Arc<LinkStats>,
    pub session: Arc<Session>,
}

impl ConnectionCounters {
    pub fn add_bytes(&self, direction: Direction, bytes: u64) {
        self.process.add_bytes(direction, bytes);
        self.link.add_bytes(direction, bytes);
        self.session.copied[direction as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn count_integrity_error(&self) {
        self.process.count_integrity_error();
    }

    /// The spliced connection moved between the kernel and user space (see
    /// [`Metrics::count_splice_move`]).
    pub fn count_splice_move(&self, to: &str, reason: &str) {
        self.process.count_splice_move(to, reason);
    }

    /// A trial on the spliced connection ended (see [`Metrics::count_splice_trial`]).
    pub fn count_splice_trial(&self, user_space_faster: bool) {
        self.process.count_splice_trial(user_space_faster);
    }

    /// The connection entered the kernel path with these sockets.
    pub fn spliced(&self, client_cookie: u64, device_cookie: u64) {
        let _ = self.session.spliced.set(SplicedCookies {
            client: client_cookie,
            device: device_cookie,
        });
        // Again after a spell in the copy: the kernel counts afresh from here.
        self.session.splice_ended.store(false, Ordering::Relaxed);
    }

    /// The splice ended (for now, or for good); `redirected` is what the kernel moved each way
    /// (`[to_device, from_device]`) since it started, read before its counters were removed.
    pub fn splice_ended(&self, redirected: [u64; 2]) {
        for (direction, bytes) in [Direction::ToDevice, Direction::FromDevice]
            .into_iter()
            .zip(redirected)
        {
            self.link.add_kernel_bytes(direction, bytes);
            self.session.kernel_final[direction as usize].fetch_add(bytes, Ordering::Relaxed);
        }
        self.session.splice_ended.store(true, Ordering::Relaxed);
    }
}

/// Every open session, by id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<BTreeMap<u64, Arc<Session>>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// Records a new session of `link` from `client`; it stays listed until [`Self::close`].
    pub fn open(
        &self,
        link: Arc<str>,
        client: SocketAddr,
        cancel: CancellationToken,
    ) -> Arc<Session> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(Session {
            id,
            link,
            client,
            since: SystemTime::now(),
            started: Instant::now(),
            copied: Default::default(),
            spliced: OnceLock::new(),
            kernel_final: Default::default(),
            splice_ended: AtomicBool::new(false),
            path: Mutex::new(None),
            cancel,
            close_reason: OnceLock::new(),
        });
        self.lock().insert(id, Arc::clone(&session));
        session
    }

    /// Forgets a session that ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Session>> {
        self.lock().get(&id).cloned()
    }

    /// Open sessions, oldest first; of one link when `link` is given.
    pub fn list(&self, link: Option<&str>) -> Vec<Arc<Session>> {
        self.lock()
            .values()
            .filter(|session| link.is_none_or(|name| &*session.link == name))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Session>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_listed_until_closed_and_filtered_by_link() {
        let sessions = Sessions::default();
        let client: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let a = sessions.open("a".into(), client, CancellationToken::new());
        let b = sessions.open("b".into(), client, CancellationToken::new());
        assert_ne!(a.id, b.id, "every session gets its own id");
        assert_eq!(sessions.list(None).len(), 2);
        assert_eq!(sessions.list(Some("a")).len(), 1);
        sessions.remove(a.id);
        assert!(sessions.get(a.id).is_none(), "a closed session is gone");
        assert_eq!(sessions.list(None).len(), 1);
    }

    #[test]
    fn bytes_add_what_was_copied_and_what_the_kernel_moved() {
        let sessions = Sessions::default();
        let session = sessions.open(
            "a".into(),
            "192.0.2.1:4000".parse().unwrap(),
            CancellationToken::new(),
        );
        let counters = ConnectionCounters {
            process: Arc::new(Metrics::default()),
            link: Arc::new(LinkStats::default()),
            session: Arc::clone(&session),
        };
        counters.add_bytes(Direction::ToDevice, 10);
        counters.splice_ended([100, 200]);
        assert_eq!(session.bytes(None), [110, 200]);
        assert_eq!(counters.link.bytes(), [110, 200]);
        // Back into the splice after a spell in the copy: its counts add up.
        counters.spliced(1, 2);
        counters.add_bytes(Direction::FromDevice, 5);
        counters.splice_ended([1, 2]);
        assert_eq!(session.bytes(None), [111, 207]);
        assert_eq!(counters.link.bytes(), [111, 207]);
    }
}
