//! `cargo xtask demo`: the simulated rig (`bitsecure-rig demo`, or with `--day` its quiet day
//! `bitsecure-rig day`, from bitsecure-test) with the release agent, run in place of xtask.

use std::{path::Path, process::Command};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Play the quiet day instead: a time-compressed day of rare-but-normal life that must
    /// page nobody, then two attacks that must (`bitsecure-rig day`).
    #[arg(long)]
    day: bool,
    /// Options of `bitsecure-rig demo` (after `--`), e.g. `-- --time-scale 60`; `-- --help`
    /// lists them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    setup::run(root)?;
    util::build_release(root, &["bitsecure", "bitsecure-test"])?;
    let release = util::target_dir(root)?.join("release");
    let mut command = Command::new(release.join("bitsecure-rig"));
    command
        .arg(if args.day { "day" } else { "demo" })
        .arg("--agent")
        .arg(release.join("bitsecure"))
        .args(&args.args);
    util::exec(command)
}
