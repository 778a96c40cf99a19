//! `cargo xtask crd`: regenerates deploy/crd.yaml from the operator's Rust types.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::workspace;

pub fn regenerate() -> anyhow::Result<()> {
    let output = Command::new("cargo")
        .args([
            "run",
            "--quiet",
            "--package",
            "devicelink-operator",
            "--bin",
            "devicelink-operator",
            "--",
            "crd",
        ])
        .current_dir(workspace::root())
        .output()
        .context("running devicelink-operator crd")?;
    if !output.status.success() {
        bail!(
            "devicelink-operator crd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = workspace::root().join("deploy/crd.yaml");
    std::fs::write(&path, &output.stdout)?;
    println!("wrote {}", path.display());
    Ok(())
}
