//! Finding the cgroup v2 hierarchy the programs attach to.
//! Reads `/proc/mounts` only; attaching is [`super::programs`]'s job.

use std::path::{Path, PathBuf};

use super::mounts::parse_mounts;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(std::io::Error),
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/mounts); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with systemd.unified_cgroup_hierarchy=1"
    )]
    NotMounted,
    #[error(
        "cgroup path {path} does not exist or is not a directory of a cgroup v2 mount ({mount})"
    )]
    NotACgroup { path: String, mount: String },
}

/// Mount point of the cgroup v2 hierarchy, from a `/proc/mounts` text.
///
/// Modern systems mount it at /sys/fs/cgroup; hybrid layouts at /sys/fs/cgroup/unified.
pub fn cgroup2_mount_from(mounts: &str) -> Option<PathBuf> {
    parse_mounts(mounts)
        .into_iter()
        .find(|mount| mount.fstype == "cgroup2")
        .map(|mount| mount.target)
}

/// A cgroup directory's path as `/proc/PID/cgroup` writes it (`/system.slice/x.service`, `/`
/// for the root); `None` when it is not below the cgroup v2 mount.
pub fn path_in_hierarchy(dir: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let relative = dir.strip_prefix(cgroup2_mount_from(&mounts)?).ok()?;
    Some(format!("/{}", relative.display()))
}

/// The directory to attach to: `configured` if given (must be inside the cgroup v2 mount),
/// else the cgroup v2 root.
pub fn resolve_attach_path(configured: &str) -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    let mount = cgroup2_mount_from(&mounts).ok_or(CgroupError::NotMounted)?;
    if configured.is_empty() {
        return Ok(mount);
    }
    let path = Path::new(configured);
    if path.starts_with(&mount) && path.join("cgroup.procs").is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(CgroupError::NotACgroup {
            path: configured.to_owned(),
            mount: mount.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_in_hybrid_layout() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_from(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount_and_unescapes_spaces() {
        assert_eq!(
            cgroup2_mount_from("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_from("none /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn v1_only_is_none() {
        assert_eq!(
            cgroup2_mount_from("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn configured_path_outside_cgroup2_is_rejected() {
        let error = resolve_attach_path("/tmp").unwrap_err().to_string();
        assert!(error.contains("/tmp"), "{error}");
    }
}
