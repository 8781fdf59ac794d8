//! Least privilege after start-up. Loading and attaching the programs needs CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN); once attached, the maps are plain file
//! descriptors that need no capability. What remains needed is reading `/proc/<pid>/fd` and
//! `/proc/<pid>/exe` of other users' processes to find who owns a socket
//! ([`POLLER_CAPABILITIES`]).
//!
//! Checking that the programs are still attached, and re-attaching them, needs CAP_NET_ADMIN
//! and CAP_BPF ([`GUARD_CAPABILITIES`]); so do attaching the interface programs to interfaces
//! that appear and listing nftables' NAT chains. A thread of its own (the guard) keeps those
//! two and parses nothing that comes from the network.
//!
//! Capabilities are per thread in Linux. The agent starts the guard thread (which narrows
//! itself), narrows every set (bounding set included) to the poller's two before starting the
//! poller thread, which inherits them, and then clears the main thread's, which serves HTTP:
//! the network-facing code holds no capability at all.

use thiserror::Error;

/// Capability numbers (linux/capability.h). Loading and attaching need CAP_BPF, CAP_NET_ADMIN
/// and CAP_PERFMON, or CAP_SYS_ADMIN (see `bitsecure check`).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;
/// CAP_DAC_READ_SEARCH: list `/proc/<pid>/fd` of processes of other users.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// CAP_SYS_PTRACE: readlink `/proc/<pid>/fd/*` and `/proc/<pid>/exe` of other users' processes.
pub const CAP_SYS_PTRACE: u32 = 19;
/// What the guard thread keeps: asking the kernel which programs run on the cgroup and the
/// interfaces, and nftables for its NAT chains (CAP_NET_ADMIN), and (re-)attaching ours
/// (CAP_BPF, CAP_NET_ADMIN).
pub const GUARD_CAPABILITIES: [u32; 2] = [CAP_NET_ADMIN, CAP_BPF];
/// What the poller keeps.
pub const POLLER_CAPABILITIES: [u32; 2] = [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE];

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit words.
const VERSION_3: u32 = 0x2008_0522;

#[derive(Debug, Error)]
pub enum CapsError {
    #[error("{call} failed: {source}")]
    Syscall {
        call: &'static str,
        source: std::io::Error,
    },
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_os_error(call: &'static str) -> CapsError {
    CapsError::Syscall {
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// Narrows the calling thread to `keep`: bounding set, permitted and effective sets, and
/// clears its inheritable and ambient sets. Threads it starts afterwards inherit this.
pub fn restrict_thread_to(keep: &[u32]) -> Result<(), CapsError> {
    let last_cap = last_capability();
    for cap in 0..=last_cap {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            // EINVAL: a capability this kernel does not know. EPERM: no CAP_SETPCAP, so the
            // bounding set was already fixed by whoever started us (e.g. systemd's
            // CapabilityBoundingSet); it only matters for programs we would exec, and we exec none.
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL) => {}
                Some(libc::EPERM) => break,
                _ => return Err(last_os_error("prctl(PR_CAPBSET_DROP)")),
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(last_os_error("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    // Only what the thread holds can be kept (a service may have been started without, e.g.,
    // CAP_SYS_PTRACE): asking capset for more fails.
    let held = permitted()?;
    let mut data = [Data::default(); 2];
    for cap in keep.iter().filter(|cap| held & (1u64 << **cap) != 0) {
        let (word, bit) = ((*cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: header and data are the layout capset(2) expects for version 3 (two data words).
    let result =
        unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if result != 0 {
        return Err(last_os_error("capset"));
    }
    Ok(())
}

/// The calling thread's permitted set.
fn permitted() -> Result<u64, CapsError> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-word data buffer, the layout capget(2) fills for version 3.
    let result = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if result != 0 {
        return Err(last_os_error("capget"));
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40)
}

/// The effective set of a `/proc/<pid>/status` (or `/proc/<pid>/task/<tid>/status`) text.
pub fn effective_from_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_set_is_read_from_status() {
        let status = "Name:\tbitsecure\nCapInh:\t0000000000000000\nCapPrm:\t0000000000080004\n\
                      CapEff:\t0000000000080004\n";
        assert_eq!(
            effective_from_status(status),
            Some((1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH))
        );
        assert_eq!(effective_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn a_thread_can_narrow_itself() {
        // On a thread of its own: the narrowing must not leak into the test harness.
        std::thread::spawn(|| {
            // As root every capability is held; a plain `cargo test` as a user holds none, and
            // narrowing keeps only what was held.
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let held = effective_from_status(&status).unwrap();
            restrict_thread_to(&POLLER_CAPABILITIES).expect("narrowing a thread");
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let effective = effective_from_status(&status).unwrap();
            assert_eq!(
                effective & !((1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH)),
                0
            );
            // Without CAP_SYS_PTRACE, keeping it is not an error: it is simply not kept.
            restrict_thread_to(&[CAP_DAC_READ_SEARCH]).unwrap();
            restrict_thread_to(&POLLER_CAPABILITIES).expect("keeping what is not held");
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert_eq!(
                effective_from_status(&status),
                Some(held & (1 << CAP_DAC_READ_SEARCH))
            );
            restrict_thread_to(&[]).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert_eq!(effective_from_status(&status), Some(0));
        })
        .join()
        .unwrap();
    }
}
