//! devicelink's container images, built with buildah from scratch: one release binary (or two,
//! without their debug info), exactly the shared libraries `ldd` names for it plus the dynamic
//! loader, and `/etc/passwd` and `/etc/group` naming the unprivileged user. No shell, no package
//! manager, nothing else. Used by `cargo xtask image` and by the container tests, which rebuild
//! an image only when its binary changed (the image carries the binary's SHA-256 as a label).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use devicelink_spec::pod_security::{IMAGE_USER, IMAGE_USER_NAME};

use crate::{process::sh, ssh::sha256};

/// Label holding the SHA-256 of the image's first binary: with [`RECIPE_LABEL`], what says the
/// image is current.
pub const BINARY_HASH_LABEL: &str = "io.devicelink.binary-sha256";

/// Label holding [`RECIPE`].
pub const RECIPE_LABEL: &str = "io.devicelink.image-recipe";

/// Which way of assembling the images built an image: changes whenever what goes into one does,
/// so that an image made the old way is not taken as current.
pub const RECIPE: &str = "2";

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
    default_args: &["serve"],
    description: "devicelink's console: API and panel",
};

pub const IMAGES: [ImageSpec; 3] = [PROXY, OPERATOR, CONSOLE];

/// Where each binary lives inside every image.
pub const BIN_DIR: &str = "/usr/local/bin";

/// The tags an image gets: `<name>:<version>` and `<name>:<version>-<commit>`.
pub fn tags(spec: &ImageSpec, version: &str, commit: &str) -> [String; 2] {
    [
        format!("{}:{version}", spec.name),
        format!("{}:{version}-{commit}", spec.name),
    ]
}

/// The files of an image's root filesystem: (path inside the image, file on this machine).
pub fn rootfs_files(
    spec: &ImageSpec,
    release_dir: &Path,
) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut files = Vec::new();
    for binary in spec.binaries {
        let path = release_dir.join(binary);
        if !path.is_file() {
            bail!(
                "{} is not built: run `cargo build --release -p <its crate>` (`cargo xtask image` does)",
                path.display()
            );
        }
        for library in shared_libraries(&path)? {
            let entry = (library.clone(), library);
            if !files.contains(&entry) {
                files.push(entry);
            }
        }
        files.push((Path::new(BIN_DIR).join(binary), path));
    }
    Ok(files)
}

/// The absolute paths `ldd` names for `binary`: its shared libraries and the dynamic loader
/// (not the vDSO, which the kernel maps).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = sh(Command::new("ldd").arg(binary))?;
    let mut libraries = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            Some("not") => bail!("ldd {}: a library is not found: {line}", binary.display()),
            _ => {}
        }
    }
    if libraries.is_empty() {
        bail!(
            "ldd named no libraries for {}: a static binary needs no loader, but this builder expects glibc's",
            binary.display()
        );
    }
    Ok(libraries)
}

/// `/etc/passwd` of every image: root (for the proxy, which the pod runs as uid 0) and the
/// unprivileged user; neither has a shell, because there is none.
pub fn passwd() -> String {
    format!(
        "root:x:0:0:root:/root:/sbin/nologin\n{IMAGE_USER_NAME}:x:{IMAGE_USER}:{IMAGE_USER}:{IMAGE_USER_NAME}:/nonexistent:/sbin/nologin\n"
    )
}

/// `/etc/group` of every image.
pub fn group() -> String {
    format!("root:x:0:\n{IMAGE_USER_NAME}:x:{IMAGE_USER}:\n")
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

/// The size in bytes of a local image, or None when it does not exist.
pub fn image_size(reference: &str) -> Option<u64> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", reference])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Whether `reference` exists and was built from the binary now in `release_dir`, by this
/// recipe.
pub fn is_current(spec: &ImageSpec, reference: &str, release_dir: &Path) -> bool {
    let Ok(hash) = binary_hash(spec, release_dir) else {
        return false;
    };
    image_label(reference, BINARY_HASH_LABEL).is_some_and(|label| label == hash)
        && image_label(reference, RECIPE_LABEL).is_some_and(|label| label == RECIPE)
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
    for (inside, source) in rootfs_files(spec, release_dir)? {
        let target = staging.join(inside.strip_prefix("/").unwrap_or(&inside));
        fs::create_dir_all(target.parent().expect("a file inside a directory"))?;
        if inside.starts_with(BIN_DIR) {
            // Without DWARF (symbols stay, for backtraces): a debug build fits too.
            sh(Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&target)
                .arg(&source))?;
        } else {
            // Copies the file a symlink points at: the image holds the library under the name
            // the loader looks for.
            fs::copy(&source, &target)
                .with_context(|| format!("copying {} into the image", source.display()))?;
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    }
    let etc = staging.join("etc");
    fs::create_dir_all(&etc)?;
    for (name, contents) in [("passwd", passwd()), ("group", group())] {
        fs::write(etc.join(name), contents)?;
        fs::set_permissions(etc.join(name), fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
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
        let user = format!("{IMAGE_USER}:{IMAGE_USER}");
        let labels = [
            format!("org.opencontainers.image.title={}", spec.name),
            format!("org.opencontainers.image.description={}", spec.description),
            format!("org.opencontainers.image.version={version}"),
            format!("org.opencontainers.image.revision={commit}"),
            format!("{BINARY_HASH_LABEL}={hash}"),
            format!("{RECIPE_LABEL}={RECIPE}"),
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

/// Writes the image as an `oci-archive` file (for `kind load image-archive` or `ctr import`)
/// and returns its path.
pub fn write_archive(reference: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.oci.tar", reference.replace(':', "-")));
    let _ = fs::remove_file(&path);
    buildah(&[
        "push",
        "--quiet",
        reference,
        &format!("oci-archive:{}:{reference}", path.display()),
    ])?;
    Ok(path)
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
    fn the_passwd_and_group_files_name_the_unprivileged_user_with_no_shell() {
        assert!(passwd().contains("nonroot:x:65532:65532:"));
        assert!(passwd().lines().all(|l| l.ends_with("/sbin/nologin")));
        assert!(group().contains("nonroot:x:65532:"));
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
