//! Whether a socket may leave the splice mid-connection on this kernel: checked once at load,
//! on a loopback connection of the proxy's own.
//!
//! Before the sockmap fix "bpf, sockmap: Fix incorrect copied_seq calculation" (Nov 2025,
//! backported to stable kernels since), TCP's read position was wrong on a socket that had had
//! bytes passed to its psock queue, so after it left the map, reads stalled or failed. Which
//! kernels carry the fix cannot be told from a version number (distributions backport), so the
//! proxy does what the fix is about: passes bytes to a socket's psock queue, reads them, takes
//! the socket out of the map, and reads more.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
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
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let mut sender = TcpStream::connect(addr).map_err(|err| format!("connecting: {err}"))?;
    let (mut receiver, _) = listener
        .accept()
        .map_err(|err| format!("accepting: {err}"))?;
    receiver
        .set_read_timeout(Some(READ_WAIT))
        .map_err(|err| err.to_string())?;
    let cookie = sockopt::cookie(&receiver).map_err(|err| err.to_string())?;
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
    checked
}

/// Sends `bytes` on `sender` and reads them back whole on `receiver`.
fn exchange(sender: &mut TcpStream, receiver: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    sender.write_all(bytes).map_err(|err| err.to_string())?;
    let mut got = vec![0u8; bytes.len()];
    receiver
        .read_exact(&mut got)
        .map_err(|err| err.to_string())?;
    if got != bytes {
        return Err(format!("read {got:?}, sent {bytes:?}"));
    }
    Ok(())
}
