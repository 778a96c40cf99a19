//! Small device-side servers for the data-plane tests, run inside the device namespace. Each
//! behaviour stands for a real protocol shape: echo (interactive), sink-then-reply (upload then
//! answer after a half-close), speak-first (SSH, VNC: the server talks before the client).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{
    netns::Netns,
    pattern::{Checksum, Pattern, receive_all, send_pattern},
};

#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// Writes back everything it reads; shuts its write side after the client's FIN.
    Echo,
    /// Reads to EOF, then answers with the checksum of what it read (16 bytes: hash, length,
    /// little endian) followed by [`reply_len`] pattern bytes seeded with that length.
    SinkThenReply,
    /// Sends `banner` pattern bytes (seed 7) first, then behaves like `SinkThenReply`.
    SpeakFirst { banner: usize },
    /// Accepts, then closes with a reset at once.
    Reset,
    /// Accepts and holds the connection open, reading and discarding.
    Hold,
    /// Like `SinkThenReply`, but reads its first `slow_for` bytes no faster than
    /// `bytes_per_sec` (a device on a slow link; `u64::MAX` for all of them), the rest as fast
    /// as it can, with a small receive buffer, counting what it has read in
    /// [`Server::received`].
    SlowSinkThenReply { bytes_per_sec: u64, slow_for: u64 },
    /// A device that streams (a camera, a log tail): if the client says nothing within a
    /// second, writes pattern bytes for as long as the connection lasts; a client that speaks
    /// first gets `SinkThenReply`.
    StreamUnlessSpokenTo,
}

/// How much a `SinkThenReply` server answers to an upload of `len` bytes.
pub fn reply_len(len: u64) -> u64 {
    len / 2 + 3
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
    /// Bytes read so far by `SlowSinkThenReply` connections.
    pub received: Arc<AtomicU64>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a server with `behavior` on `addr` inside `ns`, listening when this returns.
pub fn serve(ns: &Netns, addr: SocketAddr, behavior: Behavior) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let stop = Arc::clone(&stop);
        let accepted = Arc::clone(&accepted);
        let received = Arc::clone(&received);
        ns.spawn(move || {
            let listener = TcpListener::bind(addr)
                .unwrap_or_else(|e| panic!("device server cannot bind {addr}: {e}"));
            // std listens with a backlog of 128; hundreds of clients at once need more, or the
            // device's SYN queue overflows into SYN cookies and some connections get reset.
            // SAFETY: listen() again on a listening socket only resizes its backlog.
            let resized = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
            assert_eq!(resized, 0, "resizing the device server's backlog");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            ready_tx.send(()).expect("ready");
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        stream.set_nonblocking(false).expect("blocking stream");
                        let received = Arc::clone(&received);
                        thread::spawn(move || {
                            let peer = stream.peer_addr();
                            if let Err(err) = handle(stream, behavior, &received) {
                                // A test that fails shows this in its output.
                                eprintln!("device server ({behavior:?}): connection from {peer:?} ended with: {err}");
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("device accept failed: {e}"),
                }
            }
        });
    }
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("device server did not start");
    Server {
        addr,
        stop,
        accepted,
        received,
    }
}

fn handle(mut stream: TcpStream, behavior: Behavior, received: &AtomicU64) -> std::io::Result<()> {
    match behavior {
        Behavior::Echo => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    stream.shutdown(Shutdown::Write)?;
                    return Ok(());
                }
                stream.write_all(&buf[..n])?;
            }
        }
        Behavior::SinkThenReply => sink_then_reply(&mut stream),
        Behavior::SpeakFirst { banner } => {
            send_pattern(&mut stream, 7, banner as u64)?;
            sink_then_reply(&mut stream)
        }
        Behavior::Reset => {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `linger`, which lives on
            // this stack frame; the descriptor is the open stream's.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as u32,
                )
            };
            drop(stream);
            Ok(())
        }
        Behavior::Hold => {
            let _ = receive_all(&mut stream);
            Ok(())
        }
        Behavior::SlowSinkThenReply {
            bytes_per_sec,
            slow_for,
        } => slow_sink_then_reply(&mut stream, bytes_per_sec, slow_for, received),
        Behavior::StreamUnlessSpokenTo => {
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut first = [0u8; 1];
            match stream.peek(&mut first) {
                Ok(_) => {
                    stream.set_read_timeout(None)?;
                    sink_then_reply(&mut stream)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Until the proxy resets it: the end of a stalled client's connection.
                    let _ = send_pattern(&mut stream, 9, u64::MAX);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    }
}

fn slow_sink_then_reply(
    stream: &mut TcpStream,
    bytes_per_sec: u64,
    slow_for: u64,
    received: &AtomicU64,
) -> std::io::Result<()> {
    let small: libc::c_int = 256 << 10;
    // SAFETY: valid fd and option value. A small buffer keeps the device's own kernel from
    // reading ahead for it: what the proxy makes the client wait for is then plain to see.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&*stream),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const small).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    let start = std::time::Instant::now();
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        let total = received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > slow_for {
            continue;
        }
        let due = Duration::from_secs_f64(total as f64 / bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            thread::sleep(ahead);
        }
    }
    reply_with_checksum(stream, sum)
}

fn sink_then_reply(stream: &mut TcpStream) -> std::io::Result<()> {
    let sum = receive_all(stream)?;
    reply_with_checksum(stream, sum)
}

fn reply_with_checksum(stream: &mut TcpStream, sum: Checksum) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&sum.hash.to_le_bytes());
    header[8..].copy_from_slice(&sum.len.to_le_bytes());
    stream.write_all(&header)?;
    send_pattern(stream, sum.len, reply_len(sum.len))?;
    stream.shutdown(Shutdown::Write)?;
    // Wait for the client to close, so our reply is never cut by a reset.
    let _ = receive_all(stream);
    Ok(())
}

/// The client side of a `SinkThenReply` exchange: upload `len` pattern bytes (seed `seed`),
/// half-close, then check the device saw exactly those bytes and that its reply is intact.
/// With `banner`, first read and check a speak-first banner of that length.
pub fn upload_and_check(
    stream: &mut TcpStream,
    seed: u64,
    len: u64,
    banner: Option<usize>,
) -> Result<(), String> {
    upload_and_check_counted(stream, seed, len, banner, &AtomicU64::new(0))
}

/// [`upload_and_check`], adding to `sent` the bytes of the upload the client's socket accepted
/// so far, for a test that watches how far the client got ahead of the device.
pub fn upload_and_check_counted(
    stream: &mut TcpStream,
    seed: u64,
    len: u64,
    banner: Option<usize>,
    sent: &AtomicU64,
) -> Result<(), String> {
    if let Some(banner) = banner {
        let mut got = vec![0u8; banner];
        stream
            .read_exact(&mut got)
            .map_err(|e| format!("reading the {banner}-byte banner: {e}"))?;
        let mut want = vec![0u8; banner];
        Pattern::new(7).fill(&mut want);
        if got != want {
            return Err("banner bytes differ".into());
        }
    }
    let sent = send_pattern(
        &mut Counting {
            inner: &mut *stream,
            count: sent,
        },
        seed,
        len,
    )
    .map_err(|e| format!("upload: {e}"))?;
    check_device_sum(stream, sent, len)
}

/// The end of an upload to a [`Behavior::SinkThenReply`] device: half-closes, and checks the
/// checksum the device saw against `sent` and its reply.
pub fn check_device_sum(stream: &mut TcpStream, sent: Checksum, len: u64) -> Result<(), String> {
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    let mut header = [0u8; 16];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("reading the device's checksum after {len} bytes: {e}"))?;
    let seen = Checksum {
        hash: u64::from_le_bytes(header[..8].try_into().expect("8 bytes")),
        len: u64::from_le_bytes(header[8..].try_into().expect("8 bytes")),
    };
    if seen != sent {
        return Err(format!("device saw {seen:?}, client sent {sent:?}"));
    }
    let reply = receive_all(stream).map_err(|e| format!("reading the reply: {e}"))?;
    let mut expected = Checksum::default();
    let mut pattern = Pattern::new(len);
    let mut buf = vec![0u8; reply_len(len) as usize];
    pattern.fill(&mut buf);
    expected.update(&buf);
    if reply != expected {
        return Err(format!("reply {reply:?}, expected {expected:?}"));
    }
    Ok(())
}

/// A writer that counts what its inner writer accepted.
struct Counting<'a, W> {
    inner: &'a mut W,
    count: &'a AtomicU64,
}

impl<W: std::io::Write> std::io::Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
