//! Socket reads and writes that never wait: the connection's task serves both directions and
//! its wake-ups, so a slow peer must never hold it.

use std::{io, net::TcpStream as StdTcpStream, os::fd::AsRawFd};

/// Receives up to `len` bytes into `buf`, replacing its contents (never blocks: 0 when nothing
/// is there). The bytes land in `buf`'s spare capacity, which is not zeroed first: held bytes
/// are peeked in rounds of megabytes, and zeroing each round's buffer first showed in profiles.
pub(super) fn recv_nonblocking(
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
    // SAFETY: the fd is open while `stream` is borrowed; `buf` was cleared and has capacity for
    // at least `len` bytes, so the kernel writes only into memory `buf` owns.
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
    // SAFETY: recv returned `n <= len`: the kernel initialised the first `n` bytes of the
    // capacity reserved above.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Writes as much of `buf` as the socket takes now.
pub(super) fn send_nonblocking(stream: &StdTcpStream, mut buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while !buf.is_empty() {
        // SAFETY: the fd is open while `stream` is borrowed; the kernel reads at most
        // `buf.len()` bytes from the live slice `buf`.
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

/// Receives into `buf` without waiting: `None` when nothing is there yet, `Some(0)` at the end
/// of the stream.
pub(super) fn recv_into(stream: &StdTcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the fd is open while `stream` is borrowed; the kernel writes at most
        // `buf.len()` bytes into the live slice `buf`.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}
