//! Running commands with clear errors.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `cargo ARGS` in the workspace. Through rustup's proxy, so `+nightly` works.
pub fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("cargo");
    command.args(args).current_dir(root);
    status(command)
}

/// Runs a command to completion, inheriting stdio; fails unless it exits 0.
pub fn status(mut command: Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails unless it exits 0.
pub fn output(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !output.status.success() {
        bail!("{shown} failed ({})", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

/// Like `output`, but a failure to start or a non-zero exit is `None`.
pub fn try_output(mut command: Command) -> Option<String> {
    let output = command.stderr(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command in place of this process (for `run` and `demo`).
pub fn exec(mut command: Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    // Replaces this process, so Ctrl-C and the exit status go straight to the program.
    let error = command.exec();
    Err(error).with_context(|| format!("cannot start {command:?}"))
}

/// One `cargo test` run: its arguments (from `test` on) and extra environment variables.
pub struct CargoTest<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
}

/// Runs the `cargo test` runs in order, passing their output through, until one fails; then
/// prints one summary line over all the test binaries they ran ("summary: N passed, N
/// failed"), so the last line tells the whole run.
pub fn cargo_tests(root: &Path, runs: &[CargoTest<'_>]) -> anyhow::Result<()> {
    let (mut passed, mut failed) = (0u64, 0u64);
    let result = runs
        .iter()
        .try_for_each(|run| cargo_test(root, run, &mut passed, &mut failed));
    println!("summary: {passed} passed, {failed} failed");
    result
}

/// Runs one `cargo test`, adding its "test result:" lines' counts to `passed` and `failed`.
fn cargo_test(
    root: &Path,
    run: &CargoTest<'_>,
    passed: &mut u64,
    failed: &mut u64,
) -> anyhow::Result<()> {
    let mut command = Command::new("cargo");
    command
        .args(run.args)
        .envs(run.env.iter().copied())
        .current_dir(root)
        .stdout(Stdio::piped());
    let shown = format!("{command:?}");
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            *passed += count_before(result, " passed");
            *failed += count_before(result, " failed");
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Builds `packages` in release mode; their binaries are in `target_dir(root)/release`.
pub fn build_release(root: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release"];
    for package in packages {
        args.extend(["--package", package]);
    }
    cargo(root, &args)
}

/// The workspace's target directory as cargo resolves it (`CARGO_TARGET_DIR`, config, or
/// `target/`).
pub fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let mut command = Command::new("cargo");
    command
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root);
    let metadata: serde_json::Value =
        serde_json::from_str(&output(command)?).context("cargo metadata printed invalid JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The number in front of `label` in a "test result:" line ("ok. 5 passed; 0 failed; ...").
fn count_before(result: &str, label: &str) -> u64 {
    result
        .split([';', '.'])
        .find_map(|part| part.trim().strip_suffix(label.trim_start()))
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_test_result_lines() {
        let line =
            "ok. 15 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.81s";
        assert_eq!(count_before(line, " passed"), 15);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
    }
}
