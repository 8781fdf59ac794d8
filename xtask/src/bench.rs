//! `cargo xtask bench`: builds the release binaries and runs the benchmark, `bitsecure-bench`
//! (bitsecure-test/src/bin/bench/), in place of xtask, with the agent's path and target/bench
//! for its config, logs and report.md.
//!
//! The measuring code lives there, not here: building it (like anything that depends on the
//! agent) needs bpf-linker, which `setup` installs, so xtask cannot depend on it. Its options
//! are repeated here, so `cargo xtask bench --help` shows them, and passed on by name.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{setup, util};

/// The options of `bitsecure-bench` (keep them the same).
#[derive(clap::Args)]
pub struct Args {
    /// Interleaved runs of each workload without and with the agent; medians are reported.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: u32,
    /// Duration of each iperf3 run, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Window over which the agent's CPU use is measured with 10,000 live flows, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    cpu_window_secs: u64,
    /// Smoke test: 1 repetition, 2 s runs and a 10 s CPU window (overrides the above).
    #[arg(long)]
    quick: bool,
    /// A git revision (e.g. HEAD~1) whose agent is built too: its programs' run times are
    /// measured alternately with this build's, in the same run, and reported side by side.
    #[arg(long, value_name = "REV")]
    compare: Option<String>,
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    setup::run(root)?;
    util::build_release(root, &["bitsecure", "bitsecure-test"])?;
    let target = util::target_dir(root)?;
    let release = target.join("release");
    let mut command = Command::new(release.join("bitsecure-bench"));
    command
        .arg("--agent")
        .arg(release.join("bitsecure"))
        .arg("--out")
        .arg(target.join("bench"))
        .args(["--repetitions", &args.repetitions.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--cpu-window-secs", &args.cpu_window_secs.to_string()]);
    if args.quick {
        command.arg("--quick");
    }
    if let Some(revision) = &args.compare {
        command
            .arg("--compare-agent")
            .arg(build_revision(root, &target.join("bench"), revision)?);
    }
    util::exec(command)
}

/// Builds the agent of git `revision` in a worktree under `bench_dir`; returns its path.
fn build_revision(root: &Path, bench_dir: &Path, revision: &str) -> anyhow::Result<PathBuf> {
    let source = bench_dir.join("compare-src");
    // A fresh checkout of the revision (the previous one, if any, goes first).
    let _ = Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(&source)
        .current_dir(root)
        .status();
    let _ = std::fs::remove_dir_all(&source);
    let mut worktree = Command::new("git");
    worktree
        .args(["worktree", "add", "--detach"])
        .arg(&source)
        .arg(revision)
        .current_dir(root);
    util::status(worktree).with_context(|| format!("cannot check out {revision}"))?;
    // Its own target directory, kept between runs; the linker from this checkout's setup.
    let target = bench_dir.join("compare-target");
    let path = std::env::join_paths(std::iter::once(root.join(".tools/bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release", "--package", "bitsecure"])
        .env("CARGO_TARGET_DIR", &target)
        .env("PATH", path)
        .current_dir(&source);
    util::status(build).with_context(|| format!("cannot build the agent of {revision}"))?;
    Ok(target.join("release/bitsecure"))
}
