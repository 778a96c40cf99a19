//! The data planes, chosen once at start for every link: the eBPF splice or the userspace copy
//! to carry the bytes, and, apart from it, the XDP ACL on the clients' interface; and why.

use std::sync::Arc;

use anyhow::Context as _;
use devicelink_spec::memory::DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP;
use tracing::{info, warn};

use crate::{
    config::{DataPlaneChoice, ProcessConfig, XdpModeChoice},
    errors::causes,
    kernel::KernelPlane,
    splice::SpliceWatcher,
    xdp::XdpPlane,
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
    pub fn choose(config: &ProcessConfig) -> anyhow::Result<Self> {
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
                        causes(&err)
                    );
                    Ok(Self::Userspace)
                }
            },
        }
    }
}

/// The XDP ACL on `--xdp-interface`, for either data plane: it drops disallowed sources on the
/// wire, and every link still checks its ranges at accept, so running without it never opens
/// the door. With `--data-plane ebpf` a failure to load or attach it stops the proxy (everything
/// eBPF was asked for); otherwise it is logged and the proxy runs without it.
pub fn choose_xdp(config: &ProcessConfig) -> anyhow::Result<Option<Arc<XdpPlane>>> {
    let Some(interface) = &config.xdp_interface else {
        warn!(
            "no --xdp-interface: disallowed sources are refused at accept only, not dropped on the wire"
        );
        return Ok(None);
    };
    match XdpPlane::attached(interface, config.xdp_mode) {
        Ok(plane) => Ok(Some(Arc::new(plane))),
        Err(err) if config.data_plane == DataPlaneChoice::Ebpf => Err(anyhow::Error::new(err)
            .context("--data-plane ebpf: the XDP ACL cannot start; use --data-plane auto to run without it")),
        Err(err) => {
            warn!(
                xdp_attached = false,
                "source ACL not attached, the data plane is unaffected and every link still refuses disallowed sources at accept: {}",
                causes(&anyhow::Error::new(err))
            );
            Ok(None)
        }
    }
}

/// What to tell the user when the userspace copy carries the connections behind the XDP ACL in
/// skb mode with `copy_socket_buffer` bytes per socket, under the default there (the budget
/// shrank it, or a smaller size was given), if anything: skb mode copies every
/// received segment into one linear buffer before the program runs, which counts at twice its
/// data or more against the receiving socket's buffer, and a fixed 1 MiB buffer then overruns
/// (segments pruned and sent again).
pub fn skb_xdp_copy_advice(
    data_plane: &DataPlane,
    xdp_attached: bool,
    xdp_mode: XdpModeChoice,
    copy_socket_buffer: u64,
) -> Option<String> {
    let behind_skb_xdp = xdp_attached && xdp_mode == XdpModeChoice::Skb;
    (behind_skb_xdp
        && matches!(data_plane, DataPlane::Userspace)
        && copy_socket_buffer < DEFAULT_COPY_SOCKET_BUFFER_BEHIND_SKB_XDP)
        .then(|| {
            format!(
                "the XDP ACL runs in skb mode, which copies every received segment into a linear buffer that counts at twice its data or more against the socket's receive buffer: with --copy-socket-buffer {copy_socket_buffer} uploads through the userspace copy ran at a fifth of their speed on a veth; give --copy-socket-buffer 4M or more (the default behind skb mode when the memory budget has room for it), or --xdp-mode tc (the default), which judges the skb without copying it, or native where the interface's driver supports it"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_behind_skb_mode_xdp_is_told_to_raise_its_buffers() {
        let copy = DataPlane::Userspace;
        let advice = skb_xdp_copy_advice(&copy, true, XdpModeChoice::Skb, 1 << 20)
            .expect("1 MiB behind skb-mode XDP");
        assert!(advice.contains("--copy-socket-buffer 4M"), "{advice}");
        assert!(advice.contains("--copy-socket-buffer 1048576"), "{advice}");
        assert_eq!(
            skb_xdp_copy_advice(&copy, true, XdpModeChoice::Skb, 4 << 20),
            None
        );
        assert_eq!(
            skb_xdp_copy_advice(&copy, false, XdpModeChoice::Skb, 1 << 20),
            None,
            "no XDP attached"
        );
        assert_eq!(
            skb_xdp_copy_advice(&copy, true, XdpModeChoice::Native, 1 << 20),
            None,
            "native mode hands the program the driver's buffer"
        );
        assert_eq!(
            skb_xdp_copy_advice(&copy, true, XdpModeChoice::Tc, 1 << 20),
            None,
            "TC judges the skb as it is"
        );
    }
}
