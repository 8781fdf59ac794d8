//! The bpffs check: can `kernel.pin_path` be pinned to, going by the `/proc/mounts` text? Never
//! mounts a bpffs (the agent does that itself, see [`crate::kernel::pins`]) and never creates or
//! removes the pin directory.

use std::path::Path;

use super::Check;
use crate::kernel::{
    mounts::{Mount, parse_mounts},
    pins::BPFFS_HOME,
};

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
        // The agent mounts one there itself (see kernel::pins), as systemd does at boot.
        _ if parent == Path::new(BPFFS_HOME) => Check::ok(
            "bpffs",
            format!(
                "no bpffs at {BPFFS_HOME} yet: the agent mounts one there when it starts, for \
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::testing::{Status, assert_status, fix};

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
}
