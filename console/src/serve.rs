//! Where the console listens, and the rule that keeps plain HTTP on loopback: tokens travel in
//! headers, so off this host they need TLS unless the operator says, by name, that it is insecure.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--listen {addr} is not a loopback address, and without --tls-cert/--tls-key tokens would cross the network in clear; serve TLS, listen on 127.0.0.1, or pass --insecure-plain-http-on-any-address"
)]
pub struct PlainHttpOffLoopback {
    pub addr: SocketAddr,
}

/// Whether plain HTTP may listen on `addr`.
pub fn check_plain_http(addr: SocketAddr, insecure: bool) -> Result<(), PlainHttpOffLoopback> {
    if addr.ip().is_loopback() || insecure {
        Ok(())
    } else {
        Err(PlainHttpOffLoopback { addr })
    }
}

pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

pub async fn serve_tls(
    listener: crate::tls::TlsListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::tls::TlsPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_listens_off_loopback_only_when_told_it_is_insecure() {
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let local: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_plain_http(local, false).is_ok());
        assert!(check_plain_http(any, false).is_err());
        assert!(check_plain_http(any, true).is_ok());
    }
}
