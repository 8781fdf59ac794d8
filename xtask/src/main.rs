//! Project tasks: `cargo xtask <setup|run|test|demo|bench|dist>`.
//!
//! Everything a fresh machine needs is installed by `setup`, which every other task calls
//! first; it is idempotent and fast when there is nothing to do. This file only dispatches:
//! each task is a module of its own, with its options.

mod bench;
mod deb;
mod demo;
mod dist;
mod run;
mod setup;
mod test;
mod util;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "BitSecure project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need: nightly rust-src, bpf-linker (built against the
    /// nightly toolchain's own LLVM into .tools/), and Debian packages for the tests.
    Setup,
    /// Set up, build in release mode and run the agent (as root) with the embedded default
    /// config, or with the arguments given after `--` (e.g. `-- --config my.toml`).
    Run(run::Args),
    /// Set up, then check formatting and lints and run every test: the unit tests, then the
    /// privileged integration tests of bitsecure-test that load the real programs (needs root).
    Test(test::Args),
    /// Set up, build, and play the demo (as root): a simulated mining rig with the agent and a
    /// real Prometheus; it learns a baseline, injects anomalies and shows the alerts. Options
    /// after `--`, e.g. `-- --time-scale 60` or `-- --keep-running` (see `-- --help`).
    Demo(demo::Args),
    /// Set up, then measure the agent's overhead: throughput and packet rate with and without
    /// it, per-program run time, agent CPU and memory with 10,000 live flows.
    Bench(bench::Args),
    /// Set up, build in release mode and pack the release tarball
    /// target/dist/bitsecure-<version>-<arch>-linux-gnu.tar.gz (agent, default config, systemd
    /// unit, install.sh, Grafana and Prometheus files, docs) with a .sha256 beside it.
    Dist,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root()?;
    match Cli::parse().command {
        Command::Setup => setup::run(&root),
        Command::Run(args) => run::run(&root, &args),
        Command::Test(args) => test::run(&root, &args),
        Command::Demo(args) => demo::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Dist => dist::run(&root).map(|_| ()),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}
