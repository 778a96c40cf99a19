//! The userspace data plane: bytes are read and written by the proxy. Used when eBPF is not
//! available, and for single connections that cannot enter the splice. Half-close is passed on
//! (a FIN from one side shuts the other's write side once everything before it is written), and
//! so is a reset.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use devicelink_proxy_common::Direction;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{session::ConnectionCounters, sockopt, splice::CarryPolicy};

/// Copy buffer per direction: large enough that a bulk stream costs few syscalls. Counted in a
/// connection's worst case (`devicelink_spec::memory::copy_worst_case`).
const COPY_BUFFER: usize = devicelink_spec::memory::COPY_BUFFER_BYTES as usize;

/// Per-connection limits shared by both data planes.
#[derive(Clone, Copy, Debug)]
pub struct CarryLimits {
    pub idle_timeout: Option<Duration>,
    pub splice_sndbuf: u32,
    /// `--splice-max-queued`.
    pub splice_max_queued: u32,
    /// `--copy-socket-buffer`: fixed on both sockets of a copied connection.
    pub copy_socket_buffer: u32,
    /// `--splice-carry*`: when a spliced connection is carried in user space for a while.
    pub splice_carry: CarryPolicy,
    /// The mark that routes a spliced device socket to its quick-ACK route
    /// (`--device-quickack`), if the proxy keeps those routes.
    pub spliced_device_mark: Option<u32>,
}

/// How a carried connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions ended with a FIN, every byte delivered.
    Completed,
    /// One side reset (or failed); the reset was passed on to the other.
    Reset { side: &'static str, error: String },
    /// Nothing moved either way for the idle timeout.
    IdleTimeout,
    /// The link expired or the proxy is shutting down.
    Cancelled,
}

impl Outcome {
    pub fn from_io(err: io::Error) -> Self {
        Self::Reset {
            side: "peer",
            error: err.to_string(),
        }
    }

    /// Whether the connection was cut rather than ended by its peers: a reset passed on, or the
    /// proxy closing it (shutdown, expiry, a source leaving the ACL, a close on request), when
    /// bytes in flight may be discarded. Such a connection ends with RST on both sides, so
    /// neither peer takes a truncated stream for a complete one.
    pub fn aborts(&self) -> bool {
        matches!(self, Self::Reset { .. } | Self::Cancelled)
    }

    /// The `result` label of `devicelink_connections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Reset { .. } => "reset",
            Self::IdleTimeout => "idle_timeout",
            Self::Cancelled => "closed_by_proxy",
        }
    }
}

/// Carries one connection in user space until both directions end, one side resets, it idles
/// out, or `cancel` fires.
pub async fn carry(
    mut client: TcpStream,
    mut device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Outcome {
    let fds = [client.as_raw_fd(), device.as_raw_fd()];
    // Fixed buffers (no autotuning): a client that stops reading makes the proxy hold at most
    // these, which is what the memory budget counts.
    for fd in fds {
        let _ = sockopt::fix_buffers(&fd, limits.copy_socket_buffer);
    }
    let activity = AtomicU64::new(0);
    // Borrowed halves: unlike owned ones, dropping them does not shut the write side, so a reset
    // is passed on as a reset and not as a FIN followed by one.
    let (client_read, client_write) = client.split();
    let (device_read, device_write) = device.split();
    let to_device = pump(
        client_read,
        device_write,
        Direction::ToDevice,
        &activity,
        metrics,
    );
    let from_device = pump(
        device_read,
        client_write,
        Direction::FromDevice,
        &activity,
        metrics,
    );
    tokio::pin!(to_device, from_device);

    let mut to_device_done = false;
    let mut from_device_done = false;
    let idle_check = limits
        .idle_timeout
        .map(|idle| (idle / 8).clamp(Duration::from_millis(20), Duration::from_secs(5)));
    let mut last_bytes = 0;
    let mut last_activity = Instant::now();
    let outcome = loop {
        let tick = async {
            match idle_check {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut to_device, if !to_device_done => match result {
                Ok(()) => to_device_done = true,
                Err((side, err)) => break Outcome::Reset { side, error: err.to_string() },
            },
            result = &mut from_device, if !from_device_done => match result {
                Ok(()) => from_device_done = true,
                Err((side, err)) => break Outcome::Reset { side, error: err.to_string() },
            },
            () = tick => {
                let bytes = activity.load(Ordering::Relaxed);
                let now = Instant::now();
                if bytes != last_bytes {
                    last_bytes = bytes;
                    last_activity = now;
                } else if limits.idle_timeout.is_some_and(|idle| now.duration_since(last_activity) >= idle) {
                    break Outcome::IdleTimeout;
                }
            }
            () = cancel.cancelled() => break Outcome::Cancelled,
        }
        if to_device_done && from_device_done {
            break Outcome::Completed;
        }
    };
    if outcome.aborts() {
        reset_on_close(fds);
    }
    outcome
}

/// Both sockets send RST instead of FIN when the halves are dropped.
fn reset_on_close(fds: [RawFd; 2]) {
    for fd in fds {
        let _ = sockopt::set_linger_reset(&fd);
    }
}

/// Copies one direction until EOF, then shuts the target's write side. An error names the side
/// it came from: the one `from` reads ("client" for client to device) or the one `to` writes.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    direction: Direction,
    activity: &AtomicU64,
    metrics: &ConnectionCounters,
) -> Result<(), (&'static str, io::Error)> {
    let (source, target) = match direction {
        Direction::ToDevice => ("client", "device"),
        Direction::FromDevice => ("device", "client"),
    };
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| (source, e))?;
        if n == 0 {
            to.shutdown().await.map_err(|e| (target, e))?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await.map_err(|e| (target, e))?;
        activity.fetch_add(n as u64, Ordering::Relaxed);
        metrics.add_bytes(direction, n as u64);
    }
}
