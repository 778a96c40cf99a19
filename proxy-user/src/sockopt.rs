//! Thin, checked wrappers over the socket options and ioctls the proxy relies on. Each returns
//! `io::Error` from errno so callers can say which socket and option failed.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of::<T>()` bytes from `value`, a live reference for the
    // whole call; the fd comes from a socket the caller borrows, and a bad one only makes the
    // call fail.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set(fd, level, name, &value)
}

fn get<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes, the size of `value`, which lives for the
    // whole call; the fd comes from a socket the caller borrows, and a bad one only makes the
    // call fail.
    check(unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: `T` is only ever a C integer or a libc struct of integers (this function is
    // private), for which all-zero bytes, and any bytes the kernel wrote over them, are valid.
    Ok(unsafe { value.assume_init() })
}

/// Accept IPv4 clients (as v4-mapped addresses) on an IPv6 socket too, whatever
/// `net.ipv6.bindv6only` says, so `[::]` means every address of the host.
pub fn set_dual_stack(sock: &impl AsRawFd) -> io::Result<()> {
    set_int(sock.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)
}

/// The socket cookie: the key the verdict program sees as `bpf_get_socket_cookie`.
pub fn cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    get::<u64>(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// `SO_RCVBUF` (the kernel doubles it for bookkeeping); fixes the size, ending autotuning.
pub fn set_rcvbuf(sock: &impl AsRawFd, bytes: u32) -> io::Result<()> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    set_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
}

/// The receive buffer's size as the kernel keeps it (twice what `SO_RCVBUF` was given).
pub fn rcvbuf(sock: &impl AsRawFd) -> io::Result<i32> {
    get::<libc::c_int>(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)
}

/// The send buffer's size as the kernel keeps it (twice what `SO_SNDBUF` was given; about half
/// of it holds payload, the rest is the kernel's per-skb overhead).
pub fn sndbuf(sock: &impl AsRawFd) -> io::Result<i32> {
    get::<libc::c_int>(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)
}

/// `TCP_WINDOW_CLAMP`: the largest receive window the socket advertises from now on.
pub fn window_clamp(sock: &impl AsRawFd) -> io::Result<i32> {
    get::<libc::c_int>(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP)
}

pub fn set_window_clamp(sock: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    set_int(
        sock.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_WINDOW_CLAMP,
        bytes,
    )
}

/// Minimum bytes queued before TCP wakes a reader. Also decides when TCP calls `data_ready`,
/// which is what runs the verdict program on a spliced socket.
pub fn set_rcvlowat(sock: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    set_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// Fixes the receive and the send buffer at `bytes` each (the kernel keeps twice that), beyond
/// `net.core.rmem_max`/`wmem_max` when the process may (CAP_NET_ADMIN), else up to them.
pub fn fix_buffers(sock: &impl AsRawFd, bytes: u32) -> io::Result<()> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    let fd = sock.as_raw_fd();
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int(fd, libc::SOL_SOCKET, forced, bytes).is_err() {
            set_int(fd, libc::SOL_SOCKET, plain, bytes)?;
        }
    }
    Ok(())
}

/// Send buffer size beyond `net.core.wmem_max` (needs CAP_NET_ADMIN).
pub fn force_sndbuf(sock: &impl AsRawFd, bytes: u32) -> io::Result<()> {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    set_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        bytes,
    )
}

pub fn tcp_info(sock: &impl AsRawFd) -> io::Result<libc::tcp_info> {
    get::<libc::tcp_info>(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO)
}

/// The pending socket error (`SO_ERROR`), cleared by reading it.
pub fn take_error(sock: &impl AsRawFd) -> io::Result<Option<io::Error>> {
    let errno = get::<libc::c_int>(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((errno != 0).then(|| io::Error::from_raw_os_error(errno)))
}

/// Bytes in the send queue not yet acknowledged by the peer (sent or not).
pub fn unacked_outq(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one c_int through the pointer, which points
    // at the live `value`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut value) })?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Every byte ever put into this socket's send queue: acknowledged plus still queued.
///
/// Two reads: an ACK arriving between them moves bytes from one count to the other, and the
/// sum would come out an ACK short. So the acknowledged count is read again, and the sum taken
/// only when it did not move (a few tries; a socket ACKed that often is read as it was last).
pub fn bytes_queued_total(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut acked = tcp_info(sock)?.tcpi_bytes_acked;
    for _ in 0..8 {
        let queued = unacked_outq(sock)?;
        let acked_after = tcp_info(sock)?.tcpi_bytes_acked;
        if acked_after == acked {
            return Ok(acked + queued);
        }
        acked = acked_after;
    }
    Ok(acked + unacked_outq(sock)?)
}

/// Makes the next `close` send a RST instead of a FIN: how a reset is passed on to the peer.
pub fn set_linger_reset(sock: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// Sets the socket's mark (`SO_MARK`, needs CAP_NET_ADMIN): policy routing rules match it, and a
/// change makes the kernel route the socket again at its next segment.
pub fn set_mark(sock: &impl AsRawFd, mark: u32) -> io::Result<()> {
    set(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, &mark)
}

/// Receives what is queued, without waiting: `None` when nothing is (`Some(0)` is EOF). A
/// plain `recv`, so it sees what the socket holds whatever its async runtime last saw. Appends
/// to `buf`, into its spare capacity (reserved here if it has none): no byte of the buffer is
/// written before the kernel fills it.
pub fn recv_queued(sock: &impl AsRawFd, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    // With no room the kernel would return 0, which reads as the end of the stream.
    buf.reserve(1);
    let spare = buf.spare_capacity_mut();
    // SAFETY: the fd is open while `sock` is borrowed; the kernel writes at most `spare.len()`
    // bytes at the start of `spare`, which is that long and owned by `buf`.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(Some(n))
}

/// Makes a blocking receive give up (`EAGAIN`) after `timeout`.
pub fn set_receive_timeout(sock: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let timeval = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    set(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeval,
    )
}

/// Whether the peer's FIN has been received (the read side is shut), and whether the socket has
/// an error or is fully hung up, without blocking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollState {
    pub read_closed: bool,
    pub error: bool,
    pub hung_up: bool,
}

pub fn poll_state(sock: &impl AsRawFd) -> io::Result<PollState> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: the pointer is to one live pollfd and nfds is 1, so the kernel touches only
    // `pfd`; the zero timeout never blocks.
    check(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    Ok(PollState {
        read_closed: pfd.revents & libc::POLLRDHUP != 0,
        error: pfd.revents & libc::POLLERR != 0,
        hung_up: pfd.revents & libc::POLLHUP != 0,
    })
}

/// Keepalive so that a vanished peer (device rebooted, NAT state lost) is noticed eventually
/// even on a connection that carries nothing.
pub fn set_keepalive(sock: &impl AsRawFd, idle: Duration) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    // Probe interval and count stay the system's: two syscalls per socket, not four, matter at
    // thousands of connections per second.
    let secs = i32::try_from(idle.as_secs().max(1)).unwrap_or(i32::MAX);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)
}

pub fn shutdown_write(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers; the fd comes from a socket the caller borrows, and a
    // bad one only makes the call fail.
    check(unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}
