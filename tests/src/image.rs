//! devicelink's container images as the tests build them: the same recipe as `cargo xtask
//! image` (buildah from scratch, the root filesystem laid out by `deploy/image/rootfs.sh`: the
//! binaries, exactly the shared libraries `ldd` names and the loader, `/etc/passwd` and
//! `/etc/group` for root and uid 65532; no shell, no package manager), from whichever build of
//! the binaries a test run has, and labelled with the first binary's SHA-256 so that a later run
//! reuses an image whose binary did not change.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;
use devicelink_spec::pod_security::{IMAGE_USER, PROXY_RUN_AS_GROUP, PROXY_RUN_AS_USER};

use crate::{process::sh, ssh::sha256};

/// Label holding the SHA-256 of the image's first binary: with [`RECIPE_LABEL`], what says the
/// image is current.
pub const BINARY_HASH_LABEL: &str = "io.devicelink.binary-sha256";

/// Label holding the SHA-256 of `deploy/image/rootfs.sh`, which lays the image out: a changed
/// script makes every image stale.
pub const RECIPE_LABEL: &str = "io.devicelink.rootfs-sha256";

/// One image: its name and what goes in it.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    /// The image's name, and the name of the binary it runs.
    pub name: &'static str,
    /// Every binary it carries (release builds, from `target/release`); the first is run.
    pub binaries: &'static [&'static str],
    /// The arguments it runs the binary with when given none.
    pub default_args: &'static [&'static str],
    pub description: &'static str,
}

pub const PROXY: ImageSpec = ImageSpec {
    name: "devicelink-proxy",
    binaries: &["devicelink-proxy"],
    default_args: &[],
    description: "devicelink's proxy: XDP source ACL, eBPF splice, userspace copy",
};

pub const OPERATOR: ImageSpec = ImageSpec {
    name: "devicelink-operator",
    binaries: &["devicelink-operator", "devicelink"],
    default_args: &["run", "--log-format", "json"],
    description: "devicelink's Kubernetes operator, and the devicelink CLI",
};

pub const CONSOLE: ImageSpec = ImageSpec {
    name: "devicelink-console",
    binaries: &["devicelink-console"],
    default_args: &[],
    description: "devicelink's console: API and panel",
};

pub const IMAGES: [ImageSpec; 3] = [PROXY, OPERATOR, CONSOLE];

/// Where each binary lives inside every image (`deploy/image/rootfs.sh` puts it there).
pub const BIN_DIR: &str = "/usr/local/bin";

/// The tags an image gets: `<name>:<version>` and `<name>:<version>-<commit>`.
pub fn tags(spec: &ImageSpec, version: &str, commit: &str) -> [String; 2] {
    [
        format!("{}:{version}", spec.name),
        format!("{}:{version}-{commit}", spec.name),
    ]
}

/// The script that lays out every image's root filesystem (the Dockerfiles run it too).
pub fn rootfs_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/image/rootfs.sh")
}

/// The user an image runs as by default: root for the proxy (its pod adds capabilities, which
/// Kubernetes gives to root only), the unprivileged user for the others.
pub fn default_user(spec: &ImageSpec) -> String {
    if spec.name == PROXY.name {
        format!("{PROXY_RUN_AS_USER}:{PROXY_RUN_AS_GROUP}")
    } else {
        format!("{IMAGE_USER}:{IMAGE_USER}")
    }
}

/// The SHA-256 of the image's first binary in `release_dir`.
pub fn binary_hash(spec: &ImageSpec, release_dir: &Path) -> anyhow::Result<String> {
    sha256(&release_dir.join(spec.binaries[0]))
}

/// A label of a local image, or None when the image does not exist.
pub fn image_label(reference: &str, label: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{index .Labels \"{label}\"}}}}"))
        .arg(reference)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `reference` exists and was built from the binary now in `release_dir` by the
/// `rootfs.sh` now in the repository.
pub fn is_current(spec: &ImageSpec, reference: &str, release_dir: &Path) -> bool {
    let Ok(hash) = binary_hash(spec, release_dir) else {
        return false;
    };
    image_label(reference, BINARY_HASH_LABEL).is_some_and(|label| label == hash)
        && sha256(&rootfs_script()).is_ok_and(|recipe| {
            image_label(reference, RECIPE_LABEL).is_some_and(|label| label == recipe)
        })
}

/// Builds one image from the binaries in `release_dir` and tags it (see [`tags`]). Returns the
/// tags. The image's creation time is the epoch, so the same binaries give the same image.
pub fn build(
    spec: &ImageSpec,
    release_dir: &Path,
    version: &str,
    commit: &str,
) -> anyhow::Result<[String; 2]> {
    let staging = std::env::temp_dir().join(format!(
        "devicelink-image-{}-{}",
        spec.name,
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    let result = stage(spec, release_dir, &staging)
        .and_then(|()| commit_image(spec, release_dir, &staging, version, commit));
    let _ = fs::remove_dir_all(&staging);
    result
}

fn stage(spec: &ImageSpec, release_dir: &Path, staging: &Path) -> anyhow::Result<()> {
    let mut layout = Command::new("sh");
    layout.arg(rootfs_script()).arg(staging);
    for binary in spec.binaries {
        let path = release_dir.join(binary);
        if !path.is_file() {
            bail!(
                "{} is not built: run `cargo build -p <its crate>` (`cargo xtask image` builds the release ones)",
                path.display()
            );
        }
        layout.arg(path);
    }
    sh(&mut layout).map(drop)
}

fn buildah(args: &[&str]) -> anyhow::Result<String> {
    Ok(sh(Command::new("buildah").args(args))?.trim().to_owned())
}

fn commit_image(
    spec: &ImageSpec,
    release_dir: &Path,
    staging: &Path,
    version: &str,
    commit: &str,
) -> anyhow::Result<[String; 2]> {
    let tags = tags(spec, version, commit);
    let container = buildah(&["from", "scratch"])?;
    let result = (|| {
        buildah(&["copy", &container, &staging.display().to_string(), "/"])?;
        let entrypoint = json_array(&[&format!("{BIN_DIR}/{}", spec.binaries[0])]);
        let cmd = json_array(spec.default_args);
        let hash = binary_hash(spec, release_dir)?;
        let user = default_user(spec);
        let labels = [
            format!("org.opencontainers.image.title={}", spec.name),
            format!("org.opencontainers.image.description={}", spec.description),
            format!("org.opencontainers.image.version={version}"),
            format!("org.opencontainers.image.revision={commit}"),
            format!("{BINARY_HASH_LABEL}={hash}"),
            format!("{RECIPE_LABEL}={}", sha256(&rootfs_script())?),
        ];
        let mut config = vec![
            "config",
            "--user",
            &user,
            "--workingdir",
            "/",
            "--entrypoint",
            &entrypoint,
            "--cmd",
            &cmd,
        ];
        for label in &labels {
            config.extend(["--label", label.as_str()]);
        }
        config.push(&container);
        buildah(&config)?;
        buildah(&[
            "commit",
            "--quiet",
            "--timestamp",
            "0",
            &container,
            &tags[0],
        ])?;
        buildah(&["tag", &tags[0], &tags[1]])?;
        Ok(tags.clone())
    })();
    let _ = buildah(&["rm", &container]);
    result
}

/// A JSON array of strings, as `buildah config --entrypoint/--cmd` take for the exec form.
fn json_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("\"{}\"", item.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_tagged_with_the_version_and_with_the_version_and_commit() {
        assert_eq!(
            tags(&PROXY, "0.1.0", "abc1234"),
            [
                "devicelink-proxy:0.1.0".to_owned(),
                "devicelink-proxy:0.1.0-abc1234".to_owned()
            ]
        );
    }

    #[test]
    fn the_proxy_image_runs_as_root_and_the_others_as_the_unprivileged_user() {
        assert_eq!(default_user(&PROXY), "0:0");
        assert_eq!(default_user(&OPERATOR), "65532:65532");
        assert_eq!(default_user(&CONSOLE), "65532:65532");
    }

    #[test]
    fn entrypoint_arrays_are_json() {
        assert_eq!(
            json_array(&["run", "--log-format", "json"]),
            r#"["run","--log-format","json"]"#
        );
        assert_eq!(json_array(&[]), "[]");
    }
}
