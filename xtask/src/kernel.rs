//! The kernel crate (`devicelink-proxy-ebpf`) on its own: built and linted with the nightly
//! toolchain for `bpfel-unknown-none` with `-Z build-std=core`, as only it can be.

use std::process::Command;

use crate::{setup, workspace};

const PACKAGE: &str = "devicelink-proxy-ebpf";

/// BTF for the loader, as the proxy's build embeds the object.
const RUSTFLAGS: &str = "-Cdebuginfo=2\x1f-Clink-arg=--btf";

/// `cargo +nightly <subcommand>` for the kernel crate, with the flags it always needs.
fn cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        subcommand,
        "--package",
        PACKAGE,
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS);
    cmd
}

/// `cargo xtask build-ebpf`.
pub fn build() -> anyhow::Result<()> {
    setup::ensure_ebpf_toolchain()?;
    workspace::run(&mut cargo("build"))?;
    println!(
        "kernel object: {}",
        workspace::root()
            .join("target/bpfel-unknown-none/release/devicelink-proxy")
            .display()
    );
    Ok(())
}

/// Clippy over the kernel crate, warnings denied: the workspace's `cargo clippy` leaves it out
/// (it is not a default member; it only builds for BPF).
pub fn clippy() -> anyhow::Result<()> {
    workspace::run(cargo("clippy").args(["--", "-D", "warnings"]))
}
