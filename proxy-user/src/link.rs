//! One link: what it is (name, listen address, device, allowed sources, expiry, limits) and the
//! running half of it: a listener whose accept loop admits allowed clients and carries each to
//! the device over the process's data plane. The link table (`table`) starts, changes and stops
//! links; a change of ACL, device or limits reaches a running link through [`LinkSettings`]
//! without touching its listener or its sessions.

mod accept;
mod device;
pub mod fairness;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

pub use accept::{RunningLink, start};
pub use fairness::SourceLimits;

use crate::{
    acl::SourceAcl, config::DeviceAddr, dataplane::DataPlane, events::EventLog, metrics::Metrics,
    session::Sessions, xdp::XdpPlane,
};

/// The proxy's default limit of connections per link.
pub const DEFAULT_MAX_CONNECTIONS: u32 = devicelink_spec::memory::DEFAULT_MAX_CONNECTIONS;

/// How long a connection may carry nothing before it is closed, unless the link says otherwise:
/// a forgotten session should not hold a slot and a path to the device for good.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A link as the configuration asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub listen: SocketAddr,
    pub device: DeviceAddr,
    pub acl: SourceAcl,
    pub expires_at: Option<SystemTime>,
    pub max_connections: u32,
    /// What each source may open (see `fairness`).
    pub per_source: SourceLimits,
    pub idle_timeout: Option<Duration>,
    pub enabled: bool,
    /// Clients come through a load balancer that puts a PROXY protocol header first; the
    /// client it names is the one judged (see `proxy_protocol`).
    pub proxy_protocol: bool,
}

impl Link {
    /// Whether the link should be open at `now`.
    pub fn open_at(&self, now: SystemTime) -> bool {
        self.enabled && self.expires_at.is_none_or(|at| at > now)
    }

    pub fn settings(&self) -> LinkSettings {
        LinkSettings {
            device: self.device.clone(),
            acl: self.acl.clone(),
            max_connections: self.max_connections,
            per_source: self.per_source,
            idle_timeout: self.idle_timeout,
            proxy_protocol: self.proxy_protocol,
        }
    }
}

/// What a running link reads at each accept, so that a change applies to the next client
/// without a new listener. The idle timeout applies to connections accepted after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    pub device: DeviceAddr,
    pub acl: SourceAcl,
    pub max_connections: u32,
    pub per_source: SourceLimits,
    pub idle_timeout: Option<Duration>,
    pub proxy_protocol: bool,
}

/// The settings a running link reads; swapped whole by the table.
pub type SharedSettings = Arc<RwLock<Arc<LinkSettings>>>;

/// What every link shares: the data plane and its process-wide limits, and where connections
/// are recorded.
pub struct Carrier {
    pub data_plane: DataPlane,
    /// The XDP ACL, when attached; the links' ranges are kept in it.
    pub xdp: Option<Arc<XdpPlane>>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub events: Arc<EventLog>,
    pub connect_timeout: Duration,
    pub splice_sndbuf: u32,
    pub splice_max_queued: u32,
    pub splice_carry: crate::splice::CarryPolicy,
    /// The userspace copy's socket buffers (`--copy-socket-buffer`, fitted to the budget).
    pub copy_socket_buffer: u32,
    /// Connections all links carry together, fitted to the memory budget.
    pub max_connections: u32,
    /// The mark a device socket carries while the kernel splices it, when the proxy keeps
    /// quick-ACK routes to the devices (`--device-quickack`, eBPF planes; see `route`).
    pub spliced_device_mark: Option<u32>,
}

/// Why a session was closed by the proxy rather than by its peers; said in the audit line.
pub mod close_reason {
    pub const SOURCE_REMOVED: &str = "source_removed_from_acl";
    pub const LINK_STOPPED: &str = "link_stopped";
    pub const CLOSED_BY_REQUEST: &str = "closed_by_request";
}
