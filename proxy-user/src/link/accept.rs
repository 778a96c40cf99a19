//! A running link: its listener's accept loop, the checks each client passes (source ACL,
//! connection limit), and one connection's life from connecting to the device to its audit line.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Carrier, Link, LinkSettings, SharedSettings, close_reason,
    device::{self, Refusal, RefusalLog, suppressed_note},
    fairness::{OverShare, SourceShares},
};
use crate::{
    copy::{self, CarryLimits},
    dataplane::DataPlane,
    events::{Event, EventKind},
    listen,
    metrics::{LinkStats, Path},
    proxy_protocol::{self, Header, HeaderError},
    session::{ConnectionCounters, Session},
    sockopt, splice,
};

/// A link whose listener is open. Dropping it without [`RunningLink::stop`] leaves the accept
/// loop running: the table always stops what it started.
pub struct RunningLink {
    pub name: Arc<str>,
    /// The address the listener is bound to.
    pub listen: SocketAddr,
    settings: SharedSettings,
    pub stats: Arc<LinkStats>,
    stop: CancellationToken,
    listener_closed: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

/// What the accept loop and the connections of one link share.
struct LinkShared {
    name: Arc<str>,
    settings: SharedSettings,
    stats: Arc<LinkStats>,
    carrier: Arc<Carrier>,
    refusals: RefusalLog,
    /// PROXY protocol headers refused, logged per reason like other refusals.
    header_refusals: RefusalLog<HeaderError>,
    /// Connections of a PROXY protocol link still sending their header.
    headers_pending: AtomicU32,
    shares: SourceShares,
}

impl LinkShared {
    fn settings(&self) -> Arc<LinkSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Binds `link`'s listener and starts accepting. Fails (and starts nothing) when the address
/// cannot be bound.
pub fn start(link: &Link, carrier: &Arc<Carrier>) -> anyhow::Result<RunningLink> {
    let listener = listen::bind_clients(&format!("link {}: listen", link.name), link.listen)?;
    let listen = listener.local_addr()?;
    let name: Arc<str> = Arc::from(link.name.as_str());
    let settings: SharedSettings = Arc::new(RwLock::new(Arc::new(link.settings())));
    let stats = carrier.metrics.link(&link.name);
    let shared = Arc::new(LinkShared {
        name: Arc::clone(&name),
        settings: Arc::clone(&settings),
        stats: Arc::clone(&stats),
        carrier: Arc::clone(carrier),
        refusals: RefusalLog::default(),
        header_refusals: RefusalLog::default(),
        headers_pending: AtomicU32::new(0),
        shares: SourceShares::default(),
    });
    let stop = CancellationToken::new();
    let (closed_tx, listener_closed) = oneshot::channel();
    let task = tokio::spawn(accept_loop(shared, listener, stop.clone(), closed_tx));
    Ok(RunningLink {
        name,
        listen,
        settings,
        stats,
        stop,
        listener_closed,
        task,
    })
}

impl RunningLink {
    /// Applies new settings: the next client is judged by them; open sessions are the table's
    /// to close if they are no longer allowed.
    pub fn update(&self, settings: LinkSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    pub fn settings(&self) -> Arc<LinkSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stops accepting and closes every session of the link. Returns once the listener is
    /// closed (its port is free again); the sessions finish closing in the background.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.listener_closed.await;
        drop(self.task);
    }

    /// Like [`RunningLink::stop`], and waits until every session has closed too.
    pub async fn stop_and_wait(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    shared: Arc<LinkShared>,
    listener: TcpListener,
    stop: CancellationToken,
    listener_closed: oneshot::Sender<()>,
) {
    let connections = CancellationToken::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) if shared.settings().proxy_protocol => {
                    relayed(&shared, client, peer, &connections, &mut tasks);
                }
                Ok((client, peer)) => admit(&shared, client, peer, &connections, &mut tasks),
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(link = %shared.name, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = listener_closed.send(());
    for session in shared.carrier.sessions.list(Some(&shared.name)) {
        session.close(close_reason::LINK_STOPPED);
    }
    connections.cancel();
    while tasks.join_next().await.is_some() {}
}

/// A connection from a load balancer on a PROXY protocol link: its header is read in a task of
/// its own (within a deadline, so a slow or silent peer holds nothing but that task), then the
/// client it names is judged as [`admit`] judges a direct one, and carried in the same task.
fn relayed(
    shared: &Arc<LinkShared>,
    mut client: TcpStream,
    balancer: SocketAddr,
    connections: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    // Connections still sending their header count against the link's limit, so a flood of
    // silent connections cannot pile up beyond it.
    let pending = shared.headers_pending.fetch_add(1, Ordering::Relaxed);
    if i64::from(pending) + shared.stats.active() >= i64::from(shared.settings().max_connections) {
        shared.headers_pending.fetch_sub(1, Ordering::Relaxed);
        let _ = sockopt::set_linger_reset(&client);
        refuse(
            shared,
            balancer,
            Refusal::TooManyConnections,
            "already at the link's maximum of connections, counting those still sending their PROXY protocol header",
        );
        return;
    }
    let shared = Arc::clone(shared);
    let connections = connections.clone();
    tasks.spawn(async move {
        let header = tokio::select! {
            header = proxy_protocol::read_header(&mut client) => header,
            () = connections.cancelled() => Err(HeaderError::Closed),
        };
        shared.headers_pending.fetch_sub(1, Ordering::Relaxed);
        match header {
            Ok((Header::Proxied { source, .. }, header_len)) => {
                let source = SocketAddr::new(source.ip().to_canonical(), source.port());
                if let Some((settings, session)) = check_and_open(&shared, source, &connections) {
                    serve_client(shared, settings, client, session, header_len as u64).await;
                } else {
                    let _ = sockopt::set_linger_reset(&client);
                }
            }
            Ok((Header::Local, _)) => {
                // The balancer's health check: the link is up; nothing to carry.
                shared.carrier.metrics.count_proxy_protocol_local();
                debug!(link = %shared.name, %balancer, "PROXY protocol LOCAL connection (a health check): closing it");
            }
            Err(err) => {
                shared.carrier.metrics.count_proxy_protocol_refused(err);
                match shared.header_refusals.admit(err) {
                    Some(suppressed) => warn!(
                        link = %shared.name, peer = %balancer, reason = err.label(),
                        "refusing connection: {err}{}", suppressed_note(suppressed)
                    ),
                    None => debug!(link = %shared.name, peer = %balancer, "refusing connection: {err}"),
                }
                let _ = sockopt::set_linger_reset(&client);
            }
        }
    });
}

fn admit(
    shared: &Arc<LinkShared>,
    client: TcpStream,
    peer: SocketAddr,
    connections: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if let Some((settings, session)) = check_and_open(shared, peer, connections) {
        let shared = Arc::clone(shared);
        tasks.spawn(async move { serve_client(shared, settings, client, session, 0).await });
    } else {
        let _ = sockopt::set_linger_reset(&client);
    }
}

/// Judges a client (`peer`: the connection's peer, or the client a PROXY protocol header names)
/// by the link's ACL and limits; opens its session when it passes. A refused client is
/// counted and logged here; the caller resets its connection.
fn check_and_open(
    shared: &Arc<LinkShared>,
    peer: SocketAddr,
    connections: &CancellationToken,
) -> Option<(Arc<LinkSettings>, Arc<Session>)> {
    let settings = shared.settings();
    if !settings.acl.allows(peer.ip()) {
        refuse(
            shared,
            peer,
            Refusal::SourceNotAllowed,
            "source address is not in the link's allowed ranges",
        );
        return None;
    }
    let carrier_limit = shared.carrier.max_connections;
    if shared.carrier.metrics.active() >= i64::from(carrier_limit) {
        refuse(
            shared,
            peer,
            Refusal::TooManyConnections,
            &format!(
                "already carrying the proxy's maximum of {carrier_limit} connections (what fits its memory budget, or --max-connections)"
            ),
        );
        return None;
    }
    if shared.stats.active() >= i64::from(settings.max_connections) {
        refuse(
            shared,
            peer,
            Refusal::TooManyConnections,
            &format!(
                "already carrying the link's maximum of {} connections",
                settings.max_connections
            ),
        );
        return None;
    }
    if let Err(over) = shared.shares.admit(peer.ip(), settings.per_source) {
        let (refusal, why) = match over {
            OverShare::Open => (
                Refusal::SourceLimit,
                format!(
                    "this source already holds its share of {} of the link's connections",
                    settings.per_source.max_open
                ),
            ),
            OverShare::Rate => (
                Refusal::SourceRate,
                format!(
                    "this source opens connections faster than {} a second",
                    settings.per_source.per_second
                ),
            ),
        };
        refuse(shared, peer, refusal, &why);
        return None;
    }
    let carrier = &shared.carrier;
    shared.stats.connection_opened();
    carrier.metrics.connection_opened();
    let session = carrier
        .sessions
        .open(Arc::clone(&shared.name), peer, connections.child_token());
    carrier
        .events
        .push(Event::new(EventKind::SessionOpened, &shared.name).client(peer));
    Some((settings, session))
}

/// Counts and logs (rate-limited) a client turned away; the caller resets its connection at
/// once, so it does not wait for anything.
fn refuse(shared: &LinkShared, peer: SocketAddr, refusal: Refusal, why: &str) {
    shared.carrier.metrics.count_result(refusal.label());
    shared.stats.count_result(refusal.label());
    match shared.refusals.admit(refusal) {
        Some(suppressed) => warn!(
            link = %shared.name, %peer, reason = refusal.label(),
            "refusing client: {why}{}", suppressed_note(suppressed)
        ),
        None => debug!(link = %shared.name, %peer, "refusing client: {why}"),
    }
}

async fn serve_client(
    shared: Arc<LinkShared>,
    settings: Arc<LinkSettings>,
    client: TcpStream,
    session: Arc<Session>,
    // Bytes read from the client before its payload (a PROXY protocol header).
    read_before: u64,
) {
    let carrier = &shared.carrier;
    let peer = session.client;
    let device = tokio::select! {
        device = device::connect(&settings.device, carrier.connect_timeout) => device,
        () = session.cancel.cancelled() => Err((Refusal::DeviceError, "the link closed while connecting".into())),
    };
    let device = match device {
        Ok(device) => device,
        Err((refusal, why)) => {
            match shared.refusals.admit(refusal) {
                Some(suppressed) => warn!(
                    link = %shared.name, %peer, device = %settings.device, reason = refusal.label(),
                    "cannot reach the device: {why}; closing the client{}", suppressed_note(suppressed)
                ),
                None => debug!(link = %shared.name, %peer, "cannot reach the device: {why}"),
            }
            let _ = sockopt::set_linger_reset(&client);
            drop(client);
            finish(&shared, &settings, &session, refusal.label(), None);
            return;
        }
    };
    for refusal in [
        Refusal::DeviceRefused,
        Refusal::DeviceTimeout,
        Refusal::DeviceUnreachable,
        Refusal::DeviceError,
    ] {
        shared.refusals.recovered(refusal);
    }
    for stream in [&client, &device] {
        // Interactive sessions (SSH keystrokes, VNC input) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let _ = sockopt::set_keepalive(stream, Duration::from_secs(60));
    }
    debug!(link = %shared.name, %peer, "connected to the device");
    let limits = CarryLimits {
        idle_timeout: settings.idle_timeout,
        splice_sndbuf: carrier.splice_sndbuf,
        splice_max_queued: carrier.splice_max_queued,
        copy_socket_buffer: carrier.copy_socket_buffer,
        splice_carry: carrier.splice_carry,
        spliced_device_mark: carrier.spliced_device_mark,
    };
    let counters = ConnectionCounters {
        process: Arc::clone(&carrier.metrics),
        link: Arc::clone(&shared.stats),
        session: Arc::clone(&session),
    };
    let cancel = session.cancel.clone();
    let metrics = &carrier.metrics;
    let outcome = match &carrier.data_plane {
        DataPlane::Kernel { plane, watcher } => {
            // The path is set once the connection enters the splice; under `--data-plane auto`
            // the copy carries its opening first.
            session.set_path("userspace");
            match splice::carry(
                plane,
                watcher,
                client,
                device,
                &limits,
                &counters,
                &cancel,
                read_before,
            )
            .await
            {
                splice::Spliced::Done(outcome) => {
                    metrics.count_path(Path::Kernel);
                    outcome
                }
                splice::Spliced::Copied(outcome) => {
                    metrics.count_path(Path::Userspace);
                    outcome
                }
                splice::Spliced::Fallback {
                    client,
                    device,
                    reason,
                } => {
                    debug!(link = %shared.name, %peer, "carrying this connection in user space: {reason}");
                    metrics.count_path(Path::Userspace);
                    copy::carry(client, device, &limits, &counters, &cancel).await
                }
                splice::Spliced::Left { client, device } => {
                    // Counted as carried by the kernel, where it started;
                    // devicelink_splice_moves_total counts the move.
                    metrics.count_path(Path::Kernel);
                    copy::carry_from_splice(client, device, &limits, &counters, &cancel).await
                }
            }
        }
        DataPlane::Userspace => {
            session.set_path("userspace");
            metrics.count_path(Path::Userspace);
            copy::carry(client, device, &limits, &counters, &cancel).await
        }
    };
    // What reset it, for the closing line: the session's record keeps only the label.
    let reset = match &outcome {
        copy::Outcome::Reset { side, error } => Some(format!("{side}: {error}")),
        _ => None,
    };
    finish(
        &shared,
        &settings,
        &session,
        outcome.label(),
        reset.as_deref(),
    );
}

/// Counts how the connection ended, leaves its audit line and event, and forgets it.
fn finish(
    shared: &LinkShared,
    settings: &LinkSettings,
    session: &Session,
    result: &'static str,
    reset: Option<&str>,
) {
    let carrier = &shared.carrier;
    carrier.metrics.count_result(result);
    shared.stats.count_result(result);
    shared.stats.connection_closed();
    carrier.metrics.connection_closed();
    let plane = match &carrier.data_plane {
        DataPlane::Kernel { plane, .. } => Some(plane.as_ref()),
        DataPlane::Userspace => None,
    };
    let [to_device, from_device] = session.bytes(plane);
    let reason = session.close_reason().unwrap_or(result);
    info!(
        link = %shared.name,
        client = %session.client,
        device = %settings.device,
        start = %humantime::format_rfc3339_millis(session.since),
        duration_ms = session.duration().as_millis() as u64,
        bytes_to_device = to_device,
        bytes_from_device = from_device,
        data_plane = session.path().unwrap_or("none"),
        close_reason = reason,
        reset,
        "connection closed"
    );
    carrier.events.push(
        Event::new(EventKind::SessionClosed, &shared.name)
            .client(session.client)
            .bytes([to_device, from_device])
            .reason(reason),
    );
    carrier.sessions.remove(session.id);
    shared.shares.release(session.client.ip());
}
