//! Builds the kernel programs (`devicelink-proxy-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `include_bytes_aligned!` can embed the object. `cargo xtask setup`
//! installs what this needs.
//!
//! The nested cargo runs quietly and its output is shown only when it says something: a build
//! script's lines reach every build of the proxy as `warning:`s, so relaying its progress lines
//! (as `aya_build::build_ebpf` does) buried real warnings under forty routine ones.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const PACKAGE: &str = "devicelink-proxy-ebpf";
/// The kernel crate's binary: the object `kernel.rs` embeds from `OUT_DIR`.
const OBJECT: &str = "devicelink-proxy";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let kernel_crate = manifest_dir.join("../proxy-ebpf");
    // Naming the kernel crate as a build-dependency reruns this when its library or
    // proxy-common change; its programs live in its binary, which cargo does not track there.
    println!("cargo:rerun-if-changed={}", kernel_crate.display());
    build_kernel_object(&kernel_crate).context(
        "building the kernel programs failed (the nested build's output above says why; a missing nightly, rust-src or bpf-linker is installed by `cargo xtask setup`)",
    )
}

fn build_kernel_object(kernel_crate: &Path) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let target = match env_var("CARGO_CFG_TARGET_ENDIAN")?.to_str() {
        Some("little") => "bpfel-unknown-none",
        Some("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    // aya-ebpf's helpers differ per architecture (pt_regs layouts): build for the one the
    // proxy runs on.
    let arch = env_var("CARGO_CFG_TARGET_ARCH")?;
    let arch = match arch.to_str() {
        Some(arch) if arch.starts_with("riscv64") => "riscv64".into(),
        _ => arch,
    };
    let mut rustflags = OsString::from("--cfg=bpf_target_arch=\"");
    rustflags.push(&arch);
    rustflags.push("\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf");

    // Its own target dir: the outer cargo holds the lock on ours.
    let target_dir = out_dir.join("kernel-target");
    let mut cargo = nightly("cargo");
    cargo
        .current_dir(kernel_crate)
        .args(["build", "--quiet", "--color", "never", "--release"])
        .args(["--package", PACKAGE, "--bin", OBJECT, "--target", target])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Set by the outer (stable) cargo; the nested build must use nightly's rustc.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = cargo
        .output()
        .with_context(|| format!("starting {cargo:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // A failing build script's stderr is shown in full below cargo's error.
        eprintln!("{stderr}");
        bail!("{cargo:?} failed: {}", output.status);
    }
    // Quiet, a successful build prints only what rustc warns about: pass that on.
    for line in stderr.lines().filter(|line| !line.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    let built = target_dir.join(target).join("release").join(OBJECT);
    let embedded = out_dir.join(OBJECT);
    std::fs::copy(&built, &embedded)
        .with_context(|| format!("copying {} to {}", built.display(), embedded.display()))?;
    Ok(())
}

/// `program` from the nightly toolchain (through rustup), or from PATH without rustup.
fn nightly(program: &str) -> Command {
    match which_rustup() {
        Some(rustup) => {
            let mut command = Command::new(rustup);
            command.args(["run", "nightly", program]);
            command
        }
        None => {
            println!(
                "cargo:warning=no rustup on PATH: building the kernel programs with the {program} found there, which must be a nightly one"
            );
            Command::new(program)
        }
    }
}

fn which_rustup() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("rustup"))
        .find(|path| path.is_file())
}

fn env_var(name: &str) -> anyhow::Result<OsString> {
    env::var_os(name).ok_or_else(|| anyhow!("{name} is not set (not run by cargo?)"))
}
