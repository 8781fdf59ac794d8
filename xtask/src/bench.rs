//! `cargo xtask bench`: builds the release binaries and runs the benchmark, `bitsecure-bench`
//! (bitsecure-test/src/bin/bench/), in place of xtask, with the agent's path and target/bench
//! for its config, logs and report.md.
//!
//! The measuring code lives there, not here: building it (like anything that depends on the
//! agent) needs bpf-linker, which `setup` installs, so xtask cannot depend on it. Its options
//! are repeated here, so `cargo xtask bench --help` shows them, and passed on by name.

use std::{path::Path, process::Command};

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
    util::exec(command)
}
