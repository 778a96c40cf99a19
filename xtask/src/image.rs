//! `cargo xtask image`: release-builds the proxy, the operator (with the `devicelink` CLI) and
//! the console, and builds their OCI images with buildah from scratch (see
//! `devicelink_testbed::image` for what goes in them). Tags `devicelink-<name>:<version>` and
//! `:<version>-<short commit>`; `--archive DIR` also writes each as an `oci-archive` file.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use devicelink_testbed::image::{IMAGES, build, image_size, write_archive};

use crate::workspace;

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Also write each image as an oci-archive file in this directory (for
    /// `kind load image-archive` or `ctr -n k8s.io images import`).
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
    /// Use the release binaries already in target/release instead of building them.
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    for tool in ["buildah", "podman", "ldd"] {
        if which(tool).is_none() {
            bail!(
                "`{tool}` is not installed: run `cargo xtask setup` (it installs buildah and podman from Debian)"
            );
        }
    }
    if !args.no_build {
        workspace::build_proxy()?;
        workspace::run(Command::new("cargo").args([
            "build",
            "--release",
            "--package",
            "devicelink-operator",
            "--bin",
            "devicelink-operator",
            "--bin",
            "devicelink",
            "--package",
            "devicelink-console",
        ]))?;
    }
    let release_dir = workspace::root().join("target/release");
    let version = env!("CARGO_PKG_VERSION");
    let commit = short_commit()?;
    for spec in &IMAGES {
        let built = build(spec, &release_dir, version, &commit)
            .with_context(|| format!("building the {} image", spec.name))?;
        let size = image_size(&built[0]).map_or_else(|| "?".into(), mib);
        println!("image: {} and {} ({size})", built[0], built[1]);
        if let Some(dir) = &args.archive {
            let path = write_archive(&built[0], dir)?;
            println!("image: wrote {}", path.display());
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn short_commit() -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace::root())
        .output()
        .context("running git")?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || commit.is_empty() {
        bail!("the images are tagged with the commit, and `git rev-parse --short HEAD` gave none");
    }
    Ok(commit)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    })
}
