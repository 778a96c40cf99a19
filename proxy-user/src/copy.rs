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
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Outcome {
    carry_with(client, device, limits, metrics, cancel, Buffers::Fix).await
}

/// [`carry`] for a connection that left the kernel splice mid-stream: its sockets keep the
/// splice's buffers (see [`Buffers::Keep`]).
pub async fn carry_from_splice(
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
) -> Outcome {
    carry_with(client, device, limits, metrics, cancel, Buffers::Keep).await
}

async fn carry_with(
    client: TcpStream,
    device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
    buffers: Buffers,
) -> Outcome {
    let never = CancellationToken::new();
    let progress = CopyProgress::default();
    let copied = carry_until(
        client, device, limits, metrics, cancel, &never, &progress, buffers,
    );
    match copied.await {
        Copied::Ended(outcome) => outcome,
        Copied::Stopped { .. } => unreachable!("nothing asks it to stop"),
    }
}

/// The socket buffers a copy runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffers {
    /// `--copy-socket-buffer`, fixed (no autotuning): a client that stops reading makes the
    /// proxy hold at most these, which is what the memory budget counts.
    Fix,
    /// A connection that left the splice keeps the splice's receive buffers, which its memory
    /// budget counts: shrinking a receive buffer under a window already advertised makes the
    /// kernel prune the queue and the sender back off (one bulk stream copied at 70-160 MB/s
    /// for the first tenths of a second after leaving). Its send buffers are held to what the
    /// budget counts for its queues (`--splice-max-queued`), which nothing bounds in the copy.
    Keep,
}

/// Bytes a copy moved so far, each counted once it was written: readable while it runs.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Read from the client and written to the device, and the other way.
    moved: [AtomicU64; 2],
    /// Both ways together, after which the copy stops as if asked to (see [`carry_until`]).
    stop_after: Option<u64>,
}

impl CopyProgress {
    /// Progress of a copy that stops once it moved `bytes` both ways together.
    pub fn stopping_after(bytes: u64) -> Self {
        Self {
            stop_after: Some(bytes),
            ..Self::default()
        }
    }

    /// Whether the copy stopped for having moved its `stop_after` bytes.
    pub fn moved_enough(&self) -> bool {
        self.stop_after.is_some_and(|limit| self.total() >= limit)
    }

    /// Bytes moved both ways together.
    fn total(&self) -> u64 {
        self.moved
            .iter()
            .map(|moved| moved.load(Ordering::Relaxed))
            .sum()
    }
}

/// How a copy that may be stopped ended.
pub enum Copied {
    /// The connection ended.
    Ended(Outcome),
    /// Stopped on request between a write and the next read, so no byte is held in user space
    /// and no FIN was passed on: the sockets, and what was read from each (client, device).
    Stopped {
        client: TcpStream,
        device: TcpStream,
        read: [u64; 2],
    },
}

/// [`carry`], which also stops when `stop` fires (or once it moved what `progress` was made
/// to stop after), if it can hand the connection back whole:
/// each direction finishes the write of what it read and waits; once both wait, it returns the
/// sockets. A direction that ends (its FIN passed on) first makes it go on to the end instead.
#[expect(
    clippy::too_many_arguments,
    reason = "the connection's two sockets and settings, and how the caller stops and watches it"
)]
pub async fn carry_until(
    mut client: TcpStream,
    mut device: TcpStream,
    limits: &CarryLimits,
    metrics: &ConnectionCounters,
    cancel: &CancellationToken,
    stop: &CancellationToken,
    progress: &CopyProgress,
    buffers: Buffers,
) -> Copied {
    let fds = [client.as_raw_fd(), device.as_raw_fd()];
    match buffers {
        Buffers::Fix => {
            for fd in fds {
                let _ = sockopt::fix_buffers(&fd, limits.copy_socket_buffer);
            }
        }
        Buffers::Keep => {
            // The kernel keeps twice what is asked.
            let queue = u64::from(limits.splice_max_queued)
                * devicelink_spec::memory::QUEUE_TRUESIZE_PERCENT
                / 100;
            let sndbuf = (queue / 2).min(u64::from(limits.splice_sndbuf));
            for fd in fds {
                let _ = sockopt::force_sndbuf(&fd, u32::try_from(sndbuf).unwrap_or(u32::MAX));
            }
        }
    }
    let outcome = {
        let activity = AtomicU64::new(0);
        let pause = Pause::default();
        // Borrowed halves: unlike owned ones, dropping them does not shut the write side, so a
        // reset is passed on as a reset and not as a FIN followed by one.
        let (client_read, client_write) = client.split();
        let (device_read, device_write) = device.split();
        let copy = |direction| Pump {
            direction,
            activity: &activity,
            progress,
            metrics,
            stop,
            pause: &pause,
        };
        let to_device = copy(Direction::ToDevice).run(client_read, device_write);
        let from_device = copy(Direction::FromDevice).run(device_read, client_write);
        tokio::pin!(to_device, from_device);

        let mut to_device_done = false;
        let mut from_device_done = false;
        let idle_check = limits
            .idle_timeout
            .map(|idle| (idle / 8).clamp(Duration::from_millis(20), Duration::from_secs(5)));
        let mut last_bytes = 0;
        let mut last_activity = Instant::now();
        let mut stop_asked: Option<Instant> = None;
        loop {
            let tick = async {
                match idle_check {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            let stop_given_up = async {
                match stop_asked {
                    Some(at) => tokio::time::sleep_until(at + STOP_WAIT).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut to_device, if !to_device_done => match result {
                    Ok(()) => to_device_done = true,
                    Err((side, err)) => break Some(Outcome::Reset { side, error: err.to_string() }),
                },
                result = &mut from_device, if !from_device_done => match result {
                    Ok(()) => from_device_done = true,
                    Err((side, err)) => break Some(Outcome::Reset { side, error: err.to_string() }),
                },
                () = pause.both_waiting() => break None,
                () = stop.cancelled(), if stop_asked.is_none() => stop_asked = Some(Instant::now()),
                () = stop_given_up, if !pause.go_on.is_cancelled() => {
                    // One direction is stuck writing to a peer that does not read; the other
                    // must not wait for it, which could hold up both peers for good.
                    pause.go_on.cancel();
                }
                () = tick => {
                    let bytes = activity.load(Ordering::Relaxed);
                    let now = Instant::now();
                    if bytes != last_bytes {
                        last_bytes = bytes;
                        last_activity = now;
                    } else if limits.idle_timeout.is_some_and(|idle| now.duration_since(last_activity) >= idle) {
                        break Some(Outcome::IdleTimeout);
                    }
                }
                () = cancel.cancelled() => break Some(Outcome::Cancelled),
            }
            if to_device_done && from_device_done {
                break Some(Outcome::Completed);
            }
            if to_device_done || from_device_done {
                // A FIN was passed on: the connection can no longer be handed back whole.
                pause.go_on.cancel();
            }
        }
    };
    match outcome {
        Some(outcome) => {
            if outcome.aborts() {
                reset_on_close(fds);
            }
            Copied::Ended(outcome)
        }
        None => {
            let read = [0, 1].map(|i| progress.moved[i].load(Ordering::Relaxed));
            Copied::Stopped {
                client,
                device,
                read,
            }
        }
    }
}

/// Copies what `from` has queued now to `to`, without waiting for more: before a socket a
/// `recv` has read from enters the splice, which takes queued skbs whole (`tcp_read_skb`
/// ignores how much of the first one was read), so none may be left half-read. Returns the
/// bytes copied, and whether `from` ended (its FIN was queued too; nothing is passed on).
pub async fn copy_queued(
    from: &TcpStream,
    to: &mut TcpStream,
    direction: Direction,
    metrics: &ConnectionCounters,
) -> io::Result<(u64, bool)> {
    let mut buf = Vec::with_capacity(COPY_BUFFER);
    let mut copied = 0;
    loop {
        buf.clear();
        match sockopt::recv_queued(from, &mut buf)? {
            None => return Ok((copied, false)),
            Some(0) => return Ok((copied, true)),
            Some(n) => {
                to.write_all(&buf).await?;
                copied += n as u64;
                metrics.add_bytes(direction, n as u64);
            }
        }
    }
}

/// How long a stop waits for both directions to finish their writes before the copy goes on.
const STOP_WAIT: Duration = Duration::from_millis(100);

/// The two directions' meeting point when a copy is asked to stop.
#[derive(Default)]
struct Pause {
    /// Directions waiting, everything they read written.
    waiting: AtomicU64,
    changed: tokio::sync::Notify,
    /// Fired when the copy cannot stop after all: the waiting directions go on.
    go_on: CancellationToken,
}

impl Pause {
    async fn both_waiting(&self) {
        loop {
            let changed = self.changed.notified();
            if self.waiting.load(Ordering::Acquire) == 2 && !self.go_on.is_cancelled() {
                return;
            }
            changed.await;
        }
    }
}

/// Both sockets send RST instead of FIN when the halves are dropped.
fn reset_on_close(fds: [RawFd; 2]) {
    for fd in fds {
        let _ = sockopt::set_linger_reset(&fd);
    }
}

/// One direction of a copy.
struct Pump<'a> {
    direction: Direction,
    activity: &'a AtomicU64,
    progress: &'a CopyProgress,
    metrics: &'a ConnectionCounters,
    stop: &'a CancellationToken,
    pause: &'a Pause,
}

impl Pump<'_> {
    /// Copies until EOF, then shuts the target's write side. When `stop` fires it copies what its
    /// source has queued and waits, until the copy returns or goes on. An error names the side
    /// it came from: the one `from` reads ("client" for client to device) or the one `to` writes.
    ///
    /// Why copy what is queued first: the splice takes a socket's queued skbs whole
    /// (`tcp_read_skb` ignores how much of the first one a `recv` already read), so a socket
    /// must go back into it with nothing half-read. A queue read empty holds no half-read skb,
    /// and what arrives after comes unread.
    async fn run(
        self,
        mut from: ReadHalf<'_>,
        mut to: WriteHalf<'_>,
    ) -> Result<(), (&'static str, io::Error)> {
        let (source, target) = match self.direction {
            Direction::ToDevice => ("client", "device"),
            Direction::FromDevice => ("device", "client"),
        };
        // Read into its spare capacity, never zeroed: the pages of a connection that idles
        // stay unwritten, so not resident (a buffer reused from a freed one would be, zeroed
        // whole before its first byte).
        let mut buf = Vec::with_capacity(COPY_BUFFER);
        let mut waited = false;
        loop {
            buf.clear();
            // A read not yet done takes nothing off the socket when dropped.
            let n = tokio::select! {
                biased;
                () = self.stop.cancelled(), if !waited => {
                    waited = true;
                    loop {
                        buf.clear();
                        let n = sockopt::recv_queued(from.as_ref(), &mut buf)
                            .map_err(|e| (source, e))?;
                        match n {
                            None => break,
                            Some(0) => {
                                to.shutdown().await.map_err(|e| (target, e))?;
                                return Ok(());
                            }
                            Some(_) => self.copied(&mut to, &buf).await.map_err(|e| (target, e))?,
                        }
                    }
                    self.pause.waiting.fetch_add(1, Ordering::Release);
                    self.pause.changed.notify_one();
                    self.pause.go_on.cancelled().await;
                    continue;
                }
                n = from.read_buf(&mut buf) => n.map_err(|e| (source, e))?,
            };
            if n == 0 {
                to.shutdown().await.map_err(|e| (target, e))?;
                return Ok(());
            }
            self.copied(&mut to, &buf[..n])
                .await
                .map_err(|e| (target, e))?;
        }
    }

    /// Writes `bytes` read from the source whole, and counts them.
    async fn copied(&self, to: &mut WriteHalf<'_>, bytes: &[u8]) -> io::Result<()> {
        to.write_all(bytes).await?;
        let n = bytes.len() as u64;
        self.activity.fetch_add(n, Ordering::Relaxed);
        self.progress.moved[self.direction as usize].fetch_add(n, Ordering::Relaxed);
        self.metrics.add_bytes(self.direction, n);
        if self.progress.moved_enough() {
            self.stop.cancel();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_made_to_stop_after_some_bytes_counts_both_ways_together() {
        let progress = CopyProgress::stopping_after(1000);
        progress.moved[0].store(600, Ordering::Relaxed);
        assert!(!progress.moved_enough());
        progress.moved[1].store(400, Ordering::Relaxed);
        assert!(progress.moved_enough());
        let unbounded = CopyProgress::default();
        unbounded.moved[0].store(u64::MAX / 2, Ordering::Relaxed);
        assert!(!unbounded.moved_enough(), "no limit, no stop");
    }
}
