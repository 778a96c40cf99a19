//! Whether a socket may leave the splice mid-connection on this kernel: checked once at load,
//! on a loopback connection of the proxy's own.
//!
//! Before the sockmap fix "bpf, sockmap: Fix incorrect copied_seq calculation" (Nov 2025,
//! backported to stable kernels since), TCP's read position was wrong on a socket that had had
//! bytes passed to its psock queue, so after it left the map, reads stalled or failed. Which
//! kernels carry the fix cannot be told from a version number (distributions backport), so the
//! proxy does what the fix is about: passes bytes to a socket's psock queue, reads them, takes
//! the socket out of the map, and reads more. Then it checks that bytes held on a socket with
//! its FIN, and not read yet, survive its leaving when it waits in the parking hash meanwhile.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    time::Duration,
};

use super::KernelPlane;
use crate::sockopt;

/// How long each read of the check may wait: loopback answers in microseconds, a kernel with the
/// stall never does.
const READ_WAIT: Duration = Duration::from_millis(500);

/// Passes bytes through a socket in the splice hash, takes it out, and reads on; `Err` says what
/// failed.
pub(super) fn sockets_can_leave(plane: &KernelPlane) -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|err| format!("no loopback to check on: {err}"))?;
    let (mut sender, mut receiver, cookie) = connected_pair(&listener)?;
    // No link entry: the verdict program passes this socket's bytes to its own psock queue, as
    // it does for a connection user space carries.
    plane
        .insert_socket(cookie, &receiver)
        .map_err(|err| format!("entering the splice hash: {err}"))?;
    let checked = exchange(&mut sender, &mut receiver, b"through the psock queue")
        .map_err(|err| format!("reading in the splice: {err}"))
        .and_then(|()| {
            plane
                .remove_socket(cookie)
                .map_err(|err| format!("leaving the splice hash: {err}"))
        })
        .and_then(|()| {
            exchange(&mut sender, &mut receiver, b"after leaving the map")
                .map_err(|err| format!("reading after leaving the splice: {err}"))
        });
    // In case the check stopped half way (closing the socket takes it out of the hash anyway).
    let _ = plane.remove_socket(cookie);
    checked?;
    held_bytes_survive_leaving(plane, &listener)?;
    held_bytes_read_back_in_the_splice(plane, &listener)
}

/// The third part: a socket that left the splice hash while parked, with bytes held and no FIN,
/// enters it again, its held bytes are read there, and it reads on after leaving both hashes
/// with TCP's read position right (the kernel counts a psock's bytes as read only while the
/// socket is in a hash with the program).
fn held_bytes_read_back_in_the_splice(
    plane: &KernelPlane,
    listener: &TcpListener,
) -> Result<(), String> {
    let (mut sender, mut receiver, cookie) = connected_pair(listener)?;
    let held: &[u8] = b"held as the socket leaves, read back in";
    let checked = plane
        .insert_socket(cookie, &receiver)
        .map_err(|err| format!("entering the splice hash: {err}"))
        .and_then(|()| {
            plane
                .park(cookie, &receiver)
                .map_err(|err| format!("entering the parking hash: {err}"))
        })
        .and_then(|()| sender.write_all(held).map_err(|err| err.to_string()))
        .and_then(|()| wait_held(&receiver, held.len()))
        .and_then(|()| {
            plane
                .remove_socket(cookie)
                .map_err(|err| format!("leaving the splice hash: {err}"))
        })
        .and_then(|()| {
            plane
                .insert_socket(cookie, &receiver)
                .map_err(|err| format!("entering the splice hash again while parked: {err}"))
        })
        .and_then(|()| {
            plane
                .unpark(cookie)
                .map_err(|err| format!("leaving the parking hash: {err}"))
        })
        .and_then(|()| {
            read_expected(&mut receiver, held)
                .map_err(|err| format!("reading held bytes back in the splice: {err}"))?;
            plane
                .remove_socket(cookie)
                .map_err(|err| format!("leaving the splice hash again: {err}"))
        })
        .and_then(|()| {
            exchange(&mut sender, &mut receiver, b"after leaving for good")
                .map_err(|err| format!("reading after leaving for good: {err}"))
        });
    let _ = plane.remove_socket(cookie);
    let _ = plane.unpark(cookie);
    checked
}

/// The second half of the check: bytes the verdict program held on a socket, with its FIN, in
/// the instant it left the splice hash are still there to read when it waited in the parking
/// hash meanwhile (without it, leaving drops the psock and its queue). A connection leaving the
/// splice as its peer sends its last bytes relies on this.
fn held_bytes_survive_leaving(plane: &KernelPlane, listener: &TcpListener) -> Result<(), String> {
    let (mut sender, mut receiver, cookie) = connected_pair(listener)?;
    let held: &[u8] = b"held as the socket leaves";
    let checked = plane
        .insert_socket(cookie, &receiver)
        .map_err(|err| format!("entering the splice hash: {err}"))
        .and_then(|()| {
            plane
                .park(cookie, &receiver)
                .map_err(|err| format!("entering the parking hash: {err}"))
        })
        .and_then(|()| {
            sender
                .write_all(held)
                .and_then(|()| sender.shutdown(Shutdown::Write))
                .map_err(|err| err.to_string())
        })
        .and_then(|()| wait_held(&receiver, held.len()))
        .and_then(|()| {
            plane
                .remove_socket(cookie)
                .map_err(|err| format!("leaving the splice hash: {err}"))
        })
        .and_then(|()| {
            read_expected(&mut receiver, held).map_err(|err| {
                format!("reading held bytes after leaving the splice hash: {err}")
            })?;
            plane
                .unpark(cookie)
                .map_err(|err| format!("leaving the parking hash: {err}"))?;
            match receiver.read(&mut [0u8; 1]) {
                Ok(0) => Ok(()),
                Ok(n) => Err(format!(
                    "{n} bytes after the held ones, where the stream ended"
                )),
                Err(err) => Err(format!(
                    "reading the end of the stream after leaving: {err}"
                )),
            }
        });
    let _ = plane.remove_socket(cookie);
    let _ = plane.unpark(cookie);
    checked
}

/// Waits until `len` bytes wait to be read on `receiver` (peeked, not taken).
fn wait_held(receiver: &TcpStream, len: usize) -> Result<(), String> {
    let mut buf = vec![0u8; len];
    let deadline = std::time::Instant::now() + READ_WAIT;
    loop {
        let peeked = receiver
            .peek(&mut buf)
            .map_err(|err| format!("waiting for held bytes: {err}"))?;
        if peeked == len {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{peeked} of {len} bytes held after {READ_WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `bytes` on `sender` and reads them back whole on `receiver`.
fn exchange(sender: &mut TcpStream, receiver: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    sender.write_all(bytes).map_err(|err| err.to_string())?;
    read_expected(receiver, bytes)
}

/// Reads `expected.len()` bytes on `receiver` and compares them with `expected`.
fn read_expected(receiver: &mut TcpStream, expected: &[u8]) -> Result<(), String> {
    let mut got = vec![0u8; expected.len()];
    receiver
        .read_exact(&mut got)
        .map_err(|err| err.to_string())?;
    if got != expected {
        return Err(format!("read {got:?}, expected {expected:?}"));
    }
    Ok(())
}

/// A loopback connection of the check's own on `listener`: the sending end, the receiving end
/// (reads give up after [`READ_WAIT`]) and the receiving socket's cookie.
fn connected_pair(listener: &TcpListener) -> Result<(TcpStream, TcpStream, u64), String> {
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let sender = TcpStream::connect(addr).map_err(|err| format!("connecting: {err}"))?;
    let (receiver, _) = listener
        .accept()
        .map_err(|err| format!("accepting: {err}"))?;
    receiver
        .set_read_timeout(Some(READ_WAIT))
        .map_err(|err| err.to_string())?;
    let cookie = sockopt::cookie(&receiver).map_err(|err| err.to_string())?;
    Ok((sender, receiver, cookie))
}
