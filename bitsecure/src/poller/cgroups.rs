//! Where a socket was created: the cgroup v2 id the kernel recorded at socket creation, as a
//! path (`/system.slice/miner.service`).
//!
//! A cgroup's id is the inode number of its directory in the cgroup v2 mount, so the paths are
//! found by walking the mount (and walked again when an id is not known yet, at most once a
//! second). Unlike `/proc/PID/cgroup` read later, the kernel's record cannot be changed by a
//! process that moves itself after it opened the socket.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Shortest time between two walks of the mount.
const MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Most cgroups remembered (a walk stops there).
const MAX_CGROUPS: usize = 65_536;
/// Deepest nesting walked.
const MAX_DEPTH: usize = 32;

/// cgroup ids → paths relative to the cgroup v2 mount.
#[derive(Debug)]
pub struct CgroupPaths {
    mount: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl CgroupPaths {
    /// Paths below `mount` (the cgroup v2 mount point; `None`: no ids are resolved).
    pub fn new(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            paths: HashMap::new(),
            last_walk: None,
        }
    }

    /// Paths below the cgroup v2 mount this host has.
    pub fn of_host() -> Self {
        let mount = std::fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|mounts| crate::kernel::cgroup::cgroup2_mount_from(&mounts));
        Self::new(mount)
    }

    /// The path of cgroup `id` (`/` for the root), if it exists.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let due = self
            .last_walk
            .is_none_or(|last| last.elapsed() >= MIN_RESCAN_INTERVAL);
        if !due {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(mount) = &self.mount else {
            return;
        };
        let mut paths = HashMap::new();
        let mut pending: Vec<(PathBuf, usize)> = vec![(mount.clone(), 0)];
        while let Some((dir, depth)) = pending.pop() {
            if paths.len() >= MAX_CGROUPS {
                break;
            }
            let Ok(metadata) = std::fs::metadata(&dir) else {
                continue;
            };
            paths.insert(metadata.ino(), relative_path(mount, &dir));
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    pending.push((entry.path(), depth + 1));
                }
            }
        }
        self.paths = paths;
    }
}

/// `/` plus the path of `dir` below `mount`.
fn relative_path(mount: &Path, dir: &Path) -> String {
    let relative = dir.strip_prefix(mount).unwrap_or(dir);
    format!("/{}", relative.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_paths_of_directories_by_inode() {
        let root = std::env::temp_dir().join(format!("bitsecure-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/miner.service")).unwrap();
        let inode = |path: &Path| std::fs::metadata(path).unwrap().ino();
        let mut paths = CgroupPaths::new(Some(root.clone()));
        assert_eq!(paths.path_of(inode(&root)).as_deref(), Some("/"));
        assert_eq!(
            paths
                .path_of(inode(&root.join("system.slice/miner.service")))
                .as_deref(),
            Some("/system.slice/miner.service")
        );
        // A cgroup created later is found by the next walk (walks are a second apart).
        std::fs::create_dir(root.join("late")).unwrap();
        let late = inode(&root.join("late"));
        assert_eq!(paths.path_of(late), None);
        paths.last_walk = None;
        assert_eq!(paths.path_of(late).as_deref(), Some("/late"));
        assert_eq!(paths.path_of(0), None);
        assert_eq!(CgroupPaths::new(None).path_of(late), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
