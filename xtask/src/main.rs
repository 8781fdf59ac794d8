//! Project tasks: `cargo xtask <setup|run|test|demo|bench|dist>`.
//!
//! Everything a fresh machine needs is installed by `setup`, which `run`, `test` and `bench`
//! call first; it is idempotent and fast when there is nothing to do.

mod bench;
mod dist;
mod setup;
mod util;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Random cases per parser property in the fuzzing run of `cargo xtask test` (proptest's
/// default is 256).
const PARSER_FUZZ_CASES: &str = "10000";

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
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting and lints and run every test, including the privileged
    /// integration tests that load the real programs (needs root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and play the demo (as root): a simulated mining rig with the agent and a
    /// real Prometheus; it learns a baseline, injects anomalies and shows the alerts. Options
    /// after `--`, e.g. `-- --time-scale 60` or `-- --keep-running` (see `-- --help`).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then measure the agent's overhead: throughput and packet rate with and without
    /// it, per-program run time, agent CPU and memory with 10,000 live flows.
    Bench(bench::BenchArgs),
    /// Set up, build in release mode and pack the release tarball
    /// target/dist/bitsecure-<version>-<arch>-linux-gnu.tar.gz (agent, default config, systemd
    /// unit, install.sh, Grafana and Prometheus files, docs) with a .sha256 beside it.
    Dist,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root()?;
    match Cli::parse().command {
        Command::Setup => setup::run(&root),
        Command::Run { args } => {
            setup::run(&root)?;
            util::cargo(&root, &["build", "--release", "--package", "bitsecure"])?;
            let agent = root.join("target/release/bitsecure");
            let mut command = std::process::Command::new(&agent);
            command.arg("run").args(&args);
            util::exec(command)
        }
        Command::Test { args } => {
            setup::run(&root)?;
            util::cargo(&root, &["fmt", "--all", "--check"])
                .context("code is not formatted: run `cargo fmt --all`")?;
            // The eBPF crate only builds for the BPF target, so it is linted on its own.
            util::cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "bitsecure-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            util::cargo(
                &root,
                &[
                    "+nightly",
                    "clippy",
                    "--package",
                    "bitsecure-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            // The parsers of hostile packet bytes (DNS, TLS, HTTP, app classes) get a bounded
            // fuzzing run: their property tests with 40x the usual random cases (~30 s).
            util::cargo_test_with_env(
                &root,
                &["test", "--package", "bitsecure", "--lib", "naming::"],
                &[("PROPTEST_CASES", PARSER_FUZZ_CASES)],
            )
            .context("parser property tests (fuzzing run) failed")?;
            let mut test = vec!["test", "--workspace", "--exclude", "bitsecure-ebpf"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            util::cargo_test(&root, &test)
        }
        Command::Demo { args } => {
            setup::run(&root)?;
            util::cargo(&root, &["build", "--release", "--package", "bitsecure"])?;
            let release = root.join("target/release");
            let mut command = std::process::Command::new(release.join("bitsecure-rig"));
            command
                .arg("demo")
                .arg("--agent")
                .arg(release.join("bitsecure"))
                .args(&args);
            util::exec(command)
        }
        Command::Bench(args) => {
            setup::run(&root)?;
            bench::run(&root, &args)
        }
        Command::Dist => {
            setup::run(&root)?;
            dist::run(&root)
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}
