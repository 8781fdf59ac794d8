//! `cargo xtask bench` (filled in below).
use std::path::Path;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_root: &Path, _args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
