//! `cargo xtask run`: the agent, built in release mode and run in place of xtask.

use std::{path::Path, process::Command};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `bitsecure run` (after `--`), e.g. `-- --config my.toml`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    setup::run(root)?;
    util::build_release(root, &["bitsecure"])?;
    let agent = util::target_dir(root)?.join("release/bitsecure");
    let mut command = Command::new(&agent);
    command.arg("run").args(&args.args);
    util::exec(command)
}
