//! Client connections from a chosen source address: the ACL tests' allowed and disallowed
//! sources, both on the client namespace's one interface.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

/// Connects from a given local address (the ACL tests' allowed and disallowed sources).
pub fn connect_from(
    local: IpAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let domain = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; the new descriptor is owned by the TcpStream below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns and hands over here, once.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (storage, len) = sockaddr(SocketAddr::new(local, 0));
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes and outlives the call; `fd` is
    // open (owned by `stream`).
    if unsafe { libc::bind(fd, (&raw const storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Non-blocking connect bounded by `timeout`.
    stream.set_nonblocking(true)?;
    let (storage, len) = sockaddr(remote);
    // SAFETY: as for bind: a valid sockaddr of `len` bytes, an open descriptor.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd on this stack frame, and the count passed is 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if ready == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers, for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, any sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, any sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
