//! The bench's own small TCP peers: an echo server on the device, and clients for 64-byte
//! request/response latency, connection setup rate, and idle connections held open.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use devicelink_testbed::{Netns, Topology};

/// The size of one request and of its answer.
pub const MESSAGE: usize = 64;

/// An echo server in the device namespace: one thread per connection (small stacks), so
/// a thousand idle connections cost it nothing but memory. Stops accepting on drop.
pub struct EchoServer {
    listener: Arc<TcpListener>,
}

impl EchoServer {
    pub fn start(topology: &Topology, port: u16) -> anyhow::Result<Self> {
        let addr = Topology::device_addr(port);
        let listener = topology
            .device
            .run(move || TcpListener::bind(addr))
            .with_context(|| format!("echo server binding {addr}"))?;
        let listener = Arc::new(listener);
        let accepting = Arc::clone(&listener);
        // A blocking accept: polling would add its interval to every connection's setup time.
        thread::spawn(move || {
            while let Ok((stream, _)) = accepting.accept() {
                let _ = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || echo(stream));
            }
        });
        Ok(Self { listener })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes the blocked accept with an error.
        // SAFETY: shutdown takes no pointers, and the descriptor is the listener's, open for as
        // long as `self` holds it.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn round_trip(stream: &mut TcpStream, message: &[u8; MESSAGE]) -> std::io::Result<()> {
    let mut answer = [0u8; MESSAGE];
    stream.write_all(message)?;
    stream.read_exact(&mut answer)?;
    if &answer != message {
        return Err(std::io::Error::other("the echo came back different"));
    }
    Ok(())
}

/// Round-trip times of `count` 64-byte messages on one connection, after a warm-up, sorted.
pub fn latencies(client: &Netns, target: SocketAddr, count: usize) -> anyhow::Result<Vec<f64>> {
    client.run(move || -> anyhow::Result<Vec<f64>> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut message = [0u8; MESSAGE];
        let mut micros = Vec::with_capacity(count);
        for i in 0..count + count / 10 {
            message[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let start = Instant::now();
            round_trip(&mut stream, &message).context("64-byte round trip")?;
            // The first tenth warms up caches and the proxy's paths.
            if i >= count / 10 {
                micros.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        micros.sort_by(f64::total_cmp);
        Ok(micros)
    })
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at]
}

/// Connections per second that connect, make one 64-byte round trip and close, with
/// `concurrency` clients for `duration`. Returns (rate, failed attempts).
pub fn setup_rate(
    client: &Netns,
    target: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            client.spawn(move || {
                let message = [7u8; MESSAGE];
                while Instant::now() < deadline {
                    match connect_round_trip_close(target, &message) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

fn connect_round_trip_close(target: SocketAddr, message: &[u8; MESSAGE]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    round_trip(&mut stream, message)
}

/// Opens `count` connections that each made one round trip (so the proxy has dialled the
/// device for every one) and keeps them open until the returned value is dropped.
pub fn idle_connections(
    client: &Netns,
    target: SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    client.run(move || -> anyhow::Result<Vec<TcpStream>> {
        let message = [1u8; MESSAGE];
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .with_context(|| format!("idle connection {i}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            round_trip(&mut stream, &message)
                .with_context(|| format!("round trip on idle connection {i}"))?;
            streams.push(stream);
        }
        Ok(streams)
    })
}

/// Sysctls that keep the setup-rate measure from running out of ports: each closed
/// connection leaves a TIME_WAIT socket (on the client, and on the proxy's device side).
pub fn tune_namespaces(topology: &Topology) -> anyhow::Result<()> {
    for ns in [&topology.client, &topology.proxy, &topology.device] {
        devicelink_testbed::sh(ns.command("sysctl").args([
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
            "net.core.somaxconn=8192",
        ]))?;
    }
    Ok(())
}

/// Raises this process's open-file limit (inherited by the peers it starts) as far as allowed:
/// the idle measure holds thousands of sockets on each side.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the `rlimit` structs they are given,
    // which live on this stack frame for the whole call.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let wanted = libc::rlimit {
            rlim_cur: 65536,
            rlim_max: 65536.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_from_sorted_samples() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 51.0);
        assert_eq!(quantile(&samples, 0.99), 99.0);
        assert_eq!(quantile(&samples, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
