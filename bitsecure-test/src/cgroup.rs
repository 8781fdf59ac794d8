//! Cgroups for the tests: where cgroup v2 is mounted, a test's own child cgroup (removed on
//! drop), and which of our programs bpftool sees attached to one.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::process::sh;

/// Where cgroup v2 is mounted (found the agent's way).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    bitsecure::kernel::cgroup::cgroup2_mount_from(&mounts).expect("cgroup v2 mounted")
}

/// A child cgroup of the cgroup v2 mount, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let path = cgroup2_mount().join(format!("bitsecure-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("create test cgroup");
        Self { path }
    }

    /// A command that runs `program` inside this cgroup.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
            .arg(&self.path)
            .arg(program);
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The cgroup can only be removed once its processes have exited.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Programs of ours attached to `cgroup`, as bpftool (an independent view) lists them.
pub fn attached_programs(cgroup: &Path) -> usize {
    let listing = sh(
        "bpftool",
        &["cgroup", "show", &cgroup.display().to_string()],
    );
    listing
        .lines()
        .filter(|line| {
            [
                "count_egress",
                "count_ingress",
                "record_owner",
                "mark_released",
                "mark_passive",
            ]
            .iter()
            .any(|name| line.contains(name))
        })
        .count()
}
