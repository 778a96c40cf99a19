//! `cargo xtask <task>`: everything a developer or CI runs, in one place. Never a dependency of
//! anything that ships.
mod bench;
mod console_fuzz;
mod crd;
mod demo;
mod image;
mod kernel;
mod setup;
mod suite;
mod workspace;

use std::{path::PathBuf, process::Command};

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
    /// Set up, build, lint (the kernel crate too, with nightly) and run every test (the README's
    /// test command; CI runs it).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the demo: a link opened through the console's API on this host,
    /// and a real SSH session through it.
    Demo {
        /// Instead: a VNC session to a TigerVNC device, saving the screen it received as a PNG.
        #[arg(long)]
        vnc: bool,
        /// Where `--vnc` saves the screen.
        #[arg(long, default_value = "docs/demo-vnc.png")]
        png: PathBuf,
    },
    /// Measure devicelink against direct and its peers (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Fuzz the console's API from its OpenAPI document (schemathesis) against a running console.
    ConsoleFuzz,
    /// Build the OCI images of the proxy, the operator and the console (buildah, from scratch).
    Image {
        /// Also write each image as an OCI archive into this directory (for `kind load
        /// image-archive` or `ctr import`).
        #[arg(long)]
        archive: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => kernel::build(),
        Task::Crd => crd::regenerate(),
        Task::Test { args } => suite::run(&args),
        Task::Demo { vnc, png } => {
            setup::run()?;
            workspace::build_proxy()?;
            let proxy = workspace::proxy_binary();
            if vnc {
                demo::run_vnc(&proxy, &workspace::root().join(png))
            } else {
                workspace::run(Command::new("cargo").args([
                    "build",
                    "--release",
                    "--package",
                    "devicelink-console",
                ]))?;
                demo::run(
                    &proxy,
                    &workspace::root().join("target/release/devicelink-console"),
                )
            }
        }
        Task::ConsoleFuzz => console_fuzz::run(),
        Task::Image { archive } => {
            setup::run()?;
            image::run(archive.as_deref())
        }
        Task::Bench(args) => {
            setup::run()?;
            workspace::build_proxy()?;
            bench::run(args)
        }
    }
}
