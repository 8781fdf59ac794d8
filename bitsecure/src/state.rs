//! What the agent remembers across a restart when its kernel state is pinned
//! (`kernel.pin_path`): the kernel counters it has already accounted for, per flow, and the
//! totals it exported. With both, the next agent continues the counters exactly where this one
//! stopped and counts what the pinned programs saw in between — nothing lost, nothing twice.
//!
//! The file (`agent-state.json` beside the baseline) is written atomically after every poll,
//! so a `kill -9` leaves the previous or the new version, never half of one. A lock file next
//! to it keeps two agents from sharing one set of pins.
//!
//! Only the file format and its lock live here; what to save is the agent's
//! ([`crate::agent`]) and how to write it atomically [`crate::fsutil`]'s.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    flow::{SeriesKey, Traffic},
    fsutil::{self, FileKind},
};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a valid agent state file: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "another bitsecure agent is running with the same pinned state ({lock} is locked); \
         stop it first, or give this one another kernel.pin_path and baseline.path"
    )]
    Locked { lock: String },
}

/// One kernel flow as last accounted for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenFlow {
    pub cookie: u64,
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    /// Cumulative kernel counters at the last poll.
    pub counters: Traffic,
    /// The service port chosen for it.
    pub port: Option<u16>,
    /// The application class chosen for it (absent in states of agents before names).
    #[serde(default = "unknown_app")]
    pub app: String,
    /// The name the flow's remote was known by.
    #[serde(default)]
    pub name: Option<crate::flow::RemoteName>,
}

fn unknown_app() -> String {
    crate::naming::App::Unknown.as_str().to_owned()
}

/// An exported traffic series and its totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSeries {
    #[serde(flatten)]
    pub key: SeriesKey,
    pub traffic: Traffic,
    /// When it last counted traffic (Unix seconds; absent in states of agents before expiry).
    #[serde(default)]
    pub last_active: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub format_version: u32,
    /// The kernel maps only outlive the agent within one boot.
    pub boot_id: String,
    /// Id of the FLOWS map the flows below were read from.
    pub flows_map_id: u32,
    pub flows: Vec<SeenFlow>,
    /// Kernel statistics (STATS array) already exported.
    pub kernel_stats: Vec<u64>,
    pub series: Vec<SavedSeries>,
}

/// The state file and the lock that makes it this agent's.
pub struct StateFile {
    pub path: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Takes the lock beside `path` (failing if another agent holds it).
    pub fn lock(path: &Path) -> Result<Self, StateError> {
        let lock_path = path.with_extension("lock");
        let io_error = |source| StateError::Io {
            path: lock_path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_error)?;
        }
        let lock = File::create(&lock_path).map_err(io_error)?;
        // SAFETY: flock on a descriptor we own; released when the file is closed (at exit).
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StateError::Locked {
                lock: lock_path.display().to_string(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The saved state, if any.
    pub fn load(&self) -> Result<Option<AgentState>, StateError> {
        let shown = self.path.display().to_string();
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let state: AgentState =
            serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
                path: shown,
                source,
            })?;
        Ok((state.format_version == FORMAT_VERSION).then_some(state))
    }

    /// Writes `state` atomically ([`fsutil::write_atomically`], no backup: it is rewritten
    /// after every poll).
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let shown = self.path.display().to_string();
        let text = serde_json::to_vec(state).map_err(|source| StateError::Corrupt {
            path: shown.clone(),
            source,
        })?;
        fsutil::write_atomically(&self.path, &text, FileKind::AgentOwned).map_err(|error| {
            StateError::Io {
                path: shown,
                source: io::Error::new(error.source.kind(), error.to_string()),
            }
        })
    }

    /// Removes the state (`bitsecure uninstall`: the maps it refers to are gone).
    pub fn remove(path: &Path) -> io::Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// This boot's id, to tell a restart from a reboot.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Where the agent keeps its state: beside the baseline (both are the agent's own data).
pub fn path_beside(baseline: &Path) -> PathBuf {
    baseline.with_file_name("agent-state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bitsecure-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("agent-state.json")
    }

    fn example() -> AgentState {
        AgentState {
            format_version: FORMAT_VERSION,
            boot_id: "b".into(),
            flows_map_id: 7,
            flows: vec![SeenFlow {
                cookie: 42,
                remote_addr: [1; 16],
                local_port: 1,
                remote_port: 443,
                protocol: 6,
                counters: Traffic {
                    sent_bytes: 10,
                    received_bytes: 20,
                    sent_packets: 1,
                    received_packets: 2,
                },
                app: "tls".into(),
                name: Some(crate::flow::RemoteName {
                    name: "pool.example.org".into(),
                    source: crate::naming::Source::Sni,
                }),
                port: Some(443),
            }],
            kernel_stats: vec![0, 1, 2],
            series: vec![],
        }
    }

    #[test]
    fn saves_and_loads_back() {
        let path = scratch("roundtrip");
        let file = StateFile::lock(&path).unwrap();
        assert_eq!(file.load().unwrap(), None);
        file.save(&example()).unwrap();
        assert_eq!(file.load().unwrap(), Some(example()));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_second_agent_is_refused_while_the_first_holds_the_lock() {
        let path = scratch("lock");
        let first = StateFile::lock(&path).unwrap();
        let error = StateFile::lock(&path).err().expect("locked");
        assert!(
            error.to_string().contains("another bitsecure agent"),
            "{error}"
        );
        drop(first);
        StateFile::lock(&path).expect("free again");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_panic() {
        let path = scratch("corrupt");
        fs::write(&path, b"{\"format_version\": 1, \"boot").unwrap();
        let file = StateFile::lock(&path).unwrap();
        assert!(matches!(file.load(), Err(StateError::Corrupt { .. })));
    }
}
