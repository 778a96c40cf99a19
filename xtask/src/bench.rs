//! `cargo xtask bench`: filled in by the benchmark work.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("the benchmark is not written yet")
}
