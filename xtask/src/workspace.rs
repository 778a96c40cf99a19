//! The workspace as every task sees it: where it is, where the release proxy lands, running a
//! command in it, and the release build of the proxy.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn proxy_binary() -> PathBuf {
    root().join("target/release/devicelink-proxy")
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Release build of the proxy (which builds and embeds the kernel programs).
pub fn build_proxy() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--package", "devicelink-proxy"]))
}
