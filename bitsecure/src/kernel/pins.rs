//! Kernel state that outlives the agent. With `kernel.pin_path` set, the maps and the program
//! links are pinned in bpffs: the programs stay attached and keep counting while the agent
//! restarts, and the next agent picks the same maps up. `bitsecure uninstall` removes the pins,
//! which detaches the programs and frees the maps.
//!
//! Layout of the pin directory: one file per map (`FLOWS`, `PEERS`, `SOCKETS`, `STATS`, `EVENTS`) and one per
//! link, `link-<program>-<cgroup inode>`, so links of another cgroup are recognised as stale.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use thiserror::Error;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "kernel.pin_path {path}: {parent} is not a bpf filesystem; mount one with \
         `mount -t bpf bpf /sys/fs/bpf`, or set kernel.pin_path = \"\" to run without pinning"
    )]
    NotBpffs { path: String, parent: String },
    #[error("kernel.pin_path {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// What a map must look like to be reused.
pub struct MapShape {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `map_flags` (e.g. `BPF_F_NO_PREALLOC`).
    pub flags: u32,
}

/// What was found in the pin directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned: a first start (or after `bitsecure uninstall`).
    Nothing,
    /// Maps of the right shape: the previous agent's counters are picked up.
    Reusable,
    /// Pins that do not fit (another agent version, changed capacities): removed.
    Discarded(String),
}

pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    /// Checks that `path` is (or can be created) on a bpffs, creates it, and sorts out what a
    /// previous agent left: reusable maps, or stale pins that are removed.
    pub fn open(path: &Path, maps: &[MapShape]) -> Result<(Self, Found), PinError> {
        let shown = path.display().to_string();
        let io_error = |source| PinError::Io {
            path: shown.clone(),
            source,
        };
        let existing = if path.exists() {
            path
        } else {
            path.parent().unwrap_or(path)
        };
        if !is_bpffs(existing) && existing == Path::new(BPFFS_HOME) && mount_bpffs() {
            // Systems booted by systemd have it; others (containers, minimal hosts) may not.
            log::info!("mounted a bpf filesystem at {BPFFS_HOME} for the pins");
        }
        if !is_bpffs(existing) {
            return Err(PinError::NotBpffs {
                path: shown,
                parent: existing.display().to_string(),
            });
        }
        fs::create_dir_all(path).map_err(io_error)?;
        let dir = Self {
            path: path.to_owned(),
        };
        let pinned: Vec<&MapShape> = maps
            .iter()
            .filter(|shape| dir.map(shape.name).exists())
            .collect();
        if pinned.is_empty() {
            // Links without maps cannot be reused either.
            dir.remove_links(|_| true).map_err(io_error)?;
            return Ok((dir, Found::Nothing));
        }
        let problem = if pinned.len() != maps.len() {
            Some("some maps are missing".to_owned())
        } else {
            maps.iter().find_map(|shape| dir.misfit(shape))
        };
        match problem {
            None => Ok((dir, Found::Reusable)),
            Some(problem) => {
                dir.remove_all_pins().map_err(io_error)?;
                Ok((dir, Found::Discarded(problem)))
            }
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where the link of `program` attached to `cgroup` is pinned.
    pub fn link(&self, program: &str, cgroup: &Path) -> io::Result<PathBuf> {
        let inode = fs::metadata(cgroup)?.ino();
        Ok(self.path.join(format!("link-{program}-{inode}")))
    }

    /// Removes the links pinned for other cgroups than `keep` (e.g. after the config changed).
    pub fn remove_links(&self, mut stale: impl FnMut(&Path) -> bool) -> io::Result<()> {
        for entry in fs::read_dir(&self.path)? {
            let path = entry?.path();
            let is_link = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("link-"));
            if is_link && stale(&path) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Removes every pin: the programs detach, the maps go once no one holds them.
    pub fn remove_all_pins(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.path)? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    fn misfit(&self, shape: &MapShape) -> Option<String> {
        let info = match MapInfo::from_pin(self.map(shape.name)) {
            Ok(info) => info,
            Err(error) => return Some(format!("map {} unreadable: {error}", shape.name)),
        };
        let found = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let wanted = (
            shape.key_size,
            shape.value_size,
            shape.max_entries,
            shape.flags,
        );
        (found != wanted).then(|| {
            format!(
                "map {} has (key, value, capacity, flags) {found:?}, this agent needs {wanted:?}",
                shape.name
            )
        })
    }
}

/// Removes the pin directory and everything in it (`bitsecure uninstall`). Returns whether
/// there was anything.
pub fn remove(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let dir = PinDir {
        path: path.to_owned(),
    };
    dir.remove_all_pins()?;
    fs::remove_dir(path)?;
    Ok(true)
}

/// Where bpffs lives by convention; the agent mounts one here when none is.
pub const BPFFS_HOME: &str = "/sys/fs/bpf";

/// `mount -t bpf bpf /sys/fs/bpf`.
fn mount_bpffs() -> bool {
    let (source, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: NUL-terminated constant strings; no data argument.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    result == 0
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statfs buffer we own.
    let result = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    result == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("bitsecure-pin-test-{}", std::process::id()));
        let error = PinDir::open(&dir.join("pins"), &[])
            .err()
            .expect("tmp is not a bpffs");
        let text = error.to_string();
        assert!(text.contains("not a bpf filesystem"), "{text}");
        assert!(text.contains("mount -t bpf bpf /sys/fs/bpf"), "{text}");
        assert!(!dir.join("pins").exists(), "nothing created outside bpffs");
    }
}
