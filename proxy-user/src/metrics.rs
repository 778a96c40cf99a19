//! What the proxy counts, and the small HTTP server that shows it: Prometheus text at
//! `/metrics`, liveness at `/healthz`, readiness at `/readyz`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use devicelink_proxy_common::{Direction, XdpVerdict};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    kernel::KernelPlane, proxy_protocol::HeaderError, session::Sessions, splice::LinkTrials,
    xdp::XdpPlane,
};

/// Every value of the `result` label of `devicelink_connections_total`.
pub const RESULTS: [&str; 12] = [
    "completed",
    "reset",
    "idle_timeout",
    "closed_by_proxy",
    "rejected_acl",
    "rejected_limit",
    "rejected_source_limit",
    "rejected_source_rate",
    "device_refused",
    "device_timeout",
    "device_unreachable",
    "device_error",
];

/// Every `(to, reason)` label pair of `devicelink_splice_moves_total`.
pub const SPLICE_MOVES: [(&str, &str); 10] = [
    ("userspace", "trial"),
    ("userspace", "link_trial"),
    ("userspace", "link"),
    ("userspace", "forced"),
    ("copy", "trial"),
    ("copy", "link_trial"),
    ("copy", "faster"),
    ("copy", "forced"),
    ("kernel", "kernel_as_fast"),
    ("kernel", "stay_over"),
];

#[derive(Default)]
pub struct Metrics {
    active: AtomicI64,
    results: [AtomicU64; RESULTS.len()],
    /// Connections carried by each path: `[kernel, userspace]`.
    paths: [AtomicU64; 2],
    /// Bytes moved by user space (userspace mode, and bytes queued before a splice started).
    user_bytes: [AtomicU64; Direction::COUNT as usize],
    /// Spliced connections reset because the kernel sent more bytes than it was given.
    integrity_errors: AtomicU64,
    /// Spliced connections moved between the kernel path and user space, by [`SPLICE_MOVES`].
    splice_moves: [AtomicU64; SPLICE_MOVES.len()],
    /// Trials on busy spliced connections: `[kernel faster or as fast, user space faster]`.
    splice_trials: [AtomicU64; 2],
    ready: AtomicBool,
    data_plane: OnceLock<DataPlaneInfo>,
    /// Per-link series, by link name, for the links the proxy carries now.
    links: Mutex<BTreeMap<String, Arc<LinkStats>>>,
    /// Open sessions, for the bytes spliced links are moving right now.
    sessions: OnceLock<Arc<Sessions>>,
    config: Mutex<ConfigState>,
    memory: OnceLock<MemorySizing>,
    /// PROXY protocol headers refused, by [`HeaderError::ALL`] order.
    proxy_protocol_refused: [AtomicU64; HeaderError::ALL.len()],
    /// PROXY protocol LOCAL connections (a balancer's health checks).
    proxy_protocol_local: AtomicU64,
}

/// What the memory budget allowed, set once at start.
#[derive(Clone, Copy)]
struct MemorySizing {
    budget: u64,
    per_connection: u64,
    max_connections: u32,
}

/// The configuration file's state, for `/readyz` and the metrics.
#[derive(Default)]
struct ConfigState {
    /// Sets of links applied since start.
    generation: u64,
    applied: u64,
    refused: u64,
    /// Why the latest file was refused (the running set is the one before it); `None` once a
    /// file applies again.
    refusal: Option<String>,
}

/// One link's counters.
#[derive(Default)]
pub struct LinkStats {
    active: AtomicI64,
    results: [AtomicU64; RESULTS.len()],
    /// Bytes copied by the proxy process, per direction.
    copied: [AtomicU64; Direction::COUNT as usize],
    /// Bytes the kernel redirected on connections whose splice has ended, per direction.
    spliced: [AtomicU64; Direction::COUNT as usize],
    /// The link's slot in the XDP maps (its drop counter), plus one; 0: none.
    xdp_slot: AtomicU32,
    /// What its spliced connections' trials found (see the `splice::trial` module).
    pub trials: LinkTrials,
}

impl LinkStats {
    pub fn connection_opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn count_result(&self, result: &str) {
        self.results[result_index(result)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, direction: Direction, bytes: u64) {
        self.copied[direction as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_kernel_bytes(&self, direction: Direction, bytes: u64) {
        self.spliced[direction as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of connections that ended plus bytes copied: `[to_device, from_device]`.
    pub fn bytes(&self) -> [u64; 2] {
        [0, 1].map(|i| {
            self.copied[i].load(Ordering::Relaxed) + self.spliced[i].load(Ordering::Relaxed)
        })
    }

    pub fn set_xdp_slot(&self, slot: Option<u32>) {
        self.xdp_slot
            .store(slot.map_or(0, |slot| slot + 1), Ordering::Relaxed);
    }

    pub fn xdp_slot(&self) -> Option<u32> {
        self.xdp_slot.load(Ordering::Relaxed).checked_sub(1)
    }
}

fn result_index(result: &str) -> usize {
    RESULTS
        .iter()
        .position(|r| *r == result)
        .expect("result labels are listed in RESULTS")
}

#[derive(Clone)]
struct DataPlaneInfo {
    mode: &'static str,
    kernel: Option<Arc<KernelPlane>>,
    xdp: Option<Arc<XdpPlane>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Kernel = 0,
    Userspace = 1,
}

impl Metrics {
    pub fn set_data_plane(
        &self,
        mode: &'static str,
        kernel: Option<Arc<KernelPlane>>,
        xdp: Option<Arc<XdpPlane>>,
    ) {
        let _ = self.data_plane.set(DataPlaneInfo { mode, kernel, xdp });
    }

    /// The memory budget and what it allows each connection and the process (see `memory`).
    pub fn set_memory(&self, budget: u64, plan: &devicelink_spec::memory::MemoryPlan) {
        let _ = self.memory.set(MemorySizing {
            budget,
            per_connection: plan.per_connection,
            max_connections: plan.max_connections,
        });
    }

    pub fn count_proxy_protocol_refused(&self, reason: HeaderError) {
        let index = HeaderError::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.proxy_protocol_refused[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_proxy_protocol_local(&self) {
        self.proxy_protocol_local.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn count_result(&self, result: &str) {
        self.results[result_index(result)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of link `name`, kept while the link is in the configuration (a link that
    /// stops and starts again under the same name keeps counting).
    pub fn link(&self, name: &str) -> Arc<LinkStats> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(links.entry(name.to_string()).or_default())
    }

    /// The counters of link `name`, if it has any.
    pub fn link_stats(&self, name: &str) -> Option<Arc<LinkStats>> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(name).cloned()
    }

    /// Link `name` left the configuration: its series go.
    pub fn forget_link(&self, name: &str) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.remove(name);
    }

    pub fn set_sessions(&self, sessions: Arc<Sessions>) {
        let _ = self.sessions.set(sessions);
    }

    /// A set of links was applied.
    pub fn config_applied(&self) {
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        config.generation += 1;
        config.applied += 1;
        config.refusal = None;
    }

    /// A configuration file was refused as a whole; the running set stays.
    pub fn config_refused(&self, why: &str) {
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        config.refused += 1;
        config.refusal = Some(why.to_string());
    }

    pub fn config_generation(&self) -> u64 {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    pub fn config_refusal(&self) -> Option<String> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refusal
            .clone()
    }

    pub fn count_path(&self, path: Path) {
        self.paths[path as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_integrity_error(&self) {
        self.integrity_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A spliced connection moved between the kernel and user space; `(to, reason)` is one of
    /// [`SPLICE_MOVES`].
    pub fn count_splice_move(&self, to: &str, reason: &str) {
        if let Some(slot) = SPLICE_MOVES.iter().position(|pair| *pair == (to, reason)) {
            self.splice_moves[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A trial on a busy spliced connection ended; `user_space_faster` says which path won.
    pub fn count_splice_trial(&self, user_space_faster: bool) {
        self.splice_trials[usize::from(user_space_faster)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, direction: Direction, bytes: u64) {
        self.user_bytes[direction as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes per direction, kernel and user space together: `[to_device, from_device]`.
    pub fn bytes(&self) -> [u64; 2] {
        let mut bytes = [0, 1].map(|i| self.user_bytes[i].load(Ordering::Relaxed));
        if let Some(kernel) = self.kernel() {
            let counters = kernel.counters();
            bytes[0] += counters.bytes_to_device;
            bytes[1] += counters.bytes_from_device;
        }
        bytes
    }

    fn kernel(&self) -> Option<&Arc<KernelPlane>> {
        self.data_plane.get().and_then(|info| info.kernel.as_ref())
    }

    fn xdp(&self) -> Option<&Arc<XdpPlane>> {
        self.data_plane.get().and_then(|info| info.xdp.as_ref())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mode = self.data_plane.get().map_or("starting", |info| info.mode);
        family(
            &mut out,
            "devicelink_data_plane_info",
            "gauge",
            "Which data plane carries the bytes.",
        );
        let _ = writeln!(out, "devicelink_data_plane_info{{mode=\"{mode}\"}} 1");

        family(
            &mut out,
            "devicelink_connections_active",
            "gauge",
            "Connections being carried now.",
        );
        let _ = writeln!(out, "devicelink_connections_active {}", self.active());

        family(
            &mut out,
            "devicelink_connections_total",
            "counter",
            "Client connections, by how they ended.",
        );
        for (label, value) in RESULTS.iter().zip(&self.results) {
            let _ = writeln!(
                out,
                "devicelink_connections_total{{result=\"{label}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }

        family(
            &mut out,
            "devicelink_connections_carried_total",
            "counter",
            "Connections carried, by the path their bytes took.",
        );
        for (label, value) in ["kernel", "userspace"].iter().zip(&self.paths) {
            let _ = writeln!(
                out,
                "devicelink_connections_carried_total{{path=\"{label}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }

        if let Some(memory) = self.memory.get() {
            for (name, help, value) in [
                (
                    "devicelink_memory_budget_bytes",
                    "Memory the connections may take at worst plus the process's reserve (--memory-budget, or the cgroup's limit).",
                    memory.budget,
                ),
                (
                    "devicelink_memory_connection_worst_case_bytes",
                    "One connection's worst case on the running data plane: every buffer it may fill, full.",
                    memory.per_connection,
                ),
                (
                    "devicelink_memory_max_connections",
                    "Connections all links may carry together: what fits the budget, or --max-connections.",
                    u64::from(memory.max_connections),
                ),
            ] {
                family(&mut out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }

        family(
            &mut out,
            "devicelink_proxy_protocol_refused_total",
            "counter",
            "Connections to PROXY protocol links refused for their header, by reason.",
        );
        for (reason, value) in HeaderError::ALL.iter().zip(&self.proxy_protocol_refused) {
            let _ = writeln!(
                out,
                "devicelink_proxy_protocol_refused_total{{reason=\"{}\"}} {}",
                reason.label(),
                value.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "devicelink_proxy_protocol_local_total",
            "counter",
            "PROXY protocol LOCAL connections (a load balancer's health checks), closed without reaching the device.",
        );
        let _ = writeln!(
            out,
            "devicelink_proxy_protocol_local_total {}",
            self.proxy_protocol_local.load(Ordering::Relaxed)
        );

        let [to_device, from_device] = self.bytes();
        family(
            &mut out,
            "devicelink_bytes_total",
            "counter",
            "Payload bytes carried, by direction.",
        );
        let _ = writeln!(
            out,
            "devicelink_bytes_total{{direction=\"to_device\"}} {to_device}"
        );
        let _ = writeln!(
            out,
            "devicelink_bytes_total{{direction=\"from_device\"}} {from_device}"
        );
        family(
            &mut out,
            "devicelink_user_space_bytes_total",
            "counter",
            "Of devicelink_bytes_total, the bytes the proxy process itself read and wrote: all of them with the userspace data plane; with the eBPF splice only bytes held to keep order or to make a fast sender wait.",
        );
        for (direction, slot) in [("to_device", 0), ("from_device", 1)] {
            let _ = writeln!(
                out,
                "devicelink_user_space_bytes_total{{direction=\"{direction}\"}} {}",
                self.user_bytes[slot].load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "devicelink_splice_integrity_errors_total",
            "counter",
            "Spliced connections reset because the kernel sent a peer more bytes than it received from the other (a kernel sockmap fault seen under heavy traffic both ways; see docs/data-plane.md). Reset rather than let a corrupted stream through.",
        );
        let _ = writeln!(
            out,
            "devicelink_splice_integrity_errors_total {}",
            self.integrity_errors.load(Ordering::Relaxed)
        );

        family(
            &mut out,
            "devicelink_splice_moves_total",
            "counter",
            "Spliced connections moved between the kernel splice and user space, no byte lost or reordered. To the copy (to copy), out of the splice where the kernel lets sockets leave it: to measure a busy connection there against the kernel (trial, --splice-carry measure), with another busy connection of its link while that one is on trial (link_trial), for good once the copy was measured faster on the link (faster), or at every chance (forced, --splice-carry leave). To user space with the sockets still in the splice, where they cannot leave: trial, link_trial, link (another connection of its link was carried faster there lately) and forced (--splice-carry always). Back to the kernel (to kernel) when the trial, its own or its link's, found the kernel as fast (kernel_as_fast), or after a stay in user space (stay_over, to measure again). devicelink_splice_trials_total says which path won the trials.",
        );
        for ((to, reason), count) in SPLICE_MOVES.iter().zip(&self.splice_moves) {
            let _ = writeln!(
                out,
                "devicelink_splice_moves_total{{to=\"{to}\",reason=\"{reason}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }

        family(
            &mut out,
            "devicelink_splice_trials_total",
            "counter",
            "Trials on busy spliced connections (--splice-carry measure): each path carries the connection for at least --splice-carry-trial and 32 MiB, and the faster one keeps it (user space must carry 25% more to win: the kernel costs far less CPU).",
        );
        for (faster, slot) in [("kernel", 0), ("userspace", 1)] {
            let _ = writeln!(
                out,
                "devicelink_splice_trials_total{{faster=\"{faster}\"}} {}",
                self.splice_trials[slot].load(Ordering::Relaxed)
            );
        }

        let xdp = self.xdp();
        family(
            &mut out,
            "devicelink_xdp_attached",
            "gauge",
            "Whether the XDP source ACL is attached.",
        );
        let _ = writeln!(
            out,
            "devicelink_xdp_attached {}",
            u8::from(xdp.is_some_and(|xdp| xdp.interface().is_some()))
        );
        family(
            &mut out,
            "devicelink_xdp_acl_entries",
            "gauge",
            "Source prefixes in the XDP ACL, over every link (a link's range counts once per family it covers).",
        );
        let _ = writeln!(
            out,
            "devicelink_xdp_acl_entries {}",
            xdp.map_or(0, |xdp| xdp.prefixes())
        );
        family(
            &mut out,
            "devicelink_xdp_packets_total",
            "counter",
            "Packets seen by the XDP source ACL, by verdict and reason.",
        );
        let verdicts = xdp.map(|xdp| xdp.verdicts()).unwrap_or_default();
        for (verdict, reason, slot) in [
            ("pass", "allowed", XdpVerdict::Pass),
            ("pass", "not_inspected", XdpVerdict::NotInspected),
            ("pass", "malformed", XdpVerdict::Malformed),
            ("drop", "source_not_allowed", XdpVerdict::DropSource),
        ] {
            let _ = writeln!(
                out,
                "devicelink_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{reason}\"}} {}",
                verdicts[slot as usize]
            );
        }
        let counters = self.kernel().map(|k| k.counters()).unwrap_or_default();
        family(
            &mut out,
            "devicelink_splice_skbs_total",
            "counter",
            "Skbs the splice verdict program did not redirect, by why: end of stream (dropped, the FIN is passed on by user space), held (kept on their socket for user space to forward in order), held_queue_full (of the held, those that started a hold because their direction reached --splice-max-queued: the sender waits for the receiver), notice_lost (held skbs whose wake-up to user space was lost; it rechecks), overlap_trimmed (retransmitted skbs that began with bytes already passed on: the repeat was cut off, or the skb dropped), seq_unknown (skbs whose TCP sequence could not be read: passed on unchecked), overlap_untrimmed (the kernel refused to cut the repeat: passed on whole, and the connection is reset by the count check), paced (a direction passed a quarter of its queue limit more: passed on, and the proxy looked whether to slow the sender), carried (kept on their socket because the proxy carries the connection in user space, see devicelink_splice_moves_total), unlinked (socket being torn down).",
        );
        for (event, value) in [
            ("end_of_stream", counters.end_of_stream_skbs),
            ("held", counters.held_skbs),
            ("held_queue_full", counters.queue_full_skbs),
            ("notice_lost", counters.lost_notices),
            ("overlap_trimmed", counters.overlap_trimmed_skbs),
            ("seq_unknown", counters.seq_unknown_skbs),
            ("overlap_untrimmed", counters.overlap_untrimmed_skbs),
            ("paced", counters.paced),
            ("carried", counters.carried_skbs),
            ("unlinked", counters.unlinked_skbs),
        ] {
            let _ = writeln!(
                out,
                "devicelink_splice_skbs_total{{event=\"{event}\"}} {value}"
            );
        }
        self.render_config(&mut out);
        self.render_links(&mut out);
        out
    }

    fn render_config(&self, out: &mut String) {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        family(
            out,
            "devicelink_config_generation",
            "gauge",
            "Sets of links applied since the proxy started (1 once the first applied).",
        );
        let _ = writeln!(out, "devicelink_config_generation {}", config.generation);
        family(
            out,
            "devicelink_config_reloads_total",
            "counter",
            "Configuration files read, by result: applied, or refused as a whole (the running set stays as it was).",
        );
        let _ = writeln!(
            out,
            "devicelink_config_reloads_total{{result=\"applied\"}} {}",
            config.applied
        );
        let _ = writeln!(
            out,
            "devicelink_config_reloads_total{{result=\"refused\"}} {}",
            config.refused
        );
        family(
            out,
            "devicelink_config_refused",
            "gauge",
            "1 while the latest configuration file is refused (see /readyz for why).",
        );
        let _ = writeln!(
            out,
            "devicelink_config_refused {}",
            u8::from(config.refusal.is_some())
        );
    }

    fn render_links(&self, out: &mut String) {
        let links: Vec<(String, Arc<LinkStats>)> = self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, stats)| (name.clone(), Arc::clone(stats)))
            .collect();
        let kernel = self.kernel();
        // Bytes the kernel is moving on connections still open, per link.
        let mut live: BTreeMap<&str, [u64; 2]> = BTreeMap::new();
        let open = self
            .sessions
            .get()
            .map(|sessions| sessions.list(None))
            .unwrap_or_default();
        for session in &open {
            let bytes = session.live_kernel_bytes(kernel.map(Arc::as_ref));
            let entry = live.entry(&session.link).or_default();
            entry[0] += bytes[0];
            entry[1] += bytes[1];
        }
        family(
            out,
            "devicelink_link_connections_active",
            "gauge",
            "Connections being carried now, per link.",
        );
        for (name, stats) in &links {
            let _ = writeln!(
                out,
                "devicelink_link_connections_active{{link=\"{name}\"}} {}",
                stats.active()
            );
        }
        family(
            out,
            "devicelink_link_connections_total",
            "counter",
            "Client connections per link, by how they ended (the labels of devicelink_connections_total).",
        );
        for (name, stats) in &links {
            for (label, value) in RESULTS.iter().zip(&stats.results) {
                let value = value.load(Ordering::Relaxed);
                if value > 0 {
                    let _ = writeln!(
                        out,
                        "devicelink_link_connections_total{{link=\"{name}\",result=\"{label}\"}} {value}"
                    );
                }
            }
        }
        family(
            out,
            "devicelink_link_bytes_total",
            "counter",
            "Payload bytes carried per link, by direction.",
        );
        for (name, stats) in &links {
            let [mut to_device, mut from_device] = stats.bytes();
            if let Some([to, from]) = live.get(name.as_str()) {
                to_device += to;
                from_device += from;
            }
            let _ = writeln!(
                out,
                "devicelink_link_bytes_total{{link=\"{name}\",direction=\"to_device\"}} {to_device}"
            );
            let _ = writeln!(
                out,
                "devicelink_link_bytes_total{{link=\"{name}\",direction=\"from_device\"}} {from_device}"
            );
        }
        family(
            out,
            "devicelink_link_xdp_drops_total",
            "counter",
            "Packets from sources outside a link's ACL that XDP dropped before the stack saw them.",
        );
        for (name, stats) in &links {
            let drops = match (self.xdp(), stats.xdp_slot()) {
                (Some(xdp), Some(slot)) => xdp.drops(slot),
                _ => 0,
            };
            let _ = writeln!(
                out,
                "devicelink_link_xdp_drops_total{{link=\"{name}\"}} {drops}"
            );
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Writes a metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Scrapes and probes served at once; more wait in the listen backlog.
const MAX_SCRAPES: usize = 32;

/// Serves `/metrics`, `/healthz` and `/readyz` until `cancel` fires.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and probes listening");
    }
    // A bound on what a flood of scrapers (or slow ones) may hold: each connection is a
    // descriptor the proxy's own connections need.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = cancel.cancelled() => return,
        };
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(10);
                    accepted
                }
                Err(err) => {
                    // EMFILE and friends repeat at once: wait, longer each time, rather than
                    // spin a core on them.
                    debug!(%err, ?backoff, "metrics accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let mut request = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let (status, content_type, body) = respond(&metrics, &request);
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(err) = stream.write_all(response.as_bytes()).await {
                debug!(%peer, %err, "metrics response not sent");
            }
            let _ = stream.shutdown().await;
        });
    }
}

fn respond(metrics: &Metrics, request: &[u8]) -> (&'static str, &'static str, String) {
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if metrics.is_ready() => (
            "200 OK",
            TEXT,
            match metrics.config_refusal() {
                // The running set still serves: ready, with the reason the new file waits.
                Some(why) => format!("ready; the latest configuration was refused: {why}\n"),
                None => "ready\n".into(),
            },
        ),
        "/readyz" => ("503 Service Unavailable", TEXT, "not ready\n".into()),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_series_the_dashboards_use() {
        let metrics = Metrics::default();
        metrics.set_data_plane("userspace", None, None);
        metrics.count_result("rejected_acl");
        metrics.add_bytes(Direction::ToDevice, 5);
        metrics.connection_opened();
        let text = metrics.render();
        for needle in [
            "devicelink_data_plane_info{mode=\"userspace\"} 1",
            "devicelink_connections_active 1",
            "devicelink_connections_total{result=\"rejected_acl\"} 1",
            "devicelink_connections_total{result=\"completed\"} 0",
            "devicelink_bytes_total{direction=\"to_device\"} 5",
            "devicelink_bytes_total{direction=\"from_device\"} 0",
            "devicelink_xdp_packets_total{verdict=\"pass\",reason=\"allowed\"} 0",
            "devicelink_xdp_packets_total{verdict=\"drop\",reason=\"source_not_allowed\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    #[test]
    fn probes_answer() {
        let metrics = Metrics::default();
        assert_eq!(
            respond(&metrics, b"GET /healthz HTTP/1.1\r\n\r\n").0,
            "200 OK"
        );
        assert_eq!(
            respond(&metrics, b"GET /readyz HTTP/1.1\r\n\r\n").0,
            "503 Service Unavailable"
        );
        metrics.set_ready(true);
        assert_eq!(
            respond(&metrics, b"GET /readyz HTTP/1.1\r\n\r\n").0,
            "200 OK"
        );
        assert_eq!(
            respond(&metrics, b"GET /nope HTTP/1.1\r\n\r\n").0,
            "404 Not Found"
        );
        assert_eq!(
            respond(&metrics, b"POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
    }
}
