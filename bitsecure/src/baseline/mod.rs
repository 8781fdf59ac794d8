//! Baselines: what normal traffic looks like on this machine, learned from a recording, kept in a
//! human-readable TOML file, and compared with live traffic.
//!
//! - [`stats`]: rate statistics, cadence detection, profiles, deviation and silence (pure).
//! - [`file`]: the baseline file: parsing with clear errors, comment-preserving edits, atomic
//!   writes with a backup.
//! - [`recorder`]: learning: per-step samples per traffic class, turned into rules.
//! - [`monitor`]: comparing: expected or unexpected, deviation, cadence, silence, reference.

pub mod file;
pub mod monitor;
pub mod recorder;
pub mod service;
pub mod stats;

use crate::flow::ClassKey;

// The monitor and the recorder match traffic classes against rules.
impl ClassKey {
    /// The class as rules see it, with the name its remote is known by.
    pub fn flow<'a>(&'a self, name: Option<&'a str>) -> file::LiveFlow<'a> {
        file::LiveFlow {
            process: &self.process,
            remote: self.remote,
            name,
            port: self.port,
            protocol: self.protocol,
            app: self.app,
        }
    }
}
