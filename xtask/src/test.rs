//! `cargo xtask test`: formatting, lints, a fuzzing run of the packet parsers, the unit tests,
//! then the privileged integration tests of bitsecure-test (as root, against the agent binary
//! this builds first) — ending with one summary line over all the tests. A full run (no filter)
//! then builds the release tarball and Debian package (`cargo xtask dist`) and installs both
//! under a real systemd in a container (`deploy/nspawn-check.sh`): the hardened unit with its
//! real capabilities, which the tests (as root) cannot show.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::{dist, setup, util};

/// Random cases per parser property in the fuzzing run (proptest's default is 256).
const PARSER_FUZZ_CASES: &str = "10000";

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    setup::run(root)?;
    util::cargo(root, &["fmt", "--all", "--check"])
        .context("code is not formatted: run `cargo fmt --all`")?;
    // The eBPF crate only builds for the BPF target, so it is linted on its own.
    util::cargo(
        root,
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
        root,
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
    util::cargo_tests(
        root,
        &[util::CargoTest {
            args: &["test", "--package", "bitsecure", "--lib", "naming::"],
            env: &[("PROPTEST_CASES", PARSER_FUZZ_CASES)],
        }],
    )
    .context("parser property tests (fuzzing run) failed")?;
    // The privileged tests run the agent binary, which `cargo test -p bitsecure-test` does not
    // build (it is another package's): build it in the same (dev) profile.
    util::cargo(root, &["build", "--package", "bitsecure"])?;
    // Extra arguments go to both runs (a filter may match tests in either).
    let mut extra: Vec<&str> = args.args.iter().map(String::as_str).collect();
    if !extra.is_empty() {
        extra.insert(0, "--");
    }
    let unit = [
        &[
            "test",
            "--workspace",
            "--exclude",
            "bitsecure-ebpf",
            "--exclude",
            "bitsecure-test",
        ][..],
        &extra,
    ]
    .concat();
    let privileged = [&["test", "--package", "bitsecure-test"][..], &extra].concat();
    util::cargo_tests(
        root,
        &[
            util::CargoTest {
                args: &unit,
                env: &[],
            },
            util::CargoTest {
                args: &privileged,
                env: &[],
            },
        ],
    )?;
    if args.args.is_empty() {
        let (tarball, deb) = dist::run(root)?;
        let mut check = Command::new(root.join("deploy/nspawn-check.sh"));
        check.arg(&tarball).arg(&deb);
        util::status(check).context(
            "the service does not install and run under systemd (deploy/nspawn-check.sh)",
        )?;
    }
    Ok(())
}
