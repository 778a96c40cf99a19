//! The kernel's source ACL as a plane of its own: the program loaded from the kernel object,
//! attached to one interface (at TC ingress, or as XDP in skb or driver mode), its maps filled
//! from the links (`xdp_acl`) and its counters read. It does not depend on the splice: the
//! userspace copy uses it too, and the splice runs without it when it cannot attach.

use std::sync::Mutex;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp, XdpMode,
        tc::{self, TcAttachOptions, TcAttachType},
    },
};
use devicelink_proxy_common::XdpVerdict;
use tracing::{info, warn};

use crate::{
    config::XdpModeChoice,
    kernel::{
        KERNEL_OBJECT, KernelError, prog_err, program, raise_memlock_limit, return_freed_heap, take,
    },
    xdp_acl::{AclError, KernelEntries, LinkAcl, XdpAcl},
};

/// Link types (`/sys/class/net/<if>/type`) whose frames start with an Ethernet header, which
/// the program parses: Ethernet (NICs, veth, bridges) and loopback (its skbs carry one too).
const ETHERNET_FRAMED: [u32; 2] = [libc::ARPHRD_ETHER as u32, libc::ARPHRD_LOOPBACK as u32];

/// The XDP program's name in the kernel object.
const XDP_PROGRAM: &str = "source_acl";
/// The TC ingress program's name: the same ACL, judged on an skb.
const TC_PROGRAM: &str = "source_acl_tc";

/// What the ACL did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclAction {
    Pass,
    Drop,
}

/// The ACL program (XDP or TC) with its maps and counters.
pub struct XdpPlane {
    acl: Mutex<XdpAcl>,
    verdicts: PerCpuArray<MapData, u64>,
    interface: Option<String>,
    mode: XdpModeChoice,
    /// Owns the program and its attachment; declared last so the maps above go first.
    ebpf: Mutex<Ebpf>,
}

impl XdpPlane {
    /// Loads the program for `mode` (verified by the kernel) without attaching it anywhere.
    pub fn load(mode: XdpModeChoice) -> Result<Self, KernelError> {
        raise_memlock_limit();
        // The splice's maps come with the object; this plane does not use them, so they are
        // made as small as the kernel allows.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("SPLICE_SOCKETS", 1)
            .map_max_entries("SPLICE_LINKS", 1)
            .map_max_entries("SPLICE_CREDITS", 1)
            .override_global("SPLICE_QUEUE_LIMIT", &(64u64 << 20), true)
            .override_global("SKB_CB_OFFSET", &0u32, true)
            .load(KERNEL_OBJECT)
            .map_err(KernelError::Load)?;
        match mode {
            XdpModeChoice::Tc => {
                let program: &mut SchedClassifier = program(&mut ebpf, TC_PROGRAM)?;
                program.load().map_err(prog_err(TC_PROGRAM))?;
            }
            XdpModeChoice::Skb | XdpModeChoice::Native => {
                let program: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
                program.load().map_err(prog_err(XDP_PROGRAM))?;
            }
        }
        let acl = XdpAcl::new(
            take(&mut ebpf, "ACL_V4")?,
            take(&mut ebpf, "ACL_V6")?,
            take(&mut ebpf, "LINK_PORTS")?,
            take(&mut ebpf, "XDP_LINK_DROPS")?,
        );
        let verdicts = take(&mut ebpf, "XDP_VERDICTS")?;
        return_freed_heap();
        Ok(Self {
            acl: Mutex::new(acl),
            verdicts,
            interface: None,
            mode,
            ebpf: Mutex::new(ebpf),
        })
    }

    /// Loads the program and attaches it to `interface`.
    pub fn attached(interface: &str, mode: XdpModeChoice) -> Result<Self, KernelError> {
        let mut plane = Self::load(mode)?;
        attach(
            &mut plane.ebpf.lock().unwrap_or_else(|e| e.into_inner()),
            interface,
            mode,
        )?;
        let hook = match mode {
            XdpModeChoice::Tc => "TC ingress",
            XdpModeChoice::Skb => "XDP, skb mode",
            XdpModeChoice::Native => "XDP, driver mode",
        };
        info!(%interface, mode = mode.name(), "source ACL attached ({hook})");
        if interface == "lo" && mode == XdpModeChoice::Skb {
            // Measured on 6.18: generic XDP copies every cloned or non-linear skb, and on
            // loopback both of the proxy's connections cross it (splice 9-13 -> 2 Gbit/s).
            warn!(
                %interface,
                "XDP on loopback copies every packet on it, the device's too: expect the splice at a fraction of its speed; the accept-time ACL applies without --xdp-interface"
            );
        }
        plane.interface = Some(interface.to_string());
        Ok(plane)
    }

    /// The interface it is attached to (none for a detached plane).
    pub fn interface(&self) -> Option<&str> {
        self.interface.as_deref()
    }

    /// Makes the ACL hold exactly `links` (see [`XdpAcl::apply`]).
    pub fn set_link_acls(&self, links: &[LinkAcl]) -> Result<(), AclError> {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(links)
    }

    /// Entries the ACL maps hold, read back from the kernel.
    pub fn kernel_entries(&self) -> Result<KernelEntries, AclError> {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kernel_entries()
    }

    /// Packets dropped for the link in `slot` since it got the slot.
    pub fn drops(&self, slot: u32) -> u64 {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drops(slot)
    }

    /// Source prefixes in the ACL now, over every link.
    pub fn prefixes(&self) -> usize {
        self.acl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prefixes()
    }

    /// Packets counted with each verdict, indexed by [`XdpVerdict`].
    pub fn verdicts(&self) -> [u64; XdpVerdict::COUNT as usize] {
        let mut counts = [0; XdpVerdict::COUNT as usize];
        for (index, count) in counts.iter_mut().enumerate() {
            *count = self
                .verdicts
                .get(&(index as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
        }
        counts
    }

    /// Runs the program on `frame` (an Ethernet frame of at least 14 bytes) through
    /// `BPF_PROG_TEST_RUN` and says what it did. How the ACL is checked on crafted packets with
    /// no interface and no traffic, through whichever hook the plane was loaded for.
    pub fn judge(&self, frame: &[u8]) -> Result<AclAction, KernelError> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let (name, returned) = match self.mode {
            XdpModeChoice::Tc => {
                let program: &mut SchedClassifier = program(&mut ebpf, TC_PROGRAM)?;
                let result = program.test_run(options).map_err(prog_err(TC_PROGRAM))?;
                (TC_PROGRAM, result.return_value)
            }
            XdpModeChoice::Skb | XdpModeChoice::Native => {
                let program: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?;
                let result = program.test_run(options).map_err(prog_err(XDP_PROGRAM))?;
                (XDP_PROGRAM, result.return_value)
            }
        };
        match (self.mode, returned) {
            // TC_ACT_UNSPEC (-1): on to the interface's next program; TC_ACT_SHOT (2).
            (XdpModeChoice::Tc, u32::MAX) => Ok(AclAction::Pass),
            (XdpModeChoice::Tc, 2) => Ok(AclAction::Drop),
            // XDP_PASS (2), XDP_DROP (1).
            (XdpModeChoice::Skb | XdpModeChoice::Native, 2) => Ok(AclAction::Pass),
            (XdpModeChoice::Skb | XdpModeChoice::Native, 1) => Ok(AclAction::Drop),
            (_, other) => Err(KernelError::UnexpectedAction {
                program: name,
                action: other,
            }),
        }
    }
}

/// Refuses an interface without Ethernet framing (a tun device, a WireGuard or other L3
/// interface): the program would read IP headers at the wrong offset there and judge nothing.
fn require_ethernet(interface: &str) -> Result<(), KernelError> {
    let path = format!("/sys/class/net/{interface}/type");
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(link_type) if ETHERNET_FRAMED.contains(&link_type) => Ok(()),
            Ok(other) => Err(KernelError::NotEthernet {
                interface: interface.to_string(),
                link_type: other,
            }),
            Err(_) => Ok(()),
        },
        // No sysfs (or not this namespace's): let the attach itself say what is wrong.
        Err(_) => Ok(()),
    }
}

fn attach(ebpf: &mut Ebpf, interface: &str, mode: XdpModeChoice) -> Result<(), KernelError> {
    require_ethernet(interface)?;
    let failed = |source: ProgramError| KernelError::XdpAttach {
        interface: interface.to_string(),
        mode,
        hint: xdp_attach_hint(interface, mode, &source),
        source: Box::new(source),
    };
    match mode {
        XdpModeChoice::Tc => {
            // Below 6.6 (no tcx) aya attaches through the clsact qdisc, which must exist; a
            // qdisc already there (another program's) is as good as ours.
            let tcx = aya::util::KernelVersion::current()
                .is_ok_and(|version| version >= aya::util::KernelVersion::new(6, 6, 0));
            if !tcx {
                match tc::qdisc_add_clsact(interface) {
                    Ok(()) => {}
                    Err(tc::TcError::NetlinkError(err))
                        if err.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(err) => return Err(failed(ProgramError::TcError(err))),
                }
            }
            let program: &mut SchedClassifier = program(ebpf, TC_PROGRAM)?;
            if tcx {
                // First in the interface's chain: a program before it that ends the chain
                // (another owner's `TC_ACT_OK`) would let a disallowed source by unjudged. tcx
                // links go with the process that holds them, however it ends.
                program
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .map_err(failed)?;
            } else {
                program
                    .attach(interface, TcAttachType::Ingress)
                    .map_err(failed)?;
            }
        }
        XdpModeChoice::Skb | XdpModeChoice::Native => {
            let flags = match mode {
                XdpModeChoice::Native => XdpMode::Driver,
                _ => XdpMode::Skb,
            };
            let program: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
            program.attach(interface, flags).map_err(failed)?;
        }
    }
    Ok(())
}

/// What to do about a failed XDP attach, from its cause: the generic advice sent people after
/// the wrong fix when the interface already carried a program (another proxy's, say).
fn xdp_attach_hint(interface: &str, mode: XdpModeChoice, err: &ProgramError) -> String {
    let errno = match err {
        ProgramError::UnknownInterface { .. } => Some(libc::ENODEV),
        ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error()
        }
        ProgramError::TcError(tc::TcError::IoError(err)) => err.raw_os_error(),
        ProgramError::TcError(tc::TcError::NetlinkError(err)) => err.raw_os_error(),
        _ => None,
    };
    if errno == Some(libc::ENODEV) {
        return format!(
            "--xdp-interface: no interface {interface} in this network namespace (`ip link` lists them)"
        );
    }
    match (errno, mode) {
        // tcx takes many programs; only one may claim the first place, which this one asks for.
        (Some(libc::EBUSY | libc::EEXIST), XdpModeChoice::Tc) => format!(
            "another program holds the first place in {interface}'s TC ingress chain \
             (`bpftool net show dev {interface}` names it): detach it, or use --xdp-mode skb"
        ),
        (Some(libc::EBUSY | libc::EEXIST), _) => format!(
            "another XDP program is already attached to {interface} (`ip link show {interface}` \
             names it; another devicelink-proxy?): an interface carries one, so detach it or give \
             this proxy its own --xdp-interface"
        ),
        (_, XdpModeChoice::Native) => {
            "the driver may lack native XDP: try --xdp-mode skb".to_string()
        }
        (_, XdpModeChoice::Skb | XdpModeChoice::Tc) => {
            "check the interface exists in this network namespace and is up".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let first = xdp_attach_hint("eth0", XdpModeChoice::Tc, &syscall(libc::EBUSY));
        assert!(
            first.contains("first place in eth0's TC ingress"),
            "{first}"
        );
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

    #[test]
    fn loopback_carries_ethernet_headers_and_is_accepted() {
        require_ethernet("lo").expect("lo's skbs start with an Ethernet header");
    }
}
