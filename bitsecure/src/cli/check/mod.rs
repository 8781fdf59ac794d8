//! `bitsecure check`: can this host run the agent? One line per check, `OK`, `WARN` or `FAIL`,
//! and after every problem the fix (a command or a config key).
//!
//! Each check is a pure function of what it looks at (the kernel release string, the text of
//! `/proc/mounts` or `/proc/self/status`, the config, what a probe found), so all of them are
//! unit-tested without the real host; [`run`] gathers the real inputs and prints the report.

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    baseline::file::{self, BaselineError},
    config::Config,
    kernel::caps::{
        CAP_BPF, CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
    },
    kernel::cgroup::{self, CgroupError},
    kernel::programs::MINIMUM_KERNEL,
};

/// Below this release the kernel charges BPF memory to `RLIMIT_MEMLOCK` (memcg accounting
/// replaced it in 5.11).
pub const MEMCG_ACCOUNTING_KERNEL: (u32, u32) = (5, 11);

/// What loading and attaching the programs needs, short of CAP_SYS_ADMIN.
const NEEDED_CAPABILITIES: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
];

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

// ---------------------------------------------------------------------------------------------
// Config

/// The config loaded from `origin` (a description of where it came from), or why not.
pub fn check_config(origin: &str, loaded: &Result<Config, crate::config::ConfigError>) -> Check {
    match loaded {
        Ok(_) => Check::ok("config", format!("{origin}: valid")),
        Err(error) => Check::fail(
            "config",
            format!("{origin}: {error}"),
            "correct the file (`bitsecure config --default` prints every key with its meaning); \
             no other check runs without a valid config",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel

/// `(major, minor, patch)` of a kernel release such as `5.4.0-150-generic` or `6.18.44-fc`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    fn leading_number(text: &str) -> Option<u32> {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        text[..end].parse().ok()
    }
    let mut parts = release.trim().splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = leading_number(parts.next()?)?;
    let patch = parts.next().and_then(leading_number).unwrap_or(0);
    Some((major, minor, patch))
}

/// The running kernel against [`MINIMUM_KERNEL`].
pub fn check_kernel(release: &str) -> Check {
    let (major, minor) = MINIMUM_KERNEL;
    let Some((found_major, found_minor, _)) = parse_kernel_release(release) else {
        return Check::warn(
            "kernel",
            format!("cannot read a version from the kernel release {release:?}"),
            format!("make sure the kernel is Linux {major}.{minor} or newer (`uname -r`)"),
        );
    };
    if (found_major, found_minor) >= MINIMUM_KERNEL {
        Check::ok(
            "kernel",
            format!(
                "Linux {} (BitSecure needs {major}.{minor} or newer)",
                release.trim()
            ),
        )
    } else {
        Check::fail(
            "kernel",
            format!(
                "Linux {} is too old: BitSecure needs {major}.{minor} or newer \
                 (cgroup/sock_release, batched map reads)",
                release.trim()
            ),
            format!(
                "install a Linux {major}.{minor}+ kernel (e.g. the distribution's backports or \
                 HWE kernel) and reboot into it"
            ),
        )
    }
}

/// Kernel build options the agent depends on: (option, what it gives, required).
const KERNEL_OPTIONS: [(&str, &str, bool); 3] = [
    ("CONFIG_BPF_SYSCALL", "the bpf() system call", true),
    (
        "CONFIG_CGROUP_BPF",
        "eBPF programs attached to cgroups",
        true,
    ),
    (
        "CONFIG_BPF_JIT",
        "compiled eBPF (else interpreted: slower on every packet)",
        false,
    ),
];

/// The value of `option` in a kernel config text (`y`, `m`, a string...), `None` when it is
/// absent or `# ... is not set`.
pub fn kernel_config_value<'a>(text: &'a str, option: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix(option)?
            .strip_prefix('=')
            .map(|value| value.trim_matches('"'))
    })
}

/// The kernel build options, from the kernel config read from `source` (`Ok((path, text))`),
/// or a warning when none could be read (`Err(why)`).
pub fn check_kernel_config(found: &Result<(String, String), String>) -> Vec<Check> {
    const TOPIC: &str = "kernel config";
    let (source, text) = match found {
        Ok(found) => found,
        Err(why) => {
            return vec![Check::warn(
                TOPIC,
                format!(
                    "{why}: cannot confirm {}",
                    KERNEL_OPTIONS.map(|(option, ..)| option).join(", ")
                ),
                "`modprobe configs` provides /proc/config.gz on most kernels (the agent's own \
                 start will tell if BPF is missing)",
            )];
        }
    };
    KERNEL_OPTIONS
        .iter()
        .map(
            |&(option, what, required)| match kernel_config_value(text, option) {
                Some(value @ ("y" | "m")) => {
                    Check::ok(TOPIC, format!("{option}={value} ({what}; from {source})"))
                }
                other => {
                    let found = match other {
                        Some(value) => format!("{option}={value}"),
                        None => format!("{option} is not set"),
                    };
                    let message = format!("{found} in {source}: no {what}");
                    let fix = format!("boot a kernel built with {option}=y");
                    if required {
                        Check::fail(TOPIC, message, fix)
                    } else {
                        Check::warn(TOPIC, message, fix)
                    }
                }
            },
        )
        .collect()
}

/// BTF of the running kernel (`/sys/kernel/btf/vmlinux`): only nice to have.
pub fn check_btf(present: bool) -> Check {
    if present {
        Check::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::warn(
            "btf",
            "/sys/kernel/btf/vmlinux is missing: the agent does not need it (no CO-RE), but \
             tools such as `bpftool` show less without it",
            "nothing to do for BitSecure; a kernel built with CONFIG_DEBUG_INFO_BTF=y provides it",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup v2 and bpffs

/// The cgroup v2 mount and the configured `agent.cgroup`, as [`cgroup::resolve_attach_path`]
/// resolved them.
pub fn check_cgroup(configured: &str, resolved: &Result<PathBuf, CgroupError>) -> Check {
    match resolved {
        Ok(path) if configured.is_empty() => Check::ok(
            "cgroup",
            format!(
                "cgroup v2 mounted at {}: the agent watches the whole machine (agent.cgroup = \"\")",
                path.display()
            ),
        ),
        Ok(path) => Check::ok(
            "cgroup",
            format!(
                "agent.cgroup {} is a cgroup v2 directory: the agent watches its processes",
                path.display()
            ),
        ),
        Err(CgroupError::NotMounted) => Check::fail(
            "cgroup",
            "no cgroup v2 filesystem is mounted (looked in /proc/mounts)",
            "mount -t cgroup2 none /sys/fs/cgroup/unified (hybrid layout) or boot with \
             systemd.unified_cgroup_hierarchy=1",
        ),
        Err(CgroupError::NotACgroup { path, mount }) => Check::fail(
            "cgroup",
            format!(
                "agent.cgroup = {path:?} does not exist or is not a directory of the cgroup v2 \
                 mount {mount}"
            ),
            format!(
                "set agent.cgroup to a directory under {mount} (e.g. the miner's systemd slice), \
                 or to \"\" to watch the whole machine"
            ),
        ),
        Err(error @ CgroupError::Mounts(_)) => Check::fail(
            "cgroup",
            error.to_string(),
            "run `bitsecure check` where /proc is mounted (`mount -t proc proc /proc`)",
        ),
    }
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    pub fstype: String,
}

/// The mounts of a `/proc/mounts` text, in mount order.
pub fn parse_mounts(mounts: &str) -> Vec<Mount> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Mount {
                // /proc/mounts escapes spaces in paths as \040.
                target: PathBuf::from(target.replace("\\040", " ")),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// The mount `path` is on: the one with the longest mount point above it (the latest of equal
/// ones, which covers the earlier).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, mount)| path.starts_with(&mount.target))
        .max_by_key(|(index, mount)| (mount.target.components().count(), *index))
        .map(|(_, mount)| mount)
}

/// `kernel.pin_path`: its parent must be on a bpffs (from a `/proc/mounts` text); an existing
/// pin directory means state from a previous agent.
pub fn check_bpffs(mounts: &str, pin_path: &str, pin_dir_exists: bool) -> Check {
    if pin_path.is_empty() {
        return Check::ok(
            "bpffs",
            "kernel.pin_path = \"\": no pinning, no bpffs needed (counting stops while the \
             agent restarts)",
        );
    }
    let pin = Path::new(pin_path);
    let parent = pin.parent().unwrap_or(pin);
    let mounts = parse_mounts(mounts);
    match mount_of(&mounts, parent) {
        Some(mount) if mount.fstype == "bpf" => {
            let mut message = if mount.target == parent {
                format!("bpffs mounted at {}", parent.display())
            } else {
                format!(
                    "{} is on the bpffs mounted at {}",
                    parent.display(),
                    mount.target.display()
                )
            };
            message.push_str(&format!(": kernel.pin_path = {pin_path:?} works"));
            if pin_dir_exists {
                message.push_str(&format!(
                    "; {pin_path} holds pinned state from a previous agent: will be reused; \
                     `bitsecure uninstall` removes it"
                ));
            }
            Check::ok("bpffs", message)
        }
        // The agent mounts one there itself (see pinning.rs), as systemd does at boot.
        _ if parent == Path::new("/sys/fs/bpf") => Check::ok(
            "bpffs",
            format!(
                "no bpffs at /sys/fs/bpf yet: the agent mounts one there when it starts, for \
                 kernel.pin_path = {pin_path:?}"
            ),
        ),
        other => {
            let on = match other {
                Some(mount) => format!(
                    " (its filesystem is {}, mounted at {})",
                    mount.fstype,
                    mount.target.display()
                ),
                None => String::new(),
            };
            Check::fail(
                "bpffs",
                format!(
                    "kernel.pin_path = {pin_path:?} needs a bpffs, but {} is not one{on}",
                    parent.display()
                ),
                format!(
                    "mount -t bpf bpf {} (and keep it across reboots in /etc/fstab: `bpf {} bpf \
                     defaults 0 0`), or set kernel.pin_path = \"\" to run without pinning",
                    parent.display(),
                    parent.display()
                ),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges

/// CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON, or CAP_SYS_ADMIN, in a `/proc/self/status` text.
pub fn check_privileges(status: &str) -> Check {
    let grant = "run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (systemd: \
                 AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON; or `setcap \
                 cap_bpf,cap_net_admin,cap_perfmon+ep` on the bitsecure binary)";
    let Some(effective) = crate::kernel::caps::effective_from_status(status) else {
        return Check::fail(
            "privileges",
            "cannot read the effective capabilities (no CapEff in /proc/self/status)",
            grant,
        );
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    let missing: Vec<&str> = NEEDED_CAPABILITIES
        .iter()
        .filter(|&&(cap, _)| !has(cap))
        .map(|&(_, name)| name)
        .collect();
    match (missing.is_empty(), has(CAP_SYS_ADMIN)) {
        (true, true) => Check::ok(
            "privileges",
            "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN are effective",
        ),
        (true, false) => Check::ok(
            "privileges",
            "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are effective",
        ),
        (false, true) => Check::ok(
            "privileges",
            format!(
                "CAP_SYS_ADMIN is effective (stands in for {})",
                missing.join(", ")
            ),
        ),
        (false, false) => Check::fail(
            "privileges",
            format!(
                "missing {} and no CAP_SYS_ADMIN (effective set {effective:016x}): the agent \
                 cannot load or attach its programs",
                missing.join(", ")
            ),
            grant,
        ),
    }
}

/// What the poller keeps after attaching (see [`crate::kernel::caps`]): without these, sockets of
/// other users' processes that are older than the agent cannot be attributed.
pub fn check_attribution_privileges(status: &str) -> Check {
    let effective = crate::kernel::caps::effective_from_status(status).unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .iter()
    .filter(|&&(cap, _)| effective & (1 << cap) == 0)
    .map(|&(_, name)| name)
    .collect();
    if missing.is_empty() {
        Check::ok(
            "attribution",
            "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE are effective: sockets of every process can \
             be attributed",
        )
    } else {
        Check::warn(
            "attribution",
            format!(
                "missing {}: sockets that other users' processes opened before the agent \
                 started count as process=\"unknown\"",
                missing.join(", ")
            ),
            "grant CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE too (the shipped systemd unit does)",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The listen address

/// What trying to listen on `agent.listen` found.
#[derive(Debug)]
pub enum ListenProbe {
    Free,
    InUse {
        /// Who holds it: `pid 123 (nginx)`; empty when it cannot be told (not root).
        owners: Vec<String>,
        /// It answers `/metrics` with `bitsecure_build_info`.
        bitsecure_agent: bool,
    },
    Error(io::Error),
}

/// `agent.listen` is free, taken by a running agent (a warning), or unusable.
pub fn check_listen(listen: SocketAddr, probe: &ListenProbe) -> Check {
    let fix = {
        let mut other = listen;
        other.set_port(listen.port().wrapping_add(1).max(1));
        format!("change agent.listen in the config (e.g. \"{other}\")")
    };
    match probe {
        ListenProbe::Free => Check::ok("listen", format!("{listen} is free for /metrics")),
        ListenProbe::InUse {
            owners,
            bitsecure_agent,
        } => {
            let by = if owners.is_empty() {
                String::new()
            } else {
                format!(" by {}", owners.join(", "))
            };
            if *bitsecure_agent {
                Check::warn(
                    "listen",
                    format!(
                        "port {} of {listen} is in use{by}: a bitsecure agent is already running \
                         there",
                        listen.port()
                    ),
                    format!("stop that agent before starting another one, or {fix}"),
                )
            } else {
                let by = if by.is_empty() {
                    " by another program (run as root to see which)".to_owned()
                } else {
                    by
                };
                Check::fail(
                    "listen",
                    format!(
                        "port {} of {listen} is already in use{by}: the agent could not serve \
                         /metrics",
                        listen.port()
                    ),
                    fix,
                )
            }
        }
        ListenProbe::Error(error) => {
            let why = match error.kind() {
                io::ErrorKind::AddrNotAvailable => " (not an address of this host)",
                io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                _ => "",
            };
            Check::fail(
                "listen",
                format!("cannot listen on {listen}: {error}{why}"),
                fix,
            )
        }
    }
}

/// Inodes of the listening TCP sockets on `port` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// text.
pub fn listening_socket_inodes(proc_net_tcp: &str, port: u16) -> Vec<u64> {
    const TCP_LISTEN: &str = "0A";
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == TCP_LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Baseline

/// What is at `baseline.path`.
#[derive(Debug)]
pub enum BaselineState {
    /// A valid baseline.
    Valid { rules: usize },
    /// A file that does not load (unreadable, corrupt, invalid).
    Invalid(BaselineError),
    /// No file: the agent learns one and writes it, creating missing directories.
    Absent {
        /// The nearest existing directory on the way to the file.
        directory: PathBuf,
        /// The agent (this user) can write there.
        writable: bool,
    },
}

/// Looks at `path`: loads it, or finds where a learned baseline would be written.
pub fn inspect_baseline(path: &Path) -> BaselineState {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut directory = path.parent().unwrap_or(Path::new("/"));
            while !directory.exists() {
                match directory.parent() {
                    Some(parent) => directory = parent,
                    None => break,
                }
            }
            BaselineState::Absent {
                directory: directory.to_owned(),
                writable: is_writable(directory),
            }
        }
        _ => match file::load(path) {
            Ok(baseline) => BaselineState::Valid {
                rules: baseline.rules.len(),
            },
            Err(error) => BaselineState::Invalid(error),
        },
    }
}

fn is_writable(directory: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(directory.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `baseline.path`: valid, absent (learned on first start), or a problem.
pub fn check_baseline(path: &Path, learn_seconds: f64, state: &BaselineState) -> Check {
    let shown = path.display();
    match state {
        BaselineState::Valid { rules } => {
            Check::ok("baseline", format!("{shown}: valid, {rules} rules"))
        }
        BaselineState::Invalid(error) => Check::fail(
            "baseline",
            error.to_string(),
            format!(
                "correct the file where named (`bitsecure baseline show --file {shown}` checks \
                 it), or move it away to learn a new baseline"
            ),
        ),
        BaselineState::Absent { .. } if learn_seconds <= 0.0 => Check::warn(
            "baseline",
            format!(
                "{shown} is absent and baseline.learn_seconds = 0: traffic will be counted but \
                 not compared with a baseline"
            ),
            "`bitsecure baseline record --duration 30m`, or set baseline.learn_seconds \
             (e.g. 1800) to learn on the first start",
        ),
        BaselineState::Absent {
            directory,
            writable: true,
        } => Check::ok(
            "baseline",
            format!(
                "{shown} is absent: will learn for {learn_seconds:.0} s on first start, then write \
                 it{}",
                match path.parent() {
                    Some(parent) if parent != directory => {
                        format!(" (it creates {} first)", parent.display())
                    }
                    _ => String::new(),
                }
            ),
        ),
        BaselineState::Absent {
            directory,
            writable: false,
        } => Check::fail(
            "baseline",
            format!(
                "{shown} is absent and {} is not writable: the learned baseline could not be saved",
                directory.display()
            ),
            format!(
                "as root: `install -d -o <the agent's user> {}` (creates the directory or hands \
                 it over), or set baseline.path to a writable place",
                path.parent().unwrap_or(directory).display()
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// memlock

/// What the kernel maps of this configuration charge to `RLIMIT_MEMLOCK` on kernels before
/// 5.11, in bytes, estimated like the kernel's hash map accounting: buckets, preallocated
/// elements (per-CPU values for the flow map), and 1 MiB for the rest (programs, small maps).
pub fn memlock_estimate(flow_capacity: u32, socket_capacity: u32, possible_cpus: u32) -> u64 {
    const ELEMENT_HEADER: u64 = 48; // struct htab_elem, key rounded to 8 follows
    const BUCKET: u64 = 16;
    let buckets = |entries: u32| u64::from(entries.next_power_of_two()) * BUCKET;
    let key = size_of::<bitsecure_common::FlowKey>() as u64;
    let counters = size_of::<bitsecure_common::FlowCounters>() as u64;
    let owner = size_of::<bitsecure_common::SocketOwner>() as u64;
    let flows = u64::from(flow_capacity)
        * (ELEMENT_HEADER + key.next_multiple_of(8) + 8 + counters * u64::from(possible_cpus))
        + buckets(flow_capacity);
    let sockets =
        u64::from(socket_capacity) * (ELEMENT_HEADER + 8 + owner) + buckets(socket_capacity);
    flows + sockets + (1 << 20)
}

/// On kernels before 5.11, the memlock limit (`None` = unlimited) against what the maps need.
pub fn check_memlock(release: &str, memlock_limit: Option<u64>, needed: u64) -> Check {
    let (major, minor) = MEMCG_ACCOUNTING_KERNEL;
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    match parse_kernel_release(release) {
        Some((found_major, found_minor, _)) if (found_major, found_minor) >= (major, minor) => {
            Check::ok(
                "memlock",
                format!(
                    "not limiting: since {major}.{minor} BPF memory is charged to the cgroup, not \
                     RLIMIT_MEMLOCK"
                ),
            )
        }
        _ => match memlock_limit {
            None => Check::ok("memlock", "RLIMIT_MEMLOCK is unlimited"),
            Some(limit) if limit >= needed => Check::ok(
                "memlock",
                format!(
                    "RLIMIT_MEMLOCK is {} MiB, the maps need about {} MiB",
                    limit >> 20,
                    mib(needed)
                ),
            ),
            Some(limit) => Check::warn(
                "memlock",
                format!(
                    "RLIMIT_MEMLOCK is {} KiB: before Linux {major}.{minor} the kernel charges BPF \
                     maps to it, and the maps of this config need about {} MiB",
                    limit >> 10,
                    mib(needed)
                ),
                "`ulimit -l unlimited` before starting (systemd: LimitMEMLOCK=infinity), or lower \
                 kernel.flow_capacity and kernel.socket_capacity",
            ),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The report on the real host

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
        &cgroup::resolve_attach_path(&config.agent.cgroup),
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
        config.kernel.flow_capacity,
        config.kernel.socket_capacity,
        possible_cpus(),
    );
    report(check_memlock(release, memlock_limit(), needed));
}

/// `bitsecure check`: prints the report to stdout and returns the number of FAILs.
///
/// `origin` says where the config comes from, e.g. `/etc/bitsecure/bitsecure.toml (default
/// location)`.
pub fn run(config_path: Option<&Path>, origin: &str) -> usize {
    let mut stdout = io::stdout().lock();
    let (mut fails, mut warnings) = (0, 0);
    gather(config_path, origin, |check| {
        match check.status {
            Status::Ok => {}
            Status::Warn => warnings += 1,
            Status::Fail => fails += 1,
        }
        // A closed stdout is no reason to stop checking; the exit code still tells.
        let _ = writeln!(stdout, "{check}").and_then(|()| stdout.flush());
    });
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

/// The running kernel's build config: `/proc/config.gz` (decompressed by `gzip`), else
/// `/boot/config-<release>`.
fn read_kernel_config(release: &str) -> Result<(String, String), String> {
    const PROC_CONFIG: &str = "/proc/config.gz";
    let boot_config = format!("/boot/config-{release}");
    if Path::new(PROC_CONFIG).exists() {
        let output = std::process::Command::new("gzip")
            .args(["-dc", PROC_CONFIG])
            .output();
        if let Ok(output) = output
            && output.status.success()
        {
            return Ok((
                PROC_CONFIG.to_owned(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            ));
        }
    }
    match std::fs::read_to_string(&boot_config) {
        Ok(text) => Ok((boot_config, text)),
        Err(_) if Path::new(PROC_CONFIG).exists() => Err(format!(
            "cannot decompress {PROC_CONFIG} (is gzip installed?) and {boot_config} is not readable"
        )),
        Err(_) => Err(format!(
            "neither {PROC_CONFIG} nor {boot_config} is readable"
        )),
    }
}

/// Tries to listen on `listen`; when taken, who holds it and whether it is a bitsecure agent.
pub fn probe_listen(listen: SocketAddr) -> ListenProbe {
    match TcpListener::bind(listen) {
        Ok(_) => ListenProbe::Free,
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => ListenProbe::InUse {
            owners: socket_owners(listen.port()),
            bitsecure_agent: answers_as_bitsecure(listen),
        },
        Err(error) => ListenProbe::Error(error),
    }
}

/// Whether `GET /metrics` at `listen` answers with `bitsecure_build_info`, within a few seconds
/// (whatever holds the port may accept and never answer).
fn answers_as_bitsecure(listen: SocketAddr) -> bool {
    const MARKER: &[u8] = b"bitsecure_build_info";
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buffer = [0; 16 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let searched = answer.len().saturating_sub(MARKER.len());
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
        if answer[searched..]
            .windows(MARKER.len())
            .any(|window| window == MARKER)
        {
            return true;
        }
        if answer.len() > 16 << 20 {
            break;
        }
    }
    false
}

/// `pid N (comm)` of the processes holding a listening TCP socket on `port` (needs root to see
/// other users' processes).
fn socket_owners(port: u16) -> Vec<String> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| listening_socket_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let targets: Vec<String> = inodes
        .iter()
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut owners = Vec::new();
    for process in processes.flatten() {
        let name = process.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(descriptors) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = descriptors.flatten().any(|descriptor| {
            std::fs::read_link(descriptor.path())
                .is_ok_and(|target| targets.iter().any(|t| target.as_os_str() == t.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            owners.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    owners
}

/// CPUs the kernel sizes per-CPU maps for (`/sys/devices/system/cpu/possible`, e.g. `0-7`).
fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| parse_cpu_list(&text))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cpus| cpus.get() as u32))
}

/// The number of CPUs in a kernel CPU list such as `0-3,8-11` or `0`.
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((first, last)) => Some(last.parse::<u32>().ok()? + 1 - first.parse::<u32>().ok()?),
            None => range.parse::<u32>().ok().map(|_| 1),
        })
        .sum()
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` = unlimited (or unknown).
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives across the call.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_status(check: &Check, status: Status) {
        assert_eq!(check.status, status, "{check}");
    }

    fn fix(check: &Check) -> &str {
        check
            .fix
            .as_deref()
            .unwrap_or_else(|| panic!("no fix: {check}"))
    }

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

    #[test]
    fn config_errors_fail_with_the_line() {
        let loaded = Config::parse("[agent]\nlisten = 3\n", "x.toml");
        let check = check_config("x.toml (--config)", &loaded);
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("line 2"), "{check}");
        assert!(
            fix(&check).contains("bitsecure config --default"),
            "{check}"
        );
        let check = check_config("embedded default", &Config::parse("", "e"));
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("embedded default"), "{check}");
    }

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4, 0)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.10-rc1\n"), Some((5, 10, 0)));
        assert_eq!(parse_kernel_release("6.1.0+"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release(""), None);
    }

    #[test]
    fn old_kernel_fails_with_the_fix() {
        let check = check_kernel("5.4.0-150-generic");
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("5.4.0-150-generic"), "{check}");
        assert!(check.message.contains("5.10 or newer"), "{check}");
        assert!(fix(&check).contains("5.10+ kernel"), "{check}");
    }

    #[test]
    fn supported_kernels_pass() {
        for release in ["5.10.0-28-amd64", "5.15.0-91-generic", "6.18.44-fc-v669"] {
            assert_status(&check_kernel(release), Status::Ok);
        }
        assert_status(&check_kernel("5.9.16"), Status::Fail);
        assert_status(&check_kernel("4.19.0-26-amd64"), Status::Fail);
        assert_status(&check_kernel("weird"), Status::Warn);
    }

    const GOOD_KERNEL_CONFIG: &str = "\
# Automatically generated file; DO NOT EDIT.
CONFIG_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_BPF_JIT=y
CONFIG_BPF_JIT_ALWAYS_ON=y
CONFIG_CGROUP_BPF=y
";

    #[test]
    fn kernel_config_with_bpf_passes() {
        let checks =
            check_kernel_config(&Ok(("/proc/config.gz".into(), GOOD_KERNEL_CONFIG.into())));
        assert_eq!(checks.len(), 3);
        for check in &checks {
            assert_status(check, Status::Ok);
            assert!(check.message.contains("/proc/config.gz"), "{check}");
        }
        assert!(checks[0].message.starts_with("CONFIG_BPF_SYSCALL=y"));
    }

    #[test]
    fn kernel_config_without_bpf_fails_and_without_jit_warns() {
        let text = "CONFIG_BPF=y\n# CONFIG_BPF_SYSCALL is not set\n# CONFIG_BPF_JIT is not set\n";
        let checks = check_kernel_config(&Ok(("/boot/config-5.10.0".into(), text.into())));
        let statuses: Vec<Status> = checks.iter().map(|check| check.status).collect();
        assert_eq!(statuses, [Status::Fail, Status::Fail, Status::Warn]);
        assert!(checks[0].message.contains("CONFIG_BPF_SYSCALL is not set"));
        assert_eq!(
            fix(&checks[0]),
            "boot a kernel built with CONFIG_BPF_SYSCALL=y"
        );
        assert!(checks[1].message.contains("CONFIG_CGROUP_BPF is not set"));
        assert!(fix(&checks[2]).contains("CONFIG_BPF_JIT=y"));
    }

    #[test]
    fn kernel_config_prefix_of_another_option_is_not_taken_for_it() {
        // CONFIG_BPF_JIT_ALWAYS_ON must not count as CONFIG_BPF_JIT.
        assert_eq!(
            kernel_config_value("CONFIG_BPF_JIT_ALWAYS_ON=y\n", "CONFIG_BPF_JIT"),
            None
        );
        assert_eq!(
            kernel_config_value("CONFIG_LOCALVERSION=\"-fc\"\n", "CONFIG_LOCALVERSION"),
            Some("-fc")
        );
    }

    #[test]
    fn unreadable_kernel_config_only_warns() {
        let checks = check_kernel_config(&Err("neither a nor b is readable".into()));
        assert_eq!(checks.len(), 1);
        assert_status(&checks[0], Status::Warn);
        assert!(
            checks[0].message.contains("CONFIG_CGROUP_BPF"),
            "{}",
            checks[0]
        );
        assert!(fix(&checks[0]).contains("modprobe configs"));
    }

    #[test]
    fn missing_btf_only_warns() {
        assert_status(&check_btf(true), Status::Ok);
        let check = check_btf(false);
        assert_status(&check, Status::Warn);
        assert!(check.message.contains("does not need it"), "{check}");
    }

    #[test]
    fn cgroup_checks() {
        let root = check_cgroup("", &Ok(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_status(&root, Status::Ok);
        assert!(root.message.contains("/sys/fs/cgroup/unified"), "{root}");
        let slice = check_cgroup(
            "/sys/fs/cgroup/miner.slice",
            &Ok(PathBuf::from("/sys/fs/cgroup/miner.slice")),
        );
        assert_status(&slice, Status::Ok);
        assert!(slice.message.contains("miner.slice"), "{slice}");

        let unmounted = check_cgroup("", &Err(CgroupError::NotMounted));
        assert_status(&unmounted, Status::Fail);
        assert!(fix(&unmounted).contains("mount -t cgroup2"), "{unmounted}");

        let missing = check_cgroup(
            "/sys/fs/cgroup/nope.slice",
            &Err(CgroupError::NotACgroup {
                path: "/sys/fs/cgroup/nope.slice".into(),
                mount: "/sys/fs/cgroup".into(),
            }),
        );
        assert_status(&missing, Status::Fail);
        assert!(missing.message.contains("nope.slice"), "{missing}");
        assert!(fix(&missing).contains("agent.cgroup"), "{missing}");
    }

    #[test]
    fn resolving_a_cgroup_outside_cgroup2_fails() {
        // The real resolve_attach_path on whatever host runs the tests: /tmp is never a cgroup.
        let check = check_cgroup("/tmp", &cgroup::resolve_attach_path("/tmp"));
        assert_status(&check, Status::Fail);
    }

    const MOUNTS_WITH_BPFFS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0
/dev/vda / ext4 rw,relatime 0 0
";

    const MOUNTS_WITHOUT_BPFFS: &str = "\
/dev/vda / ext4 rw,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,relatime 0 0
";

    #[test]
    fn bpffs_at_the_pin_parent_passes() {
        let check = check_bpffs(MOUNTS_WITH_BPFFS, "/sys/fs/bpf/bitsecure", false);
        assert_status(&check, Status::Ok);
        assert!(!check.message.contains("previous agent"), "{check}");
        // Deeper pin directories on the same bpffs work too.
        let check = check_bpffs(MOUNTS_WITH_BPFFS, "/sys/fs/bpf/rigs/bitsecure", false);
        assert_status(&check, Status::Ok);
    }

    #[test]
    fn the_agent_mounts_the_conventional_bpffs_itself() {
        let check = check_bpffs("sysfs /sys sysfs rw 0 0\n", "/sys/fs/bpf/bitsecure", false);
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("the agent mounts one"), "{check}");
    }

    #[test]
    fn existing_pin_directory_is_reported_as_reused() {
        let check = check_bpffs(MOUNTS_WITH_BPFFS, "/sys/fs/bpf/bitsecure", true);
        assert_status(&check, Status::Ok);
        assert!(
            check.message.contains(
                "pinned state from a previous agent: will be reused; `bitsecure uninstall` \
                 removes it"
            ),
            "{check}"
        );
    }

    #[test]
    fn no_bpffs_fails_with_the_mount_command() {
        let check = check_bpffs(MOUNTS_WITHOUT_BPFFS, "/run/bitsecure/pins", false);
        assert_status(&check, Status::Fail);
        assert!(
            fix(&check).starts_with("mount -t bpf bpf /run/bitsecure "),
            "{check}"
        );
        assert!(fix(&check).contains("kernel.pin_path = \"\""), "{check}");
        // Even with a bpffs elsewhere.
        let check = check_bpffs(MOUNTS_WITH_BPFFS, "/run/bitsecure/pins", false);
        assert_status(&check, Status::Fail);
        assert!(fix(&check).starts_with("mount -t bpf bpf /run/bitsecure "));
    }

    #[test]
    fn a_later_mount_covers_an_earlier_one() {
        let mounts = format!("{MOUNTS_WITH_BPFFS}tmpfs /sys/fs/bpf/rigs tmpfs rw 0 0\n");
        let check = check_bpffs(&mounts, "/sys/fs/bpf/rigs/bitsecure", false);
        assert_status(&check, Status::Fail);
        let mounts = format!("{MOUNTS_WITHOUT_BPFFS}none /run/pins bpf rw 0 0\n");
        assert_status(
            &check_bpffs(&mounts, "/run/pins/bitsecure", false),
            Status::Ok,
        );
    }

    #[test]
    fn no_pinning_needs_no_bpffs() {
        let check = check_bpffs(MOUNTS_WITHOUT_BPFFS, "", false);
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("no pinning"), "{check}");
    }

    fn status_with_caps(caps: u64) -> String {
        format!(
            "Name:\tbitsecure\nCapInh:\t0000000000000000\nCapPrm:\t{caps:016x}\nCapEff:\t{caps:016x}\n"
        )
    }

    #[test]
    fn root_capabilities_pass() {
        let check = check_privileges(&status_with_caps(0x0000_01ff_feff_ffff));
        assert_status(&check, Status::Ok);
    }

    #[test]
    fn bpf_net_admin_perfmon_pass_without_sys_admin() {
        let caps = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        let check = check_privileges(&status_with_caps(caps));
        assert_status(&check, Status::Ok);
        assert!(!check.message.contains("SYS_ADMIN"), "{check}");
    }

    #[test]
    fn sys_admin_alone_passes() {
        let check = check_privileges(&status_with_caps(1 << CAP_SYS_ADMIN));
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("stands in for"), "{check}");
    }

    #[test]
    fn missing_bpf_and_sys_admin_fails_naming_what_is_missing() {
        let check = check_privileges(&status_with_caps((1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON)));
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("missing CAP_BPF and"), "{check}");
        assert!(
            fix(&check).starts_with("run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
            "{check}"
        );
        let unprivileged = check_privileges(&status_with_caps(0));
        assert_status(&unprivileged, Status::Fail);
        assert!(
            unprivileged
                .message
                .contains("CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
            "{unprivileged}"
        );
        assert_status(&check_privileges("Name:\tx\n"), Status::Fail);
        let check = check_attribution_privileges(&status_with_caps(1 << CAP_BPF));
        assert_status(&check, Status::Warn);
        assert!(check.message.contains("CAP_SYS_PTRACE"), "{check}");
        let both = (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE);
        assert_status(
            &check_attribution_privileges(&status_with_caps(both)),
            Status::Ok,
        );
    }

    #[test]
    fn free_port_passes() {
        let listen: SocketAddr = "127.0.0.1:9977".parse().unwrap();
        let check = check_listen(listen, &ListenProbe::Free);
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("127.0.0.1:9977"), "{check}");
    }

    #[test]
    fn port_taken_by_another_program_fails_naming_it() {
        let listen: SocketAddr = "127.0.0.1:9977".parse().unwrap();
        let probe = ListenProbe::InUse {
            owners: vec!["pid 42 (nginx)".into()],
            bitsecure_agent: false,
        };
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("port 9977"), "{check}");
        assert!(check.message.contains("pid 42 (nginx)"), "{check}");
        assert!(fix(&check).contains("agent.listen"), "{check}");
        assert!(fix(&check).contains("127.0.0.1:9978"), "{check}");
    }

    #[test]
    fn port_taken_by_a_bitsecure_agent_warns() {
        let listen: SocketAddr = "[::1]:9977".parse().unwrap();
        let probe = ListenProbe::InUse {
            owners: vec![],
            bitsecure_agent: true,
        };
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Warn);
        assert!(
            check
                .message
                .contains("a bitsecure agent is already running there"),
            "{check}"
        );
    }

    #[test]
    fn unusable_listen_address_fails() {
        let listen: SocketAddr = "192.0.2.1:9977".parse().unwrap();
        let probe = ListenProbe::Error(io::Error::from(io::ErrorKind::AddrNotAvailable));
        let check = check_listen(listen, &probe);
        assert_status(&check, Status::Fail);
        assert!(
            check.message.contains("not an address of this host"),
            "{check}"
        );
    }

    #[test]
    fn real_probe_sees_a_held_port_and_its_owner() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = held.local_addr().unwrap();
        let ListenProbe::InUse {
            owners,
            bitsecure_agent,
        } = probe_listen(listen)
        else {
            panic!("port {listen} held but not reported in use");
        };
        // The listener never answers: the probe gives up quickly.
        assert!(!bitsecure_agent);
        let me = format!("pid {} ", std::process::id());
        assert!(
            owners.iter().any(|owner| owner.starts_with(&me)),
            "{owners:?}"
        );
        drop(held);
        assert!(matches!(probe_listen(listen), ListenProbe::Free));
    }

    #[test]
    fn listening_inodes_from_proc_net_tcp() {
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:26F9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0
   1: 0100007F:26F9 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0
";
        assert_eq!(listening_socket_inodes(text, 9977), [4242]);
        assert_eq!(listening_socket_inodes(text, 22), [99]);
        assert!(listening_socket_inodes(text, 80).is_empty());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bitsecure-check-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn valid_baseline_passes() {
        let dir = scratch("valid");
        let path = dir.join("baseline.toml");
        std::fs::write(
            &path,
            "format_version = 1\n[[rule]]\nprocess = \"xmrig\"\nremote = \"10.0.0.2\"\nport = 3333\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        let check = check_baseline(&path, 1800.0, &inspect_baseline(&path));
        assert_status(&check, Status::Ok);
        assert!(check.message.contains("1 rules"), "{check}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn baseline_with_a_syntax_error_fails_naming_the_line() {
        let dir = scratch("broken");
        let path = dir.join("baseline.toml");
        std::fs::write(
            &path,
            "format_version = 1\n[[rule]]\nprocess = \"xmrig\nremote = \"10.0.0.2\"\n",
        )
        .unwrap();
        let check = check_baseline(&path, 1800.0, &inspect_baseline(&path));
        assert_status(&check, Status::Fail);
        assert!(check.message.contains("line 3"), "{check}");
        assert!(check.message.contains("baseline.toml"), "{check}");
        assert!(
            fix(&check).contains("bitsecure baseline show --file"),
            "{check}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_baseline_is_learned() {
        let dir = scratch("absent");
        let path = dir.join("baseline.toml");
        let state = inspect_baseline(&path);
        let check = check_baseline(&path, 1800.0, &state);
        assert_status(&check, Status::Ok);
        assert!(
            check
                .message
                .contains("will learn for 1800 s on first start"),
            "{check}"
        );
        // Missing directories are created by the agent: the nearest existing one counts.
        let deeper = dir.join("a/b/baseline.toml");
        let BaselineState::Absent { directory, .. } = inspect_baseline(&deeper) else {
            panic!("not absent");
        };
        assert_eq!(directory, dir);
        // Learning off: counted but not compared.
        let check = check_baseline(&path, 0.0, &state);
        assert_status(&check, Status::Warn);
        assert!(fix(&check).contains("baseline record"), "{check}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_baseline_in_a_read_only_place_fails() {
        let path = Path::new("/var/lib/bitsecure/baseline.toml");
        let state = BaselineState::Absent {
            directory: PathBuf::from("/var/lib"),
            writable: false,
        };
        let check = check_baseline(path, 1800.0, &state);
        assert_status(&check, Status::Fail);
        assert!(
            check.message.contains("/var/lib is not writable"),
            "{check}"
        );
        assert!(fix(&check).contains("baseline.path"), "{check}");
        assert!(
            fix(&check).contains("install -d -o <the agent's user> /var/lib/bitsecure"),
            "{check}"
        );
    }

    #[test]
    fn memlock_matters_only_before_5_11() {
        let needed = memlock_estimate(65536, 65536, 2);
        // ~20 MiB for the default capacities on 2 CPUs.
        assert!((16 << 20..32 << 20).contains(&needed), "{needed}");
        assert!(memlock_estimate(65536, 65536, 64) > needed);

        assert_status(
            &check_memlock("6.1.0-18-amd64", Some(64 << 10), needed),
            Status::Ok,
        );
        let low = check_memlock("5.10.0-28-amd64", Some(8 << 20), needed);
        assert_status(&low, Status::Warn);
        assert!(low.message.contains("8192 KiB"), "{low}");
        assert!(fix(&low).contains("LimitMEMLOCK=infinity"), "{low}");
        assert_status(&check_memlock("5.10.0", None, needed), Status::Ok);
        assert_status(&check_memlock("5.10.0", Some(1 << 30), needed), Status::Ok);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("x"), None);
    }
}
