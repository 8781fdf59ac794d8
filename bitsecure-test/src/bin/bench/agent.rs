//! The agent as the benchmark runs it: started from the release binary with the bench's
//! config, attached before a measurement starts, stopped with SIGTERM (on drop too). Also the
//! logged processes (agent, iperf3 servers) and waiting for what they print.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bitsecure_test::process::{run, tail};

use crate::progress;

/// Spawns `command` with stdout and stderr written to `log`.
pub fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    command
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))
}

/// Waits until `log` contains `needle`; fails with the log's tail on timeout or early exit.
pub fn wait_for_log(
    child: &mut Child,
    log: &Path,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        let exited = child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let tail = tail(&text, 20);
            let why = exited.map_or(format!("not within {timeout:?}"), |s| {
                format!("exited ({s})")
            });
            bail!(
                "no {needle:?} in {}: {why}; its tail:\n{tail}",
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running agent; stopped with SIGTERM on drop if not stopped explicitly.
pub struct Agent {
    child: Child,
    pub pid: u32,
    log: PathBuf,
}

impl Agent {
    pub fn start(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut run = Command::new(binary);
        run.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null());
        let child = spawn_logged(run, log)?;
        let mut agent = Self {
            pid: child.id(),
            child,
            log: log.to_owned(),
        };
        wait_for_log(
            &mut agent.child,
            log,
            "attached to cgroup",
            Duration::from_secs(30),
        )
        .context("the agent did not attach")?;
        progress(&format!("agent {} attached", agent.pid));
        Ok(agent)
    }

    /// Stops the agent; fails unless it exited cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("the agent exited with {status}; see {}", self.log.display());
        }
        Ok(())
    }

    /// SIGTERM, then up to 10 s to exit before SIGKILL. Returns at once if already reaped.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = run("kill", &["-TERM", &self.pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
