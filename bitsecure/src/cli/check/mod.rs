//! `bitsecure check`: can this host run the agent? One line per check, `OK`, `WARN` or `FAIL`,
//! and after every problem the fix (a command or a config key).
//!
//! Each check is a pure function of what it looks at (the kernel release string, the text of
//! `/proc/mounts` or `/proc/self/status`, the config, what a probe found), so all of them are
//! unit-tested without the real host; [`run`] gathers the real inputs and prints the report.
//!
//! One file per section of the report, in its order: [`config`], [`kernel`] (release, build
//! options, BTF), [`cgroup`], [`bpffs`], [`privileges`] (and attribution), [`listen`],
//! [`baseline`], [`memlock`]. Each holds its checks, its tests, and the probes that take more
//! than reading a file (the kernel config, the listen port, the baseline's directory, the
//! memlock limit). This file holds the report line ([`Check`]), the order of the checks and the
//! reading of their plain inputs ([`gather`]), and the printing ([`run`]). No check changes the
//! host: they read, probe and report.

pub mod baseline;
pub mod bpffs;
pub mod cgroup;
pub mod config;
pub mod kernel;
pub mod listen;
pub mod memlock;
pub mod privileges;

use std::{
    fmt,
    io::{self, Write as _},
    path::Path,
};

use self::{
    baseline::{check_baseline, inspect_baseline},
    bpffs::check_bpffs,
    cgroup::check_cgroup,
    config::check_config,
    kernel::{check_btf, check_kernel, check_kernel_config, read_kernel_config},
    listen::{check_listen, probe_listen},
    memlock::{check_memlock, memlock_estimate, memlock_limit, possible_cpus},
    privileges::{check_attribution_privileges, check_privileges},
};
use crate::config::Config;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report, and for a problem, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked: `kernel`, `bpffs`, `listen`...
    pub topic: &'static str,
    pub message: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(topic: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            topic,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warn(topic: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            topic,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(topic: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            topic,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Width of the topic column.
const TOPIC_WIDTH: usize = 13;

impl fmt::Display for Check {
    /// `OK    kernel        Linux 6.1.0 ...`, and for a problem a last line `fix: ...` under
    /// the message. Further lines of a message (a TOML error's excerpt) are indented as much.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const INDENT: usize = 4 + 2 + TOPIC_WIDTH + 1;
        write!(f, "{:<4}  {:<TOPIC_WIDTH$} ", self.status, self.topic)?;
        for (index, line) in self.message.trim_end().lines().enumerate() {
            match (index, line.is_empty()) {
                (0, _) => write!(f, "{line}")?,
                (_, true) => writeln!(f)?,
                (_, false) => write!(f, "\n{:INDENT$}{line}", "")?,
            }
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n{:INDENT$}fix: {fix}", "")?;
        }
        Ok(())
    }
}

/// The checks in order, with the real inputs of this host. Stops after the config when it does
/// not load (everything else depends on it).
pub fn gather(config_path: Option<&Path>, origin: &str, mut report: impl FnMut(Check)) {
    let loaded = Config::load(config_path);
    report(check_config(origin, &loaded));
    let Ok(config) = loaded else {
        return;
    };

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease");
    let release = release.as_deref().map(str::trim);
    match release {
        Ok(release) => report(check_kernel(release)),
        Err(error) => report(Check::warn(
            "kernel",
            format!("cannot read /proc/sys/kernel/osrelease: {error}"),
            "make sure /proc is mounted (`mount -t proc proc /proc`)",
        )),
    }
    let release = release.unwrap_or_default();
    check_kernel_config(&read_kernel_config(release))
        .into_iter()
        .for_each(&mut report);
    report(check_btf(Path::new("/sys/kernel/btf/vmlinux").exists()));

    report(check_cgroup(
        &config.agent.cgroup,
        &crate::kernel::cgroup::resolve_attach_path(&config.agent.cgroup),
    ));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let pin_path = &config.kernel.pin_path;
    report(check_bpffs(
        &mounts,
        pin_path,
        !pin_path.is_empty() && Path::new(pin_path).is_dir(),
    ));

    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    report(check_privileges(&status));
    report(check_attribution_privileges(&status));

    report(check_listen(
        config.agent.listen,
        &probe_listen(config.agent.listen),
    ));

    report(check_baseline(
        &config.baseline.path,
        config.baseline.learn_seconds,
        &inspect_baseline(&config.baseline.path),
    ));

    let needed = memlock_estimate(
        // The flow and peer maps have the same elements.
        config.kernel.flow_capacity + config.kernel.peer_capacity,
        config.kernel.socket_capacity,
        possible_cpus(),
    );
    report(check_memlock(release, memlock_limit(), needed));
}

/// `bitsecure check`: prints the report to stdout (as it goes; with `json`, one JSON document
/// at the end) and returns the number of FAILs.
///
/// `origin` says where the config comes from, e.g. `/etc/bitsecure/bitsecure.toml (default
/// location)`.
pub fn run(config_path: Option<&Path>, origin: &str, json: bool) -> usize {
    let mut stdout = io::stdout().lock();
    let (mut fails, mut warnings) = (0, 0);
    let mut checks = Vec::new();
    gather(config_path, origin, |check| {
        match check.status {
            Status::Ok => {}
            Status::Warn => warnings += 1,
            Status::Fail => fails += 1,
        }
        if json {
            checks.push(serde_json::json!({
                "status": check.status.to_string(),
                "topic": check.topic,
                "message": check.message,
                "fix": check.fix,
            }));
        } else {
            // A closed stdout is no reason to stop checking; the exit code still tells.
            let _ = writeln!(stdout, "{check}").and_then(|()| stdout.flush());
        }
    });
    if json {
        let report = serde_json::json!({
            "checks": checks,
            "failures": fails,
            "warnings": warnings,
        });
        let _ = writeln!(stdout, "{report:#}");
        return fails;
    }
    let summary = match (fails, warnings) {
        (0, 0) => "all checks passed: the agent can run here".to_owned(),
        (0, warnings) => {
            format!("no failures, {warnings} warning(s): the agent can run here")
        }
        (fails, warnings) => format!(
            "{fails} failure(s), {warnings} warning(s): fix the FAIL lines before starting the agent"
        ),
    };
    let _ = writeln!(stdout, "{summary}");
    fails
}

/// What the tests of every section share (`use crate::cli::check::testing::{...}`).
#[cfg(test)]
mod testing {
    use super::Check;
    pub use super::Status;

    pub fn assert_status(check: &Check, status: Status) {
        assert_eq!(check.status, status, "{check}");
    }

    pub fn fix(check: &Check) -> &str {
        check
            .fix
            .as_deref()
            .unwrap_or_else(|| panic!("no fix: {check}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_topic_message_and_the_fix_below() {
        let check = Check::fail("bpffs", "not mounted", "mount it");
        assert_eq!(
            check.to_string(),
            "FAIL  bpffs         not mounted\n                    fix: mount it"
        );
        assert_eq!(
            Check::ok("kernel", "fine").to_string(),
            "OK    kernel        fine"
        );
    }

    #[test]
    fn further_message_lines_are_indented_under_the_first() {
        let check = Check::fail(
            "config",
            "bad:\n  |\n3 | x = 1\n\nunknown field\n",
            "fix it",
        );
        let indent = " ".repeat(20);
        assert_eq!(
            check.to_string(),
            format!(
                "FAIL  config        bad:\n{indent}  |\n{indent}3 | x = 1\n\n\
                 {indent}unknown field\n{indent}fix: fix it"
            )
        );
    }
}
