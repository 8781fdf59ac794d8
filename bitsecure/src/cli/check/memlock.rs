//! The memlock check: on kernels before 5.11, is `RLIMIT_MEMLOCK` high enough for the maps
//! this config sizes? Reads the limit and the CPU count; never raises the limit.

use super::{Check, kernel::parse_kernel_release};

/// Below this release the kernel charges BPF memory to `RLIMIT_MEMLOCK` (memcg accounting
/// replaced it in 5.11).
pub const MEMCG_ACCOUNTING_KERNEL: (u32, u32) = (5, 11);

/// What the kernel maps of this configuration charge to `RLIMIT_MEMLOCK` on kernels before
/// 5.11, in bytes, estimated like the kernel's hash map accounting: buckets, preallocated
/// elements (per-CPU values for the flow maps; charged in full even without preallocation), and
/// 1 MiB for the rest (programs, small maps). `flow_capacity`: of the flow and peer maps.
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
                 kernel.flow_capacity, kernel.peer_capacity and kernel.socket_capacity",
            ),
        },
    }
}

/// CPUs the kernel sizes per-CPU maps for, counted as the poller counts them when it reads
/// the flow map's per-CPU values ([`aya::util::nr_cpus`], from
/// `/sys/devices/system/cpu/possible`).
pub(super) fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .map(|cpus| cpus as u32)
        .unwrap_or_else(|_| {
            std::thread::available_parallelism().map_or(1, |cpus| cpus.get() as u32)
        })
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` = unlimited (or unknown).
pub(super) fn memlock_limit() -> Option<u64> {
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
    use crate::cli::check::testing::{Status, assert_status, fix};

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
}
