//! The cgroup v2 check: is cgroup v2 mounted, and is `agent.cgroup` a directory of it? Judges
//! what [`resolve_attach_path`](crate::kernel::cgroup::resolve_attach_path) (the agent's own
//! resolution) found; attaches nothing and creates no cgroup.

use std::path::PathBuf;

use super::Check;
use crate::kernel::cgroup::CgroupError;

/// The cgroup v2 mount and the configured `agent.cgroup`, as
/// [`crate::kernel::cgroup::resolve_attach_path`] resolved them.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};
    use crate::kernel::cgroup;

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
}
