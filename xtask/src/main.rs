//! `cargo xtask <task>`: everything a developer or CI runs, in one place. Never a dependency of
//! anything that ships.
mod bench;
mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "devicelink's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker, Debian and PyPI
    /// packages). Idempotent; seconds when already done.
    Setup,
    /// Build the kernel programs (nightly, -Z build-std=core, bpfel-unknown-none, bpf-linker).
    BuildEbpf,
    /// Regenerate deploy/crd.yaml from the Rust types.
    Crd,
    /// Set up, build, and run every test (the README's test command; CI runs it).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the demo: a real SSH session through the eBPF splice.
    Demo {
        /// Instead: a VNC session to a TigerVNC device, saving the screen it received as a PNG.
        #[arg(long)]
        vnc: bool,
        /// Where `--vnc` saves the screen.
        #[arg(long, default_value = "docs/demo-vnc.png")]
        png: PathBuf,
    },
    /// Measure devicelink against direct and its peers (see the README).
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf(),
        Task::Crd => crd(),
        Task::Test { args } => test(&args),
        Task::Demo { vnc, png } => {
            setup::run()?;
            build_proxy()?;
            if vnc {
                demo::run_vnc(&proxy_binary(), &workspace_root().join(png))
            } else {
                demo::run(&proxy_binary())
            }
        }
        Task::Bench(args) => {
            setup::run()?;
            build_proxy()?;
            bench::run(args)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn proxy_binary() -> PathBuf {
    workspace_root().join("target/release/devicelink-proxy")
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(workspace_root());
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    setup::ensure_ebpf_toolchain()?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--package",
            "devicelink-proxy-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        ))?;
    println!(
        "kernel object: {}",
        workspace_root()
            .join("target/bpfel-unknown-none/release/devicelink-proxy")
            .display()
    );
    Ok(())
}

/// Release build of the proxy (which builds and embeds the kernel programs).
pub fn build_proxy() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--package", "devicelink-proxy"]))
}

fn crd() -> anyhow::Result<()> {
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
        .current_dir(workspace_root())
        .output()
        .context("running devicelink-operator crd")?;
    if !output.status.success() {
        bail!(
            "devicelink-operator crd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = workspace_root().join("deploy/crd.yaml");
    std::fs::write(&path, &output.stdout)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    build_proxy()?;
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let mut cmd = Command::new("cargo");
    // The default members: everything but the kernel crate, which only builds for BPF.
    cmd.args(["test", "--no-fail-fast"]);
    cmd.args(args);
    // One test at a time: the network-namespace tests each run hundreds of connections and
    // real servers, and on a 2-core machine running them side by side starves the peers the
    // tests stand up (their accept loops), which is not what the tests are about.
    if !args.iter().any(|a| a == "--") {
        cmd.arg("--");
    }
    cmd.arg("--test-threads=1");
    cmd.env("DEVICELINK_PROXY_BIN", proxy_binary());
    run(&mut cmd)
}
