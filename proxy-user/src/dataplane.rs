//! The data plane, chosen once at start for every link: the eBPF splice (with the XDP ACL) or
//! the userspace copy, and why.

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    config::{DataPlaneChoice, ProcessConfig},
    kernel::KernelPlane,
    splice::SpliceWatcher,
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
                        crate::errors::causes(&err)
                    );
                    Ok(Self::Userspace)
                }
            },
        }
    }
}
