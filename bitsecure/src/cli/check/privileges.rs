//! The capability checks: can this process load and attach the programs, and can the poller
//! then attribute other users' sockets? Reads the effective set from a `/proc/self/status`
//! text; never changes a capability (that is [`crate::kernel::caps`] at agent start).

use super::Check;
use crate::kernel::caps::{
    CAP_BPF, CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
};

/// What loading and attaching the programs needs, short of CAP_SYS_ADMIN.
const NEEDED_CAPABILITIES: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
];

/// What the poller keeps after attaching ([`crate::kernel::caps::POLLER_CAPABILITIES`]), by
/// name.
const ATTRIBUTION_CAPABILITIES: [(u32, &str); 2] = [
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
];

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
    let missing: Vec<&str> = ATTRIBUTION_CAPABILITIES
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

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
    fn attribution_checks_what_the_poller_keeps() {
        use crate::kernel::caps::POLLER_CAPABILITIES;
        assert_eq!(
            ATTRIBUTION_CAPABILITIES.map(|(cap, _)| cap),
            POLLER_CAPABILITIES
        );
    }
}
