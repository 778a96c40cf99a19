//! Listening sockets: the links' client listeners and the metrics listener.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tracing::warn;

use crate::sockopt;

/// Binds a link's client listener (`what` names the link in errors): reuse the address so a
/// restart does not wait out TIME_WAIT, and a deep backlog so a burst of clients is not dropped
/// before accept.
pub fn bind_clients(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    bind_listener(what, addr, 4096)
}

/// Binds a listening socket for `flag`. `[::]` takes both families (a dual-stack pod gets IPv6
/// clients from its Service; IPv4 ones arrive v4-mapped and the ACL judges them as IPv4). On a
/// host with IPv6 switched off in the kernel, `[::]` falls back to `0.0.0.0` and says so,
/// since the user asked for "every address" and that is every address there is.
pub fn bind_listener(flag: &str, addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(v6) => match TcpSocket::new_v6() {
            Err(err)
                if v6.ip().is_unspecified() && err.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                let fallback = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                warn!(
                    %addr, %fallback,
                    "{flag}: IPv6 is disabled on this host; listening on IPv4 only"
                );
                return bind_listener(flag, fallback, backlog);
            }
            other => other,
        },
    }
    .with_context(|| format!("{flag} {addr}: creating the socket"))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sockopt::set_dual_stack(&socket)
            .with_context(|| format!("{flag} {addr}: accepting IPv4 on the IPv6 socket"))?;
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| {
        format!("{flag} {addr}: cannot bind (in use, or not an address of this host?)")
    })?;
    socket
        .listen(backlog)
        .with_context(|| format!("{flag} {addr}: cannot listen"))
}
