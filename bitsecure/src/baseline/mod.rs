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

pub mod file;
pub mod matching;
pub mod model;
pub mod monitor;
pub mod recorder;
pub mod service;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_support;

use std::net::IpAddr;

use crate::{flow::FlowDelta, naming::App};

/// A traffic class as the monitor sees it: what the unexpected list is keyed by. The remote's
/// name is not part of it (it comes and goes with DNS answers and TTLs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassKey {
    pub process: String,
    /// Canonical address (IPv4-mapped IPv6 as IPv4).
    pub remote: IpAddr,
    pub port: Option<u16>,
    /// IP protocol number.
    pub protocol: u8,
    pub app: App,
}

impl ClassKey {
    pub fn of(delta: &FlowDelta) -> Self {
        Self {
            process: delta.process.clone(),
            remote: delta.remote.to_canonical(),
            port: delta.port,
            protocol: delta.protocol,
            app: delta.app,
        }
    }

    /// The class as rules see it, with the name its remote is known by.
    pub fn flow<'a>(&'a self, name: Option<&'a str>) -> matching::LiveFlow<'a> {
        matching::LiveFlow {
            process: &self.process,
            remote: self.remote,
            name,
            port: self.port,
            protocol: self.protocol,
            app: self.app,
        }
    }
}
