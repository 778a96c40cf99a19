//! Reaching the device, and the reasons a client is turned away or its device cannot be reached.

use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;
use tracing::debug;

use crate::config::DeviceAddr;

/// Why a client was turned away or its device could not be reached; also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    SourceNotAllowed,
    TooManyConnections,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    DeviceError,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::SourceNotAllowed => "rejected_acl",
            Self::TooManyConnections => "rejected_limit",
            Self::DeviceRefused => "device_refused",
            Self::DeviceTimeout => "device_timeout",
            Self::DeviceUnreachable => "device_unreachable",
            Self::DeviceError => "device_error",
        }
    }

    fn from_connect_error(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::DeviceRefused,
            io::ErrorKind::TimedOut => Self::DeviceTimeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Self::DeviceUnreachable
            }
            _ => Self::DeviceError,
        }
    }
}

/// Logs each cause of failure once (then counts it silently) until things work again, so a
/// device that is down does not flood the log with one line per client.
#[derive(Default)]
pub struct LogOnce {
    seen: Mutex<HashSet<Refusal>>,
}

impl LogOnce {
    pub fn first(&self, refusal: Refusal) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(refusal)
    }

    pub fn recovered(&self, refusal: Refusal) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&refusal);
    }
}

pub async fn connect(
    device: &DeviceAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, (Refusal, String)> {
    let deadline = Instant::now() + connect_timeout;
    let attempt = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((device.host.as_str(), device.port))
            .await
            .map_err(|err| {
                (
                    Refusal::DeviceUnreachable,
                    format!("cannot resolve {}: {err}", device.host),
                )
            })?
            .collect();
        let mut last = (
            Refusal::DeviceUnreachable,
            format!("{} resolved to no address", device.host),
        );
        // Each address but the last gets an equal share of the time left, so one that
        // swallows SYNs (a stale DNS record) cannot use up --connect-timeout before the next
        // is tried; the last one has what remains (the outer timeout).
        let count = addrs.len() as u32;
        for (index, addr) in (1u32..).zip(addrs) {
            let share = deadline.saturating_duration_since(Instant::now()) / (count - index + 1);
            let connect = TcpStream::connect(addr);
            let result = if index < count {
                match tokio::time::timeout(share, connect).await {
                    Ok(result) => result,
                    Err(_) => {
                        debug!(%addr, "no answer from this device address; trying the next");
                        continue;
                    }
                }
            } else {
                connect.await
            };
            match result {
                Ok(stream) => return Ok(stream),
                Err(err) => last = (Refusal::from_connect_error(&err), format!("{addr}: {err}")),
            }
        }
        Err(last)
    };
    tokio::time::timeout(connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err((
                Refusal::DeviceTimeout,
                format!(
                    "no answer from {device} within --connect-timeout {}",
                    humantime::format_duration(connect_timeout)
                ),
            ))
        })
}
