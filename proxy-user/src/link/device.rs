//! Reaching the device, and the reasons a client is turned away or its device cannot be reached.

use std::{
    collections::HashMap,
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
    /// The source already holds its share of the link's connections.
    SourceLimit,
    /// The source opens connections faster than its rate.
    SourceRate,
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
            Self::SourceLimit => "rejected_source_limit",
            Self::SourceRate => "rejected_source_rate",
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

/// A refusal's log lines are at most one per cause every this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate-limits the log lines of each cause of failure: the first is logged at once, later ones
/// at most once per [`LOG_EVERY`] with how many were left out in between (all are counted in
/// the metrics). A device that is down, or a scanner knocking on the port, cannot flood the
/// log, and a refusal is never silenced for good.
pub struct RefusalLog<K = Refusal> {
    causes: Mutex<HashMap<K, Cause>>,
}

impl<K> Default for RefusalLog<K> {
    fn default() -> Self {
        Self {
            causes: Mutex::new(HashMap::new()),
        }
    }
}

struct Cause {
    logged_at: Instant,
    suppressed: u64,
}

impl<K: Copy + Eq + std::hash::Hash> RefusalLog<K> {
    /// `Some(n)` when this occurrence is to be logged, `n` being how many were not since the
    /// last line; `None` when it is only counted.
    pub fn admit(&self, refusal: K) -> Option<u64> {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match causes.get_mut(&refusal) {
            Some(cause) if now.duration_since(cause.logged_at) < LOG_EVERY => {
                cause.suppressed += 1;
                None
            }
            Some(cause) => {
                let suppressed = cause.suppressed;
                cause.logged_at = now;
                cause.suppressed = 0;
                Some(suppressed)
            }
            None => {
                causes.insert(
                    refusal,
                    Cause {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// The cause went away (the device answers again): its next occurrence is logged at once.
    pub fn recovered(&self, refusal: K) {
        self.causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&refusal);
    }
}

/// " (N more since the last line)" when some were left out.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more since the last line for this cause)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_and_the_next_ones_counted() {
        let log = RefusalLog::default();
        assert_eq!(log.admit(Refusal::SourceNotAllowed), Some(0));
        assert_eq!(log.admit(Refusal::SourceNotAllowed), None);
        assert_eq!(log.admit(Refusal::SourceNotAllowed), None);
        assert_eq!(
            log.admit(Refusal::DeviceRefused),
            Some(0),
            "each cause has its own budget"
        );
        log.recovered(Refusal::SourceNotAllowed);
        assert_eq!(
            log.admit(Refusal::SourceNotAllowed),
            Some(0),
            "a cause that went away is logged at once when it comes back"
        );
    }
}
