//! Who a process is: the name on its series, its executable (path and content hash) and its
//! systemd unit or cgroup.
//!
//! The kernel tells us the pid, the creating thread's `comm` and cgroup, and when it recorded
//! them. The pid may be reused by the time we look at /proc, so /proc is trusted only if that
//! process started before the kernel recorded the socket; otherwise the kernel's `comm` and
//! cgroup are all we know. The name is the weakest part: any process can choose its own
//! (`prctl(PR_SET_NAME)`, or a binary called `xmrig`); the executable and the cgroup the kernel
//! recorded at socket creation are what the baseline trusts.

use std::{path::Path, time::Duration};

/// A process as it appears in metrics and listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessIdentity {
    /// The `process` label: the thread-group leader's comm (kernel comm if /proc was unusable).
    pub name: String,
    /// Executable path, when /proc/PID/exe was readable.
    pub exe: Option<String>,
    /// systemd unit (e.g. `miner.service`) or, failing that, the cgroup v2 path: for people.
    pub unit: Option<String>,
    /// The cgroup v2 path (e.g. `/system.slice/miner.service`): for rules. Not the unit name
    /// alone: any user can start a `miner.service` of their own below `user@UID.service`.
    pub cgroup: Option<String>,
    /// SHA-256 of the executable's content (lowercase hex), when it could be read.
    pub sha256: Option<String>,
}

impl ProcessIdentity {
    /// A process known only by the comm the kernel captured.
    pub fn from_comm(comm: &[u8]) -> Self {
        Self {
            name: comm_to_string(comm),
            exe: None,
            unit: None,
            cgroup: None,
            sha256: None,
        }
    }

    /// Sockets whose owner could not be determined at all (e.g. kernel control sockets that
    /// send RSTs and TIME_WAIT ACKs, or a socket that closed before it could be looked up).
    pub fn unknown() -> Self {
        Self {
            name: "unknown".to_owned(),
            exe: None,
            unit: None,
            cgroup: None,
            sha256: None,
        }
    }
}

/// The kernel's NUL-padded comm as text.
pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let name = String::from_utf8_lossy(&comm[..end]).trim().to_owned();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

/// Reads the identity of `pid` from `proc_root` (normally `/proc`).
///
/// `recorded_after_boot` is when the kernel saw the process own the socket (CLOCK_BOOTTIME);
/// if the pid now belongs to a process that started later, the pid was reused and `None` is
/// returned.
pub fn read_identity(
    proc_root: &Path,
    pid: u32,
    recorded_after_boot: Option<Duration>,
) -> Option<ProcessIdentity> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    if let Some(recorded) = recorded_after_boot {
        let started = start_time_after_boot(&stat)?;
        // Clock-tick granularity: allow one tick of slack.
        if started > recorded + Duration::from_millis(10) {
            return None;
        }
    }
    let name = std::fs::read_to_string(dir.join("comm"))
        .map(|comm| comm_to_string(comm.trim_end_matches('\n').as_bytes()))
        .ok()?;
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|path| path.display().to_string());
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|text| cgroup_path(&text).map(str::to_owned));
    Some(ProcessIdentity {
        name,
        exe,
        unit: cgroup.as_deref().and_then(unit_from_cgroup_path),
        cgroup,
        sha256: None,
    })
}

/// The cgroup v2 path in `/proc/PID/cgroup` text (hybrid systems also list v1 lines).
pub fn cgroup_path(cgroup: &str) -> Option<&str> {
    cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| !path.is_empty())
}

/// Process start time from a `/proc/PID/stat` line (field 22, clock ticks since boot).
pub fn start_time_after_boot(stat: &str) -> Option<Duration> {
    // comm (field 2) may contain spaces and parentheses: fields restart after the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The systemd unit in a cgroup v2 path (`/system.slice/miner.service`), or the path itself.
pub fn unit_from_cgroup_path(path: &str) -> Option<String> {
    let unit = path
        .rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"));
    match unit {
        Some(unit) => Some(unit.to_owned()),
        None if path.is_empty() => None,
        None => Some(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_trimmed_at_nul() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"xmrig");
        assert_eq!(comm_to_string(&comm), "xmrig");
        assert_eq!(comm_to_string(&[0; 16]), "unknown");
    }

    #[test]
    fn start_time_survives_odd_comm() {
        // Field 22 is 12345 ticks; the comm contains ") (" to trip naive parsers.
        let stat = "42 (we) (ird) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let ticks = clock_ticks_per_second();
        assert_eq!(
            start_time_after_boot(stat),
            Some(Duration::from_nanos(12345 * 1_000_000_000 / ticks))
        );
        assert_eq!(start_time_after_boot("garbage"), None);
    }

    #[test]
    fn unit_prefers_systemd_service() {
        let unit = |text| cgroup_path(text).and_then(unit_from_cgroup_path);
        assert_eq!(
            cgroup_path("1:cpu:/\n0::/system.slice/miner.service\n"),
            Some("/system.slice/miner.service")
        );
        assert_eq!(
            unit("1:cpu:/\n0::/system.slice/miner.service\n").as_deref(),
            Some("miner.service")
        );
        assert_eq!(
            unit("0::/user.slice/user-0.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit("0::/custom/group\n").as_deref(), Some("/custom/group"));
        assert_eq!(unit("0::\n"), None);
        assert_eq!(unit("3:memory:/x\n"), None);
    }

    #[test]
    fn reads_own_identity_and_rejects_reused_pid() {
        let me = std::process::id();
        let identity = read_identity(Path::new("/proc"), me, None).expect("own /proc readable");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(identity.name, comm.trim_end());
        assert_eq!(
            identity.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        // A socket recorded at boot time zero cannot belong to a process that started later.
        assert_eq!(
            read_identity(Path::new("/proc"), me, Some(Duration::ZERO)),
            None
        );
    }
}
