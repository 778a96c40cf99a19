//! Builds the kernel programs (`devicelink-proxy-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `include_bytes_aligned!` can embed the object. `cargo xtask setup`
//! installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "devicelink-proxy-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
        .map_err(|err| anyhow!("{err:#}"))
        .context("building the kernel programs failed; `cargo xtask setup` installs nightly's rust-src and bpf-linker")
}
