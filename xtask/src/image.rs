//! `cargo xtask image`: OCI images of devicelink-proxy, devicelink-operator and
//! devicelink-console, built without a daemon (buildah) and from nothing (`FROM scratch`): each
//! holds its release binaries and exactly the libraries they link, laid out by
//! `deploy/image/rootfs.sh`, the same script the Dockerfiles run. Tagged with the crate version
//! and the commit; `--archive DIR` also writes OCI archives for `kind load image-archive` or
//! `ctr import`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::workspace;

/// One image: which package's binaries, and how it runs.
pub struct Recipe {
    pub name: &'static str,
    package: &'static str,
    binaries: &'static [&'static str],
    /// `uid:gid`.
    pub user: &'static str,
    entrypoint: &'static str,
    cmd: &'static [&'static str],
}

/// The proxy runs as uid 0: Kubernetes grants a container's added capabilities (BPF,
/// NET_ADMIN, PERFMON) to root only, as it sets no ambient ones. Every other capability is
/// dropped and the root filesystem is read-only (see spec/src/pod_security.rs). The operator
/// and the console need no privilege and run as 65532.
pub const RECIPES: [Recipe; 3] = [
    Recipe {
        name: "devicelink-proxy",
        package: "devicelink-proxy",
        binaries: &["devicelink-proxy"],
        user: "0:0",
        entrypoint: "/usr/local/bin/devicelink-proxy",
        cmd: &[],
    },
    Recipe {
        name: "devicelink-operator",
        package: "devicelink-operator",
        binaries: &["devicelink-operator", "devicelink"],
        user: "65532:65532",
        entrypoint: "/usr/local/bin/devicelink-operator",
        cmd: &["run", "--log-format", "json"],
    },
    Recipe {
        name: "devicelink-console",
        package: "devicelink-console",
        binaries: &["devicelink-console"],
        user: "65532:65532",
        entrypoint: "/usr/local/bin/devicelink-console",
        cmd: &[],
    },
];

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `name:version`, as the images are tagged (podman and buildah show them as `localhost/...`).
pub fn reference(name: &str) -> String {
    format!("localhost/{name}:{VERSION}")
}

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
    let commit =
        output(
            Command::new("git")
                .current_dir(&root)
                .args(["rev-parse", "--short=12", "HEAD"]),
        )
        .unwrap_or_else(|_| "unknown".to_owned());
    let dirty = output(
        Command::new("git")
            .current_dir(&root)
            .args(["status", "--porcelain"]),
    )
    .map(|s| !s.is_empty())
    .unwrap_or(false);
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// Builds every image (and the release binaries first); with `archive`, writes an OCI archive
/// of each there.
pub fn run(archive: Option<&Path>) -> anyhow::Result<()> {
    for recipe in &RECIPES {
        workspace::run(Command::new("cargo").args([
            "build",
            "--release",
            "--package",
            recipe.package,
            "--bins",
        ]))?;
    }
    let revision = revision();
    for recipe in &RECIPES {
        build(recipe, &revision)?;
        if let Some(dir) = archive {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("{}-{VERSION}.tar", recipe.name));
            let _ = std::fs::remove_file(&file);
            workspace::run(
                Command::new("podman")
                    .args(["save", "--format", "oci-archive", "-o"])
                    .arg(&file)
                    .arg(reference(recipe.name)),
            )?;
            println!("image: wrote {}", file.display());
        }
    }
    Ok(())
}

fn build(recipe: &Recipe, revision: &str) -> anyhow::Result<()> {
    let root = workspace::root();
    let rootfs = tempdir(recipe.name)?;
    let mut layout = Command::new("sh");
    layout.arg(root.join("deploy/image/rootfs.sh")).arg(&rootfs);
    for binary in recipe.binaries {
        layout.arg(root.join("target/release").join(binary));
    }
    workspace::run(&mut layout)?;

    let container = output(Command::new("buildah").args(["from", "scratch"]))?;
    let built = (|| -> anyhow::Result<()> {
        workspace::run(
            Command::new("buildah")
                .args(["copy", "--quiet", &container])
                .arg(format!("{}/", rootfs.display()))
                .arg("/"),
        )?;
        let entrypoint = serde_json::to_string(&[recipe.entrypoint])?;
        let cmd = serde_json::to_string(recipe.cmd)?;
        workspace::run(Command::new("buildah").args([
            "config",
            "--user",
            recipe.user,
            "--workingdir",
            "/",
            "--entrypoint",
            &entrypoint,
            "--cmd",
            &cmd,
            "--label",
            &format!("org.opencontainers.image.title={}", recipe.name),
            "--label",
            &format!("org.opencontainers.image.version={VERSION}"),
            "--label",
            &format!("org.opencontainers.image.revision={revision}"),
            "--label",
            "org.opencontainers.image.licenses=Apache-2.0",
            &container,
        ]))?;
        workspace::run(Command::new("buildah").args([
            "commit",
            "--quiet",
            "--rm",
            &container,
            &reference(recipe.name),
        ]))?;
        Ok(())
    })();
    if built.is_err() {
        let _ = Command::new("buildah").args(["rm", &container]).output();
    }
    let _ = std::fs::remove_dir_all(&rootfs);
    built?;
    let tagged = format!("localhost/{}:{VERSION}-{revision}", recipe.name);
    workspace::run(Command::new("buildah").args(["tag", &reference(recipe.name), &tagged]))?;
    let size = size_of(recipe.name)
        .map_or_else(|| "?".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
    println!("image: {} and {tagged} ({size})", reference(recipe.name));
    Ok(())
}

fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("devicelink-image-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The image's size in bytes, if it has been built on this machine.
pub fn size_of(name: &str) -> Option<u64> {
    output(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &reference(name),
    ]))
    .ok()?
    .parse()
    .ok()
}
