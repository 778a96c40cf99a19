//! The link table: handed the set of links the configuration wants, it makes the running state
//! match. Listeners are opened and closed, XDP ACL entries added and removed, settings swapped,
//! expiry timed per link. A link whose spec did not change is not touched; a link that changed
//! keeps the sessions it is still allowed to keep:
//!
//! - expiry moved either way: sessions kept, the new time holds (a time already past closes it);
//! - a source range added: sessions kept, the new source gets in;
//! - a source range removed: the sessions from sources no longer allowed are closed at once;
//! - max connections lowered below what is open: open ones kept, new ones refused until under;
//! - device or idle timeout changed: open sessions kept, new connections use the new values;
//! - listen address changed, disabled or removed: listener and sessions closed.
//!
//! The table runs as one task that owns all of this; [`LinkTable`] is its handle.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    errors::causes,
    events::{Event, EventKind},
    link::{self, Carrier, Link, RunningLink, close_reason},
    route,
    xdp_acl::LinkAcl,
};

/// How often links that failed to start (a port in use) are tried again.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// Where a link of the configuration stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum LinkState {
    /// Listening and carrying.
    Active,
    /// `enabled: false`.
    Disabled,
    /// Its expiry has passed.
    Expired,
    /// It could not start (the error says why); retried every few seconds.
    Failed(String),
}

/// One link as the table sees it now.
#[derive(Clone, Debug)]
pub struct LinkStatus {
    pub name: String,
    pub state: LinkState,
    /// The address it listens on (as bound when active, as configured otherwise).
    pub listen: SocketAddr,
    pub expires_at: Option<SystemTime>,
    /// Its slot in the XDP maps while active.
    pub xdp_slot: Option<u32>,
}

/// What one application of a set of links did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub started: Vec<String>,
    pub changed: Vec<String>,
    pub stopped: Vec<String>,
    /// Links that could not start, and why; the other links still applied.
    pub failed: Vec<(String, String)>,
}

enum Command {
    Apply {
        links: Vec<Link>,
        reply: oneshot::Sender<ApplyReport>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The handle on the table's task.
#[derive(Clone)]
pub struct LinkTable {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Arc<Vec<LinkStatus>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the link table has stopped")]
pub struct TableStopped;

impl LinkTable {
    /// Starts the table's task; it carries no link until the first [`LinkTable::apply`].
    pub fn spawn(carrier: Arc<Carrier>) -> Self {
        let (commands, receiver) = mpsc::channel(16);
        let (status_tx, status) = watch::channel(Arc::new(Vec::new()));
        let table = Table {
            carrier,
            desired: BTreeMap::new(),
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            free_slots: BTreeSet::new(),
            next_slot: 0,
            routes: HashMap::new(),
            quickack_rules: BTreeMap::new(),
            status: status_tx,
        };
        tokio::spawn(table.run(receiver));
        Self { commands, status }
    }

    /// Makes the running links match `links` (names and listen ports unique: the caller has
    /// validated the set). Returns what changed and which links failed to start.
    pub async fn apply(&self, links: Vec<Link>) -> Result<ApplyReport, TableStopped> {
        let (reply, report) = oneshot::channel();
        self.commands
            .send(Command::Apply { links, reply })
            .await
            .map_err(|_| TableStopped)?;
        report.await.map_err(|_| TableStopped)
    }

    /// Closes every link and every session, and waits until they are closed.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// The links and their states, as of the last change.
    pub fn status(&self) -> Arc<Vec<LinkStatus>> {
        Arc::clone(&self.status.borrow())
    }

    /// A receiver that sees each new status.
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<LinkStatus>>> {
        self.status.clone()
    }
}

struct Running {
    link: Link,
    handle: RunningLink,
    slot: Option<u32>,
}

struct Table {
    carrier: Arc<Carrier>,
    desired: BTreeMap<String, Link>,
    running: BTreeMap<String, Running>,
    /// Links that should run but could not start, and why.
    failed: BTreeMap<String, String>,
    free_slots: BTreeSet<u32>,
    next_slot: u32,
    /// Quick-ACK host routes to the devices of active links (eBPF mode), by device address.
    routes: HashMap<IpAddr, route::QuickAckRoute>,
    /// The rule that leads spliced device sockets to those routes, per family in use. Dropped
    /// after the routes it leads to.
    quickack_rules: BTreeMap<route::Family, route::QuickAckRule>,
    status: watch::Sender<Arc<Vec<LinkStatus>>>,
}

impl Table {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let now = SystemTime::now();
            let next_expiry = self
                .desired
                .values()
                .filter(|link| link.open_at(now))
                .filter_map(|link| link.expires_at)
                .min();
            let expiry = async {
                match next_expiry {
                    Some(at) => {
                        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                if self.failed.is_empty() {
                    std::future::pending().await
                } else {
                    tokio::time::sleep(RETRY_FAILED).await;
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Apply { links, reply }) => {
                        self.desired = links.into_iter().map(|link| (link.name.clone(), link)).collect();
                        let report = self.reconcile().await;
                        let _ = reply.send(report);
                    }
                    Some(Command::Shutdown { reply }) => {
                        self.stop_all().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop_all().await;
                        return;
                    }
                },
                () = expiry => {
                    self.reconcile().await;
                }
                () = retry => {
                    self.reconcile().await;
                }
            }
        }
    }

    /// Makes the running links match the desired ones at this instant.
    async fn reconcile(&mut self) -> ApplyReport {
        let now = SystemTime::now();
        let mut report = ApplyReport::default();

        // Stop first, so that a port a stopping link frees can be taken by another in the same
        // change.
        let to_stop: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| match self.desired.get(*name) {
                None => true,
                Some(link) => !link.open_at(now) || link.listen != running.link.listen,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in to_stop {
            let Some(running) = self.running.remove(&name) else {
                continue;
            };
            let (kind, why) = match self.desired.get(&name) {
                None => (EventKind::LinkStopped, "removed from the configuration"),
                Some(link) if !link.enabled => (EventKind::LinkStopped, "disabled"),
                Some(link) if !link.open_at(now) => (EventKind::LinkExpired, "expired"),
                Some(_) => (EventKind::LinkStopped, "its listen address changed"),
            };
            info!(link = %name, sessions = running.handle.stats.active(), "link closed: {why}; its sessions are closed");
            running.handle.stop().await;
            if let Some(slot) = running.slot {
                self.free_slots.insert(slot);
            }
            self.carrier
                .events
                .push(Event::new(kind, &name).reason(why));
            report.stopped.push(name);
        }

        // Links that keep running take their new settings in place.
        for (name, running) in &mut self.running {
            let Some(link) = self.desired.get(name) else {
                continue;
            };
            if *link == running.link {
                continue;
            }
            running.handle.update(link.settings());
            if link.acl != running.link.acl {
                let mut closed = 0;
                for session in self.carrier.sessions.list(Some(name)) {
                    if !link.acl.allows(session.client.ip()) {
                        session.close(close_reason::SOURCE_REMOVED);
                        closed += 1;
                    }
                }
                if closed > 0 {
                    info!(link = %name, closed, "allowed sources changed: closed the sessions of sources no longer allowed");
                }
            }
            running.link = link.clone();
            report.changed.push(name.clone());
        }

        // Start what should run and does not.
        self.failed
            .retain(|name, _| self.desired.contains_key(name));
        let to_start: Vec<Link> = self
            .desired
            .values()
            .filter(|link| link.open_at(now) && !self.running.contains_key(&link.name))
            .cloned()
            .collect();
        for link in to_start {
            match link::start(&link, &self.carrier) {
                Ok(handle) => {
                    let slot = self.take_slot();
                    handle.stats.set_xdp_slot(slot);
                    info!(link = %link.name, listen = %handle.listen, device = %link.device, "link open");
                    self.carrier
                        .events
                        .push(Event::new(EventKind::LinkStarted, &link.name));
                    self.failed.remove(&link.name);
                    report.started.push(link.name.clone());
                    self.running
                        .insert(link.name.clone(), Running { link, handle, slot });
                }
                Err(err) => {
                    let why = causes(&err);
                    if self.failed.get(&link.name) != Some(&why) {
                        warn!(link = %link.name, "link cannot open: {why}; the other links are not affected; retrying every {}s", RETRY_FAILED.as_secs());
                        self.carrier
                            .events
                            .push(Event::new(EventKind::LinkFailed, &link.name).reason(&why));
                    }
                    report.failed.push((link.name.clone(), why.clone()));
                    self.failed.insert(link.name.clone(), why);
                }
            }
        }

        self.update_xdp();
        self.update_routes().await;
        self.forget_removed_links();
        self.publish(now);
        report
    }

    fn take_slot(&mut self) -> Option<u32> {
        if let Some(slot) = self.free_slots.pop_first() {
            return Some(slot);
        }
        if self.next_slot >= devicelink_proxy_common::MAX_LINKS {
            return None;
        }
        self.next_slot += 1;
        Some(self.next_slot - 1)
    }

    /// The XDP ACL holds exactly the active links' ports and ranges.
    fn update_xdp(&self) {
        let Some(xdp) = &self.carrier.xdp else {
            return;
        };
        let acls: Vec<LinkAcl> = self
            .running
            .values()
            // A PROXY protocol link's packets come from its load balancer, whom the link's
            // ranges do not name: its port is left out, so XDP passes it, and its ACL is
            // enforced at accept on the client the header names.
            .filter(|running| !running.link.proxy_protocol)
            .filter_map(|running| {
                let slot = running.slot?;
                Some(LinkAcl {
                    slot,
                    port: running.handle.listen.port(),
                    ranges: running.link.acl.prefixes().to_vec(),
                })
            })
            .collect();
        if let Err(err) = xdp.set_link_acls(&acls) {
            // The accept-time check still holds every link's ACL; only the early drop is off.
            error!(
                "updating the XDP ACL failed: {}; disallowed sources are refused at accept until the next change",
                causes(&anyhow::Error::new(err))
            );
        }
    }

    /// Quick-ACK routes to the devices of active links, added for new addresses and removed for
    /// addresses no active link uses any more (see `route`).
    async fn update_routes(&mut self) {
        if self.carrier.spliced_device_mark.is_none() {
            return;
        }
        let mut wanted: BTreeSet<IpAddr> = BTreeSet::new();
        let mut names: BTreeSet<(String, u16)> = BTreeSet::new();
        for running in self.running.values() {
            let device = &running.link.device;
            match device.host.parse::<IpAddr>() {
                Ok(addr) => {
                    wanted.insert(addr.to_canonical());
                }
                Err(_) => {
                    names.insert((device.host.clone(), device.port));
                }
            }
        }
        for (host, port) in names {
            // A resolver that does not answer must not hold the table up longer than a
            // connection would wait for the device.
            let lookup = tokio::time::timeout(
                self.carrier.connect_timeout,
                tokio::net::lookup_host((host.as_str(), port)),
            );
            match lookup.await {
                Ok(Ok(addrs)) => wanted.extend(addrs.map(|addr| addr.ip().to_canonical())),
                Ok(Err(err)) => {
                    warn!(device = %host, %err, "cannot resolve the device now; no quick-ACK route for it")
                }
                Err(_) => {
                    warn!(device = %host, "resolving the device timed out; no quick-ACK route for it")
                }
            }
        }
        self.routes.retain(|addr, _| wanted.contains(addr));
        let families: BTreeSet<route::Family> =
            wanted.iter().copied().map(route::Family::of).collect();
        self.quickack_rules
            .retain(|family, _| families.contains(family));
        for family in families {
            if self.quickack_rules.contains_key(&family) {
                continue;
            }
            match route::QuickAckRule::add(family) {
                Ok(rule) => {
                    self.quickack_rules.insert(family, rule);
                }
                Err(err) => warn!(
                    ?family,
                    "no quick-ACK rule ({err}); the splice delays its ACKs to the device, which slows bursty devices (VNC/RDP); --device-quickack off silences this"
                ),
            }
        }
        for addr in wanted {
            if self.routes.contains_key(&addr)
                || !self.quickack_rules.contains_key(&route::Family::of(addr))
            {
                continue;
            }
            match route::QuickAckRoute::add(addr) {
                Ok(route) => {
                    self.routes.insert(addr, route);
                }
                // A device on this host (loopback, say) is reached through the local table,
                // which a route of ours would not override; nothing to do.
                Err(err @ route::RouteError::NotUnicast(..)) => {
                    info!(device = %addr, "no quick-ACK route: {err}")
                }
                Err(err) => warn!(
                    device = %addr,
                    "no quick-ACK route to the device ({err}); the splice delays its ACKs to the device, which slows bursty devices (VNC/RDP); --device-quickack off silences this"
                ),
            }
        }
    }

    /// Series of links that left the configuration go from the metrics.
    fn forget_removed_links(&self) {
        let status = self.status.borrow();
        for old in status.iter() {
            if !self.desired.contains_key(&old.name) {
                self.carrier.metrics.forget_link(&old.name);
            }
        }
    }

    fn publish(&self, now: SystemTime) {
        let status: Vec<LinkStatus> = self
            .desired
            .values()
            .map(|link| {
                let running = self.running.get(&link.name);
                let state = if let Some(why) = self.failed.get(&link.name) {
                    LinkState::Failed(why.clone())
                } else if running.is_some() {
                    LinkState::Active
                } else if !link.enabled {
                    LinkState::Disabled
                } else if !link.open_at(now) {
                    LinkState::Expired
                } else {
                    LinkState::Failed("not started".into())
                };
                LinkStatus {
                    name: link.name.clone(),
                    state,
                    listen: running.map_or(link.listen, |r| r.handle.listen),
                    expires_at: link.expires_at,
                    xdp_slot: running.and_then(|r| r.slot),
                }
            })
            .collect();
        self.status.send_replace(Arc::new(status));
    }

    async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        for (_, running) in running {
            running.handle.stop_and_wait().await;
        }
        self.update_xdp();
        self.routes.clear();
    }
}
