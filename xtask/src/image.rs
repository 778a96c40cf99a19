//! `cargo xtask image`: OCI images of devicelink-proxy, devicelink-operator and
//! devicelink-console, built without a daemon (buildah) and from nothing (`FROM scratch`): each
//! holds its release binaries and exactly the libraries they link, laid out by
//! `deploy/image/rootfs.sh`, the same script the Dockerfiles run. The recipe itself is the test
//! bed's (`devicelink_testbed::image`), so the images the tests run are built the same way.
//! Tagged with the crate version and the commit; `--archive DIR` also writes OCI archives for
//! `kind load image-archive` or `ctr import`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use devicelink_testbed::image::{self, IMAGES};

use crate::workspace;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit the images are built from, `-dirty` when the work tree has changes.
fn revision() -> String {
    let root = workspace::root();
    let git = |args: &[&str]| output(Command::new("git").current_dir(&root).args(args));
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|_| "unknown".to_owned());
    let dirty = git(&["status", "--porcelain"]).is_ok_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// Builds every image (and the release binaries first); with `archive`, writes an OCI archive
/// of each there.
pub fn run(archive: Option<&Path>) -> anyhow::Result<()> {
    for package in [
        "devicelink-proxy",
        "devicelink-operator",
        "devicelink-console",
    ] {
        workspace::run(Command::new("cargo").args([
            "build",
            "--release",
            "--package",
            package,
            "--bins",
        ]))?;
    }
    let release = workspace::root().join("target/release");
    let revision = revision();
    for spec in &IMAGES {
        let tags = image::build(spec, &release, VERSION, &revision)?;
        let size = size_of(spec.name)
            .map_or_else(|| "?".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
        println!("image: {} ({size})", tags.join(", "));
        if let Some(dir) = archive {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("{}-{VERSION}.tar", spec.name));
            let _ = std::fs::remove_file(&file);
            workspace::run(
                Command::new("podman")
                    .args(["save", "--format", "oci-archive", "-o"])
                    .arg(&file)
                    .arg(&tags[0]),
            )?;
            println!("image: wrote {}", file.display());
        }
    }
    Ok(())
}

/// The image's size in bytes, if it has been built on this machine.
pub fn size_of(name: &str) -> Option<u64> {
    output(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &format!("{name}:{VERSION}"),
    ]))
    .ok()?
    .parse()
    .ok()
}
