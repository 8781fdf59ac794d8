//! Baselines: what normal traffic looks like on this machine, learned from a recording, kept in a
//! human-readable TOML file, and compared with live traffic.
//!
//! - [`model`]: the data: a baseline, its recording, its rules and what normal looked like.
//! - [`matching`]: live traffic against rules: remotes (addresses, networks, names), identity.
//! - [`stats`]: rate statistics, cadence detection, profiles, deviation and silence (pure).
//! - [`file`](mod@file): the baseline file: parsing with clear errors, comment-preserving
//!   edits, atomic writes with a backup, `show` and `diff`.
//! - [`recorder`]: learning: per-step samples per traffic class, turned into rules.
//! - [`monitor`]: comparing: expected or unexpected, deviation, cadence, silence, reference.
//! - [`risk`]: why a departure is one, and how much it matters (what pages).
//! - [`settle`]: after learning, low-risk newcomers join the baseline until the rig is quiet.

pub mod dns_watch;
pub mod file;
pub mod matching;
pub mod model;
pub mod monitor;
pub mod recorder;
pub mod risk;
pub mod service;
pub mod settle;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_support;

use crate::flow::ClassKey;

// The monitor and the recorder match traffic classes against rules.
impl ClassKey {
    /// The class as rules see it, with the name its remote is known by and its process's
    /// executable and cgroup.
    pub fn flow<'a>(
        &'a self,
        name: Option<&'a str>,
        exe: Option<&'a str>,
        cgroup: Option<&'a str>,
    ) -> matching::LiveFlow<'a> {
        matching::LiveFlow {
            process: &self.process,
            exe,
            cgroup,
            remote: self.remote,
            name,
            port: self.port,
            protocol: self.protocol,
            app: self.app,
        }
    }
}
