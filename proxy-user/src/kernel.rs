//! The eBPF splice's kernel side: loading the verdict program and attaching it to the socket
//! hash, and the map operations a connection needs (insert, arm, read counters, remove); plus
//! what loading the kernel object takes, shared with the XDP program (`xdp`). Nothing is
//! pinned: dropping [`KernelPlane`] detaches and unloads everything.

mod leave_check;

use std::{os::fd::AsRawFd, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf, SockHash},
    programs::{ProgramError, SkSkb},
};
use devicelink_proxy_common::{
    Direction, MAX_SPLICED_SOCKETS, SpliceCounter, SpliceCredit, SpliceLink,
};
use tracing::{debug, info, warn};

use crate::config::{ProcessConfig, XdpModeChoice};

/// The kernel programs, built by `build.rs` from `proxy-ebpf/`.
pub(crate) static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/devicelink-proxy"));

/// The oldest kernel whose sockmap handles FIN, wake-ups after copy and backlog rescheduling
/// correctly (the "bpf, sockmap" fixes of v6.4, May 2023).
pub const MIN_KERNEL: (u32, u32) = (6, 4);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel {found} is older than {}.{}, whose sockmap fixes the splice relies on", MIN_KERNEL.0, MIN_KERNEL.1)]
    TooOld { found: String },
    #[error(
        "loading the eBPF object failed (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root; {})",
        missing_capabilities()
    )]
    Load(#[source] aya::EbpfError),
    // A program the verifier refuses for want of a capability (CAP_PERFMON's pointer
    // arithmetic, say) names the capability, not only the verifier's words.
    #[error("program {name}{}", capability_note())]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)")]
    MissingMap(&'static str),
    #[error("program {program} returned {action}, which is none of its actions")]
    UnexpectedAction { program: &'static str, action: u32 },
    #[error(
        "program {0} is missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)"
    )]
    MissingProgram(&'static str),
    #[error(
        "--xdp-interface {interface}: link type {link_type} is not Ethernet; the XDP ACL parses Ethernet frames, so attach it to the interface clients arrive on with Ethernet framing (a veth or NIC), or leave --xdp-interface out and the ACL is enforced at accept"
    )]
    NotEthernet { interface: String, link_type: u32 },
    #[error("attaching the source ACL to {interface} with --xdp-mode {} failed; {hint}; cause", mode.name())]
    XdpAttach {
        interface: String,
        mode: XdpModeChoice,
        #[source]
        source: Box<ProgramError>,
        hint: String,
    },
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub end_of_stream_skbs: u64,
    pub unlinked_skbs: u64,
    pub held_skbs: u64,
    pub queue_full_skbs: u64,
    pub lost_notices: u64,
    pub overlap_trimmed_skbs: u64,
    pub seq_unknown_skbs: u64,
    pub overlap_untrimmed_skbs: u64,
    pub paced: u64,
    pub carried_skbs: u64,
}

pub struct KernelPlane {
    sockets: Mutex<SockHash<MapData, u64>>,
    /// Sockets on their way out of the splice (see `SPLICE_PARKED` in the kernel program).
    parked: Mutex<SockHash<MapData, u64>>,
    links: Mutex<HashMap<MapData, u64, SpliceLink>>,
    credits: Mutex<HashMap<MapData, u64, SpliceCredit>>,
    /// Taken once by the splice watcher, which waits on it.
    notices: Mutex<Option<RingBuf<MapData>>>,
    splice_bytes: PerCpuArray<MapData, u64>,
    splice_events: PerCpuArray<MapData, u64>,
    /// Whether a socket may leave the hash mid-connection on this kernel (checked at load).
    sockets_can_leave: bool,
    /// Owns the programs and their attachments; declared last so that it is dropped after the
    /// maps above (drop order is declaration order).
    _ebpf: Ebpf,
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

pub(crate) fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// `uname -r` as `(major, minor)`.
pub fn kernel_release() -> (String, Option<(u32, u32)>) {
    // SAFETY: utsname is plain data filled by the kernel.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return ("unknown".into(), None);
    }
    // SAFETY: the kernel NUL-terminates the release field.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let version = parse_release(&release);
    (release, version)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl KernelPlane {
    /// Loads and attaches everything for `config`, or says why it cannot.
    pub fn load(config: &ProcessConfig) -> Result<Self, KernelError> {
        let (release, version) = kernel_release();
        if version.is_none_or(|v| v < MIN_KERNEL) {
            return Err(KernelError::TooOld { found: release });
        }
        raise_memlock_limit();

        let capacity = config.max_spliced_sockets.min(MAX_SPLICED_SOCKETS);
        // Where TCP keeps an skb's sequence numbers, for the verdict program's overlap check.
        let skb_cb_offset = match crate::btf::member_offset("sk_buff", "cb") {
            Ok(Some(offset)) => offset,
            Ok(None) | Err(_) => {
                warn!(
                    "no sk_buff::cb in the kernel's BTF: the splice cannot cut retransmitted bytes it already passed on, and relies on its count check (a duplicate resets the connection)"
                );
                0
            }
        };
        let mut ebpf = match load_object(config, capacity, skb_cb_offset) {
            // Only the verdict program's own load is worth a retry: missing privileges or a
            // map the kernel refuses fail the same way without the overlap cut.
            Err(
                err @ KernelError::Program {
                    name: "splice_verdict",
                    ..
                },
            ) if skb_cb_offset != 0 => {
                // Reading the skb's sequence needs bpf_probe_read_kernel, which a locked-down
                // kernel refuses; with the offset at 0 the verifier drops that code as dead.
                warn!(
                    err = crate::errors::causes(&anyhow::Error::new(err)),
                    "the splice verdict program with its overlap cut did not load; loading it without (a retransmitted overlap then resets the connection)"
                );
                load_object(config, capacity, 0)?
            }
            other => other?,
        };
        let sockets: SockHash<MapData, u64> = take(&mut ebpf, "SPLICE_SOCKETS")?;
        let parked: SockHash<MapData, u64> = take(&mut ebpf, "SPLICE_PARKED")?;
        let links: HashMap<MapData, u64, SpliceLink> = take(&mut ebpf, "SPLICE_LINKS")?;
        let credits: HashMap<MapData, u64, SpliceCredit> = take(&mut ebpf, "SPLICE_CREDITS")?;
        let notices: RingBuf<MapData> = take(&mut ebpf, "SPLICE_NOTICES")?;
        let splice_bytes: PerCpuArray<MapData, u64> = take(&mut ebpf, "SPLICE_BYTES")?;
        let splice_events: PerCpuArray<MapData, u64> = take(&mut ebpf, "SPLICE_EVENTS")?;

        let verdict: &mut SkSkb = program(&mut ebpf, "splice_verdict")?;
        verdict
            .attach(sockets.fd())
            .map_err(prog_err("splice_verdict"))?;

        return_freed_heap();
        let mut plane = Self {
            sockets: Mutex::new(sockets),
            parked: Mutex::new(parked),
            links: Mutex::new(links),
            credits: Mutex::new(credits),
            notices: Mutex::new(Some(notices)),
            splice_bytes,
            splice_events,
            sockets_can_leave: false,
            _ebpf: ebpf,
        };
        match leave_check::sockets_can_leave(&plane) {
            Ok(()) => {
                plane.sockets_can_leave = true;
                debug!(
                    "a connection user space carries faster can leave the splice for the copy (checked on loopback)"
                );
            }
            Err(why) => info!(
                why,
                "a spliced socket cannot leave the splice mid-connection on this kernel (it lacks the sockmap fix \"Fix incorrect copied_seq calculation\"): a connection user space carries faster is carried with its sockets still in the splice, which is slower than the copy"
            ),
        }
        Ok(plane)
    }

    /// Whether a spliced socket can leave the splice hash mid-connection and be read on as a
    /// plain socket (see the `leave_check` module).
    pub fn sockets_can_leave(&self) -> bool {
        self.sockets_can_leave
    }

    /// Takes a socket out of the splice hash, leaving its link and credit (and counters) in
    /// place.
    pub fn remove_socket(&self, cookie: u64) -> Result<(), MapError> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.remove(&cookie)
    }

    /// Puts a socket in the parking hash, which keeps its psock alive once it leaves the splice
    /// hash (see the `leave` module). Fails for a socket no longer ESTABLISHED.
    pub fn park(&self, cookie: u64, socket: &impl AsRawFd) -> Result<(), MapError> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.insert(cookie, socket.as_raw_fd(), 0)
    }

    /// Takes a socket out of the parking hash: out of the splice hash too, its psock goes, and
    /// the socket is a plain TCP socket again.
    pub fn unpark(&self, cookie: u64) -> Result<(), MapError> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.remove(&cookie)
    }

    /// Records where bytes arriving on `cookie` go. Done before the socket enters the hash, and
    /// never rewritten while it is there (the kernel updates the entry's counters).
    pub fn arm(&self, cookie: u64, peer: u64, direction: Direction) -> Result<(), MapError> {
        // No `SPLICE_CREDITS` entry: the verdict program reads a missing one as nothing
        // forwarded and the default queue limit, and most connections never hold a byte.
        let link = SpliceLink {
            peer_cookie: peer,
            bytes: 0,
            held: 0,
            direction: direction as u32,
            next_seq: 0,
            seq_known: 0,
            _pad: 0,
            paced_gen: 0,
            looked_gen: 0,
        };
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.insert(cookie, link, 0)
    }

    /// Puts an armed socket into the splice hash: from now on the verdict program sees every
    /// byte that arrives on it.
    pub fn insert_socket(&self, cookie: u64, socket: &impl AsRawFd) -> Result<(), MapError> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.insert(cookie, socket.as_raw_fd(), 0)
    }

    /// The link's kernel counters: `(redirected, held)` bytes.
    pub fn link_bytes(&self, cookie: u64) -> (u64, u64) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .get(&cookie, 0)
            .map(|link| (link.bytes, link.held))
            .unwrap_or((0, 0))
    }

    /// Tells the verdict program how many held bytes user space has forwarded (once this catches
    /// up with the held count, it redirects again) and how far it may redirect.
    pub fn set_credit(&self, cookie: u64, credit: SpliceCredit) -> Result<(), MapError> {
        let mut credits = self.credits.lock().unwrap_or_else(|e| e.into_inner());
        credits.insert(cookie, credit, 0)
    }

    /// The ring buffer where the verdict program names sockets that started holding bytes;
    /// `None` once taken.
    pub fn take_notices(&self) -> Option<RingBuf<MapData>> {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Takes a socket out of the splice entirely, for user space to carry it on: out of the
    /// hash, its link and counters gone.
    pub fn release(&self, cookie: u64) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = sockets.remove(&cookie) {
            debug!(cookie, %err, "removing socket from splice hash");
        }
        drop(sockets);
        // Released sockets never held bytes that user space forwarded, nor got a credit.
        self.unlink(cookie, false);
    }

    /// Forgets a socket's link (and its credit, if user space ever wrote one); for a socket
    /// about to be closed, which takes it out of the hash by itself.
    pub fn unlink(&self, cookie: u64, credit_written: bool) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let _ = links.remove(&cookie);
        drop(links);
        if credit_written {
            let mut credits = self.credits.lock().unwrap_or_else(|e| e.into_inner());
            let _ = credits.remove(&cookie);
        }
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |map: &PerCpuArray<MapData, u64>, index: u32| -> u64 {
            map.get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            bytes_to_device: sum(&self.splice_bytes, Direction::ToDevice as u32),
            bytes_from_device: sum(&self.splice_bytes, Direction::FromDevice as u32),
            end_of_stream_skbs: sum(&self.splice_events, SpliceCounter::EndOfStream as u32),
            unlinked_skbs: sum(&self.splice_events, SpliceCounter::Unlinked as u32),
            held_skbs: sum(&self.splice_events, SpliceCounter::Held as u32),
            queue_full_skbs: sum(&self.splice_events, SpliceCounter::QueueFull as u32),
            lost_notices: sum(&self.splice_events, SpliceCounter::NoticeLost as u32),
            overlap_trimmed_skbs: sum(&self.splice_events, SpliceCounter::OverlapTrimmed as u32),
            seq_unknown_skbs: sum(&self.splice_events, SpliceCounter::SeqUnknown as u32),
            overlap_untrimmed_skbs: sum(
                &self.splice_events,
                SpliceCounter::OverlapUntrimmed as u32,
            ),
            paced: sum(&self.splice_events, SpliceCounter::Paced as u32),
            carried_skbs: sum(&self.splice_events, SpliceCounter::Carried as u32),
        }
    }
}

/// Opens the kernel object for `config` and loads the splice verdict program.
fn load_object(
    config: &ProcessConfig,
    capacity: u32,
    skb_cb_offset: u32,
) -> Result<Ebpf, KernelError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("SPLICE_SOCKETS", capacity)
        .map_max_entries("SPLICE_PARKED", capacity)
        .map_max_entries("SPLICE_LINKS", capacity)
        .map_max_entries("SPLICE_CREDITS", capacity)
        .override_global(
            "SPLICE_QUEUE_LIMIT",
            &u64::from(config.splice_max_queued),
            true,
        )
        .override_global("SKB_CB_OFFSET", &skb_cb_offset, true)
        .override_global(
            "SPLICE_LOOK_MARK",
            &config.splice_carry.first_look_mark(),
            true,
        )
        .load(KERNEL_OBJECT)
        .map_err(KernelError::Load)?;
    // Load every program before taking any map out of `ebpf`: a taken map that is dropped
    // closes its fd, and a program loaded afterwards would reference a dead fd.
    let verdict: &mut SkSkb = program(&mut ebpf, "splice_verdict")?;
    verdict.load().map_err(prog_err("splice_verdict"))?;
    Ok(ebpf)
}

pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

pub(crate) fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

/// Loading the object reads the kernel's BTF (megabytes, twice: ours and aya's); glibc keeps
/// what was freed on its heap, which showed as ~13 MiB more resident memory for good per load.
pub(crate) fn return_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free heap pages back to the system; it touches no memory
    // that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; harmless elsewhere.
pub(crate) fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(err = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Which of the data plane's capabilities this process lacks, read from `CapEff` in
/// /proc/self/status, so that a container short of one says which; `None` when unknown.
fn missing() -> Option<Vec<&'static str>> {
    const NEEDED: [(&str, u32); 3] = [("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38), ("CAP_BPF", 39)];
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    Some(
        NEEDED
            .iter()
            .filter(|(_, bit)| effective & (1 << bit) == 0)
            .map(|(name, _)| *name)
            .collect(),
    )
}

fn missing_capabilities() -> String {
    match missing() {
        None => "effective capabilities unknown".to_owned(),
        Some(missing) if missing.is_empty() => {
            "all three held: a seccomp profile that denies bpf() is the likely cause".to_owned()
        }
        Some(missing) => format!("missing: {}", missing.join(", ")),
    }
}

/// " (missing: CAP_...)" when a capability the programs need is not held, else nothing.
fn capability_note() -> String {
    match missing() {
        Some(missing) if !missing.is_empty() => format!(" (missing: {})", missing.join(", ")),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
        assert!(Some((6, 3)) < Some(MIN_KERNEL));
        assert!(Some((6, 18)) >= Some(MIN_KERNEL));
    }
}
