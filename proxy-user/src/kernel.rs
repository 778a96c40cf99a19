//! The eBPF data plane's kernel side: loading the programs, attaching the XDP ACL and the splice
//! verdict, and the map operations a connection needs (insert, arm, read counters, remove).
//! Nothing is pinned: dropping [`KernelPlane`] detaches and unloads everything.

use std::{os::fd::AsRawFd, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf, SockHash},
    programs::{ProgramError, SkSkb, Xdp, XdpMode},
};
use devicelink_proxy_common::{
    Direction, MAX_SPLICED_SOCKETS, SpliceCounter, SpliceCredit, SpliceLink, XdpVerdict,
};
use tracing::{debug, info, warn};

use crate::{
    config::{ProcessConfig, XdpModeChoice},
    xdp_acl::{LinkAcl, XdpAcl},
};

/// The kernel programs, built by `build.rs` from `proxy-ebpf/`.
static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/devicelink-proxy"));

/// The oldest kernel whose sockmap handles FIN, wake-ups after copy and backlog rescheduling
/// correctly (the "bpf, sockmap" fixes of v6.4, May 2023).
pub const MIN_KERNEL: (u32, u32) = (6, 4);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel {found} is older than {}.{}, whose sockmap fixes the splice relies on", MIN_KERNEL.0, MIN_KERNEL.1)]
    TooOld { found: String },
    #[error(
        "loading the eBPF object failed (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("program {name}")]
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
    #[error(
        "program {0} is missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)"
    )]
    MissingProgram(&'static str),
    #[error("attaching the XDP ACL to {interface} in {mode:?} mode failed; {hint}; cause")]
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
    pub xdp: [u64; XdpVerdict::COUNT as usize],
    pub end_of_stream_skbs: u64,
    pub unlinked_skbs: u64,
    pub held_skbs: u64,
    pub queue_full_skbs: u64,
    pub lost_notices: u64,
    pub overlap_trimmed_skbs: u64,
    pub seq_unknown_skbs: u64,
    pub overlap_untrimmed_skbs: u64,
    pub paced: u64,
}

pub struct KernelPlane {
    sockets: Mutex<SockHash<MapData, u64>>,
    links: Mutex<HashMap<MapData, u64, SpliceLink>>,
    credits: Mutex<HashMap<MapData, u64, SpliceCredit>>,
    /// Taken once by the splice watcher, which waits on it.
    notices: Mutex<Option<RingBuf<MapData>>>,
    splice_bytes: PerCpuArray<MapData, u64>,
    splice_events: PerCpuArray<MapData, u64>,
    xdp_verdicts: PerCpuArray<MapData, u64>,
    /// The links' ports and ranges, changed while the program runs.
    acl: Mutex<XdpAcl>,
    xdp_interface: Option<String>,
    /// Owns the programs and their attachments; declared last so that it is dropped after the
    /// maps above (drop order is declaration order).
    _ebpf: Ebpf,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
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
        let acl: &mut Xdp = program(&mut ebpf, "source_acl")?;
        acl.load().map_err(prog_err("source_acl"))?;

        let sockets: SockHash<MapData, u64> = take(&mut ebpf, "SPLICE_SOCKETS")?;
        let links: HashMap<MapData, u64, SpliceLink> = take(&mut ebpf, "SPLICE_LINKS")?;
        let credits: HashMap<MapData, u64, SpliceCredit> = take(&mut ebpf, "SPLICE_CREDITS")?;
        let notices: RingBuf<MapData> = take(&mut ebpf, "SPLICE_NOTICES")?;
        let splice_bytes: PerCpuArray<MapData, u64> = take(&mut ebpf, "SPLICE_BYTES")?;
        let splice_events: PerCpuArray<MapData, u64> = take(&mut ebpf, "SPLICE_EVENTS")?;
        let xdp_verdicts: PerCpuArray<MapData, u64> = take(&mut ebpf, "XDP_VERDICTS")?;
        let acl = XdpAcl::new(
            take(&mut ebpf, "ACL_V4")?,
            take(&mut ebpf, "ACL_V6")?,
            take(&mut ebpf, "LINK_PORTS")?,
            take(&mut ebpf, "XDP_LINK_DROPS")?,
        );

        let verdict: &mut SkSkb = program(&mut ebpf, "splice_verdict")?;
        verdict
            .attach(sockets.fd())
            .map_err(prog_err("splice_verdict"))?;

        let xdp_interface = match &config.xdp_interface {
            Some(interface) => {
                attach_xdp(&mut ebpf, interface, config.xdp_mode)?;
                info!(%interface, mode = ?config.xdp_mode, "XDP source ACL attached");
                if interface == "lo" {
                    // Measured on 6.18: generic XDP copies every cloned or non-linear skb, and on
                    // loopback both of the proxy's connections cross it (splice 9-13 -> 2 Gbit/s).
                    warn!(
                        %interface,
                        "XDP on loopback copies every packet on it, the device's too: expect the splice at a fraction of its speed; the accept-time ACL applies without --xdp-interface"
                    );
                }
                Some(interface.clone())
            }
            None => {
                warn!(
                    "no --xdp-interface: disallowed sources are refused at accept only, not dropped on the wire"
                );
                None
            }
        };

        // Loading read the kernel's BTF (megabytes, twice: here and in aya); glibc keeps what
        // was freed on its heap, which showed as ~13 MiB more resident memory for good.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free heap memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(Self {
            sockets: Mutex::new(sockets),
            links: Mutex::new(links),
            credits: Mutex::new(credits),
            notices: Mutex::new(Some(notices)),
            splice_bytes,
            splice_events,
            xdp_verdicts,
            acl: Mutex::new(acl),
            xdp_interface,
            _ebpf: ebpf,
        })
    }

    /// Makes the XDP ACL hold exactly `links` (see [`XdpAcl::apply`]).
    pub fn set_link_acls(&self, links: &[LinkAcl]) -> Result<(), KernelError> {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(links)
            .map_err(map_err("ACL"))
    }

    /// Source prefixes in the XDP ACL now, over every link.
    pub fn xdp_acl_entries(&self) -> u64 {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prefixes() as u64
    }

    /// Packets XDP dropped for the link in `slot` since it got the slot.
    pub fn xdp_drops(&self, slot: u32) -> u64 {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drops(slot)
    }

    pub fn xdp_interface(&self) -> Option<&str> {
        self.xdp_interface.as_deref()
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
        let mut xdp = [0; XdpVerdict::COUNT as usize];
        for (index, slot) in xdp.iter_mut().enumerate() {
            *slot = sum(&self.xdp_verdicts, index as u32);
        }
        KernelCounters {
            bytes_to_device: sum(&self.splice_bytes, Direction::ToDevice as u32),
            bytes_from_device: sum(&self.splice_bytes, Direction::FromDevice as u32),
            xdp,
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
        }
    }
}

/// Opens the kernel object for `config` and loads the splice verdict program.
/// The XDP ACL program alone: loaded, never attached, judging hand-built frames through
/// `BPF_PROG_TEST_RUN`. How the ACL is tested on crafted packets (truncated headers, VLAN tags,
/// IPv6 extension headers, fragments) with no interface and no traffic.
pub struct DetachedAcl {
    acl: XdpAcl,
    verdicts: PerCpuArray<MapData, u64>,
    /// Owns the program; declared last so the maps above are dropped first.
    ebpf: Ebpf,
}

impl DetachedAcl {
    pub fn load() -> Result<Self, KernelError> {
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("SPLICE_QUEUE_LIMIT", &(64u64 << 20), true)
            .override_global("SKB_CB_OFFSET", &0u32, true)
            .load(KERNEL_OBJECT)
            .map_err(KernelError::Load)?;
        let program: &mut Xdp = program(&mut ebpf, "source_acl")?;
        program.load().map_err(prog_err("source_acl"))?;
        let acl = XdpAcl::new(
            take(&mut ebpf, "ACL_V4")?,
            take(&mut ebpf, "ACL_V6")?,
            take(&mut ebpf, "LINK_PORTS")?,
            take(&mut ebpf, "XDP_LINK_DROPS")?,
        );
        let verdicts = take(&mut ebpf, "XDP_VERDICTS")?;
        Ok(Self {
            acl,
            verdicts,
            ebpf,
        })
    }

    pub fn set_link_acls(&mut self, links: &[LinkAcl]) -> Result<(), KernelError> {
        self.acl.apply(links).map_err(map_err("ACL"))
    }

    /// The program's action for `frame` (an Ethernet frame): `XDP_PASS` (2) or `XDP_DROP` (1).
    pub fn judge(&mut self, frame: &[u8]) -> Result<u32, KernelError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program: &mut Xdp = program(&mut self.ebpf, "source_acl")?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(prog_err("source_acl"))?;
        Ok(result.return_value)
    }

    /// Packets counted with `verdict` so far.
    pub fn verdicts(&self, verdict: XdpVerdict) -> u64 {
        self.verdicts
            .get(&(verdict as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    pub fn drops(&self, slot: u32) -> u64 {
        self.acl.drops(slot)
    }

    pub fn prefixes(&self) -> usize {
        self.acl.prefixes()
    }
}

fn load_object(
    config: &ProcessConfig,
    capacity: u32,
    skb_cb_offset: u32,
) -> Result<Ebpf, KernelError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("SPLICE_SOCKETS", capacity)
        .map_max_entries("SPLICE_LINKS", capacity)
        .map_max_entries("SPLICE_CREDITS", capacity)
        .override_global(
            "SPLICE_QUEUE_LIMIT",
            &u64::from(config.splice_max_queued),
            true,
        )
        .override_global("SKB_CB_OFFSET", &skb_cb_offset, true)
        .load(KERNEL_OBJECT)
        .map_err(KernelError::Load)?;
    start_kernel_log(&mut ebpf);
    // Load every program before taking any map out of `ebpf`: a taken map that is dropped
    // closes its fd, and a program loaded afterwards would reference a dead fd.
    let verdict: &mut SkSkb = program(&mut ebpf, "splice_verdict")?;
    verdict.load().map_err(prog_err("splice_verdict"))?;
    Ok(ebpf)
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, KernelError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

fn attach_xdp(ebpf: &mut Ebpf, interface: &str, mode: XdpModeChoice) -> Result<(), KernelError> {
    let program: &mut Xdp = program(ebpf, "source_acl")?;
    let flags = match mode {
        XdpModeChoice::Skb => XdpMode::Skb,
        XdpModeChoice::Native => XdpMode::Driver,
    };
    program
        .attach(interface, flags)
        .map_err(|source| KernelError::XdpAttach {
            interface: interface.to_string(),
            mode,
            hint: xdp_attach_hint(interface, mode, &source),
            source: Box::new(source),
        })?;
    Ok(())
}

/// What to do about a failed XDP attach, from its cause: the generic advice sent people after
/// the wrong fix when the interface already carried a program (another proxy's, say).
fn xdp_attach_hint(interface: &str, mode: XdpModeChoice, err: &ProgramError) -> String {
    let errno = match err {
        ProgramError::UnknownInterface { .. } => {
            return format!(
                "--xdp-interface: no interface {interface} in this network namespace (`ip link` lists them)"
            );
        }
        ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error()
        }
        _ => None,
    };
    match (errno, mode) {
        (Some(libc::EBUSY | libc::EEXIST), _) => format!(
            "another XDP program is already attached to {interface} (`ip link show {interface}` \
             names it; another devicelink-proxy?): an interface carries one, so detach it or give \
             this proxy its own --xdp-interface"
        ),
        (_, XdpModeChoice::Native) => {
            "the driver may lack native XDP: try --xdp-mode skb".to_string()
        }
        (_, XdpModeChoice::Skb) => {
            "check the interface exists in this network namespace and is up".to_string()
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; harmless elsewhere.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(err = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Forwards the kernel programs' aya-log records to `tracing`. The logger owns the log ring
/// buffer: it must live as long as the programs, or later loads fail.
fn start_kernel_log(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            debug!(%err, "kernel programs carry no log map");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns the logger.
    let Ok(mut logger) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }) else {
        warn!("cannot poll the kernel log ring buffer; kernel log records are not shown");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
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

    #[test]
    fn xdp_attach_hints_follow_the_cause() {
        let syscall = |errno| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        let busy = xdp_attach_hint("eth0", XdpModeChoice::Skb, &syscall(libc::EBUSY));
        assert!(busy.contains("already attached to eth0"), "{busy}");
        let exists = xdp_attach_hint("eth0", XdpModeChoice::Native, &syscall(libc::EEXIST));
        assert!(exists.contains("already attached"), "{exists}");
        let native = xdp_attach_hint("eth0", XdpModeChoice::Native, &syscall(libc::EOPNOTSUPP));
        assert!(native.contains("--xdp-mode skb"), "{native}");
        let missing = ProgramError::UnknownInterface {
            name: "eth9".into(),
        };
        let missing = xdp_attach_hint("eth9", XdpModeChoice::Skb, &missing);
        assert!(
            missing.starts_with("--xdp-interface: no interface eth9"),
            "{missing}"
        );
    }
}
