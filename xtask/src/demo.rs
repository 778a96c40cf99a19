//! `cargo xtask demo`.
pub fn run(_proxy: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not written yet")
}
