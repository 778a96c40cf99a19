//! The accept loop and one connection's life: source ACL, connection limit, connecting to the
//! device, choosing the path its bytes take, and the link's expiry.

use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, DataPlaneChoice},
    copy::{self, CarryLimits},
    kernel::KernelPlane,
    metrics::{Metrics, Path},
    sockopt,
    splice::{self, SpliceWatcher},
};

/// The path bytes take, chosen once at start.
#[derive(Clone)]
pub enum DataPlane {
    Kernel {
        plane: Arc<KernelPlane>,
        watcher: Arc<SpliceWatcher>,
    },
    Userspace,
}

impl DataPlane {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Kernel { .. } => "ebpf",
            Self::Userspace => "userspace",
        }
    }

    /// Decides the data plane for `config` and logs one line saying which and why.
    pub fn choose(config: &Config) -> anyhow::Result<Self> {
        let load = || -> anyhow::Result<Self> {
            let plane = Arc::new(KernelPlane::load(config)?);
            let watcher = SpliceWatcher::start(&plane).context("creating the splice watcher")?;
            Ok(Self::Kernel { plane, watcher })
        };
        match config.data_plane {
            DataPlaneChoice::Userspace => {
                info!(
                    data_plane = "userspace",
                    "data plane: userspace copy (--data-plane userspace)"
                );
                Ok(Self::Userspace)
            }
            DataPlaneChoice::Ebpf => {
                let plane = load().context(
                    "--data-plane ebpf: the eBPF data plane cannot start; use --data-plane auto to fall back to the userspace copy",
                )?;
                info!(
                    data_plane = "ebpf",
                    "data plane: eBPF splice (--data-plane ebpf)"
                );
                Ok(plane)
            }
            DataPlaneChoice::Auto => match load() {
                Ok(plane) => {
                    info!(
                        data_plane = "ebpf",
                        "data plane: eBPF splice (kernel and privileges allow it)"
                    );
                    Ok(plane)
                }
                Err(err) => {
                    warn!(
                        data_plane = "userspace",
                        "data plane: userspace copy, because the eBPF splice is unavailable: {}",
                        crate::errors::causes(&err)
                    );
                    Ok(Self::Userspace)
                }
            },
        }
    }
}

/// Why a client was turned away or its device could not be reached; also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Refusal {
    SourceNotAllowed,
    TooManyConnections,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
    DeviceError,
}

impl Refusal {
    fn label(self) -> &'static str {
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
struct LogOnce {
    seen: Mutex<HashSet<Refusal>>,
}

impl LogOnce {
    fn first(&self, refusal: Refusal) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(refusal)
    }

    fn recovered(&self, refusal: Refusal) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&refusal);
    }
}

struct Shared {
    config: Config,
    data_plane: DataPlane,
    metrics: Arc<Metrics>,
    log_once: LogOnce,
    limits: CarryLimits,
}

/// Binds the client listener: reuse the address so a restart does not wait out TIME_WAIT, and a
/// deep backlog so a burst of clients is not dropped before accept.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    bind_listener("--listen", addr, 4096)
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

/// Why the accept loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Expired,
    Shutdown,
}

/// Accepts clients until the link expires or `shutdown` fires, then closes every connection.
pub async fn run(
    config: Config,
    listener: TcpListener,
    data_plane: DataPlane,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Stop {
    let limits = CarryLimits {
        idle_timeout: config.idle_timeout,
        splice_sndbuf: config.splice_sndbuf,
        splice_max_queued: config.splice_max_queued,
    };
    let slots = Arc::new(Semaphore::new(config.max_connections as usize));
    let expires_at = config.expires_at;
    let shared = Arc::new(Shared {
        config,
        data_plane,
        metrics: Arc::clone(&metrics),
        log_once: LogOnce::default(),
        limits,
    });
    let connections = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let expiry = async {
        match expires_at {
            Some(at) => {
                let left = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(left).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    metrics.set_ready(true);
    let stop = loop {
        tokio::select! {
            () = &mut expiry => break Stop::Expired,
            () = shutdown.cancelled() => break Stop::Shutdown,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => admit(&shared, &slots, client, peer, &connections, &mut tasks),
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    metrics.set_ready(false);
    drop(listener);
    let open = tasks.len();
    match stop {
        Stop::Expired => info!(
            open,
            "link expired: stopped accepting, closing every connection"
        ),
        Stop::Shutdown => info!(
            open,
            "shutting down: stopped accepting, closing every connection"
        ),
    }
    connections.cancel();
    while tasks.join_next().await.is_some() {}
    stop
}

fn admit(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    client: TcpStream,
    peer: SocketAddr,
    connections: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if !shared.config.acl.allows(peer.ip()) {
        refuse(
            shared,
            client,
            peer,
            Refusal::SourceNotAllowed,
            "source address is not in --allow",
        );
        return;
    }
    let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
        refuse(
            shared,
            client,
            peer,
            Refusal::TooManyConnections,
            &format!(
                "already carrying --max-connections {}",
                shared.config.max_connections
            ),
        );
        return;
    };
    let shared = Arc::clone(shared);
    let cancel = connections.child_token();
    tasks.spawn(async move { serve_client(shared, client, peer, permit, cancel).await });
}

/// Turns a client away at once with a reset, so it does not wait for anything.
fn refuse(shared: &Shared, client: TcpStream, peer: SocketAddr, refusal: Refusal, why: &str) {
    shared.metrics.count_result(refusal.label());
    if shared.log_once.first(refusal) {
        warn!(%peer, "refusing client: {why} (further refusals for this reason are counted, not logged)");
    } else {
        debug!(%peer, "refusing client: {why}");
    }
    let _ = sockopt::set_linger_reset(&client);
    drop(client);
}

async fn serve_client(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let metrics = &shared.metrics;
    metrics.connection_opened();
    let device = tokio::select! {
        device = connect_device(&shared.config) => device,
        () = cancel.cancelled() => Err((Refusal::DeviceError, "the link closed while connecting".into())),
    };
    let device = match device {
        Ok(device) => device,
        Err((refusal, why)) => {
            metrics.count_result(refusal.label());
            if shared.log_once.first(refusal) {
                warn!(%peer, device = %shared.config.device, "cannot reach the device: {why}; closing the client (logged once per cause)");
            } else {
                debug!(%peer, "cannot reach the device: {why}");
            }
            let _ = sockopt::set_linger_reset(&client);
            drop(client);
            metrics.connection_closed();
            return;
        }
    };
    for refusal in [
        Refusal::DeviceRefused,
        Refusal::DeviceTimeout,
        Refusal::DeviceUnreachable,
        Refusal::DeviceError,
    ] {
        shared.log_once.recovered(refusal);
    }
    for stream in [&client, &device] {
        // Interactive sessions (SSH keystrokes, VNC input) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let _ = sockopt::set_keepalive(stream, Duration::from_secs(60));
    }
    debug!(%peer, "connected to the device");
    let limits = &shared.limits;
    let outcome = match &shared.data_plane {
        DataPlane::Kernel { plane, watcher } => {
            match splice::carry(plane, watcher, client, device, limits, metrics, &cancel).await {
                splice::Spliced::Done(outcome) => {
                    metrics.count_path(Path::Kernel);
                    outcome
                }
                splice::Spliced::Fallback {
                    client,
                    device,
                    reason,
                } => {
                    debug!(%peer, "carrying this connection in user space: {reason}");
                    metrics.count_path(Path::Userspace);
                    copy::carry(client, device, limits, metrics, &cancel).await
                }
            }
        }
        DataPlane::Userspace => {
            metrics.count_path(Path::Userspace);
            copy::carry(client, device, limits, metrics, &cancel).await
        }
    };
    debug!(%peer, ?outcome, "connection closed");
    metrics.count_result(outcome.label());
    metrics.connection_closed();
}

async fn connect_device(config: &Config) -> Result<TcpStream, (Refusal, String)> {
    let device = &config.device;
    let deadline = Instant::now() + config.connect_timeout;
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
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err((
                Refusal::DeviceTimeout,
                format!(
                    "no answer from {device} within --connect-timeout {}",
                    humantime::format_duration(config.connect_timeout)
                ),
            ))
        })
}
