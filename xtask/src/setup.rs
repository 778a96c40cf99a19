//! `cargo xtask setup`: installs what the build and the tests need on a fresh Debian machine,
//! idempotently: each step checks first and does nothing when already done.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Debian packages the tests, demo and bench use as real peers and tools.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    // (a file the package installs, the package)
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/bin/socat", "socat"),
    ("/usr/sbin/nginx", "nginx-light"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("/usr/bin/setpriv", "util-linux"),
    ("/usr/bin/python3", "python3"),
    // VNC and RDP peers: TigerVNC's Xvnc, xsetroot, xrdp, FreeRDP under Xvfb.
    ("/usr/bin/Xtigervnc", "tigervnc-standalone-server"),
    ("/usr/bin/xsetroot", "x11-xserver-utils"),
    ("/usr/sbin/xrdp", "xrdp"),
    ("/usr/bin/xfreerdp", "freerdp2-x11"),
    ("/usr/bin/Xvfb", "xvfb"),
    // The console panel's browser tests: Chromium driven over WebDriver.
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    // The container images: built with buildah, run by the image tests with podman under runc
    // (crun refuses hybrid cgroup hierarchies).
    ("/usr/bin/buildah", "buildah"),
    ("/usr/bin/podman", "podman"),
    ("/usr/sbin/runc", "runc"),
    // The benchmark chart's labels.
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

/// PyPI packages: `kubernetes-validate` checks manifests against Kubernetes' own schemas.
const PYPI_PACKAGES: &[(&str, &str)] = &[
    ("kubernetes-validate", "kubernetes-validate==1.34.1"),
    ("schemathesis", "schemathesis==4.32.5"),
];

pub fn run() -> anyhow::Result<()> {
    ensure_ebpf_toolchain()?;
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    ensure_pypi_packages()?;
    ensure_bpffs();
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_loud(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// nightly's rust-src and a bpf-linker built against nightly's own LLVM.
pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    if !quiet(Command::new("rustc").args(["+nightly", "--version"])) {
        bail!(
            "the nightly toolchain is missing; install it with `rustup toolchain install nightly`"
        );
    }
    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args(["+nightly", "--print", "sysroot"])
            .output()?
            .stdout,
    )?
    .trim()
    .to_string();
    let rust_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        println!("setup: adding rust-src to nightly");
        run_loud(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    println!("setup: building bpf-linker against nightly's LLVM (about a minute)");
    let libllvm = std::fs::read_dir(Path::new(&sysroot).join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            // The real library, not the small `libLLVM-NN-rust-*.so` linker script beside it.
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("nightly's libLLVM.so.* not found in its sysroot")?;
    let file_name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let major = file_name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let prefix = home().join(".cache/devicelink/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", file_name] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run_loud(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .or_else(|_| {
        // `--locked` can pin a dependency this toolchain cannot build; try once without.
        run_loud(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                ])
                .arg(format!("llvm-{major}"))
                .env("LLVM_PREFIX", &prefix),
        )
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Another apt run (a second setup, unattended upgrades) holds dpkg's lock for a while: wait for
/// it instead of failing at once.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";

pub fn ensure_debian_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    // A package's post-install script must not start its service on this machine.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let wrote_policy = !policy.exists();
    if wrote_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    if let Err(err) = run_loud(Command::new("apt-get").args(["-qq", "-o", APT_LOCK_WAIT, "update"]))
    {
        println!("setup: apt-get update failed ({err:#}); trying the cached package lists");
    }
    let result = run_loud(
        Command::new("apt-get")
            .args([
                "-qq",
                "-o",
                APT_LOCK_WAIT,
                "install",
                "-y",
                "--no-install-recommends",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if wrote_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn ensure_pypi_packages() -> anyhow::Result<()> {
    for (command, requirement) in PYPI_PACKAGES {
        if quiet(Command::new(command).arg("--help")) {
            continue;
        }
        println!("setup: installing {requirement} from PyPI");
        run_loud(Command::new("python3").args(["-m", "pip", "install", "-q", requirement]))?;
    }
    Ok(())
}

/// bpffs is not needed by the proxy (it pins nothing) but aya's tooling and bpftool expect it.
fn ensure_bpffs() {
    if !Path::new("/sys/fs/bpf").exists() {
        return;
    }
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"));
    if !mounted {
        let _ = quiet(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
    }
}
