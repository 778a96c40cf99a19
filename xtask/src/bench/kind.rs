//! `cargo xtask bench --kind`: filled in after the namespace bench.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("--kind is not written yet")
}
