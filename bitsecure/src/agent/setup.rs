//! Setting the agent up: loading and attaching the programs, the pinned kernel state and the
//! agent state file, and continuing a previous agent's counters. Runs once, before the loop.

use std::path::Path;

use log::{info, warn};

use crate::{
    config::Config,
    export::metrics::Metrics,
    kernel::{
        self, AttachedPrograms, KernelLogger, MapCapacities,
        pins::{Found, MapShape, PinDir},
    },
    naming::Naming,
    poller::Poller,
    state::{self, AgentState, SavedSeries, StateError, StateFile},
};
use bitsecure_common::{FLOW_MAP_FLAGS, FlowCounters, FlowKey, SocketOwner, Stat, map_names};

/// Pinned kernel state and the agent's own state file (with `kernel.pin_path`).
pub struct Persistence {
    pub pins: PinDir,
    pub found: Found,
    pub state: StateFile,
}

pub fn open_persistence(config: &Config) -> anyhow::Result<Option<Persistence>> {
    if config.kernel.pin_path.is_empty() {
        return Ok(None);
    }
    let state = StateFile::lock(&state::path_beside(&config.baseline.path))?;
    let shapes = [
        MapShape {
            name: map_names::FLOWS,
            key_size: size_of::<FlowKey>() as u32,
            value_size: size_of::<FlowCounters>() as u32,
            max_entries: config.kernel.flow_capacity,
            flags: FLOW_MAP_FLAGS,
        },
        MapShape {
            name: map_names::PEERS,
            key_size: size_of::<FlowKey>() as u32,
            value_size: size_of::<FlowCounters>() as u32,
            max_entries: config.kernel.peer_capacity,
            flags: FLOW_MAP_FLAGS,
        },
        MapShape {
            name: map_names::SOCKETS,
            key_size: size_of::<u64>() as u32,
            value_size: size_of::<SocketOwner>() as u32,
            max_entries: config.kernel.socket_capacity,
            flags: 0,
        },
        MapShape {
            name: map_names::STATS,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u64>() as u32,
            max_entries: Stat::COUNT,
            flags: 0,
        },
        // A ring buffer has no keys or values; its size is its capacity.
        MapShape {
            name: map_names::EVENTS,
            key_size: 0,
            value_size: 0,
            max_entries: config.names.ring_buffer_bytes,
            flags: 0,
        },
        MapShape {
            name: map_names::SOCKET_EVENTS,
            key_size: 0,
            value_size: 0,
            max_entries: bitsecure_common::SOCKET_EVENT_BUFFER_BYTES,
            flags: 0,
        },
    ];
    let (pins, found) = PinDir::open(Path::new(&config.kernel.pin_path), &shapes)?;
    match &found {
        Found::Nothing => info!("pinning the kernel state in {}", config.kernel.pin_path),
        Found::Reusable => info!(
            "picking up the kernel state pinned in {} by the previous agent",
            config.kernel.pin_path
        ),
        Found::Discarded(why) => warn!(
            "discarded the kernel state pinned in {} by another agent version or config \
             ({why}); starting with fresh maps",
            config.kernel.pin_path
        ),
    }
    Ok(Some(Persistence { pins, found, state }))
}

/// Continues where the previous agent stopped: its exported totals always, and its per-flow
/// accounting when the maps are the very ones it read.
fn resume(persistence: &Persistence, poller: &mut Poller, metrics: &Metrics) {
    let saved = match persistence.state.load() {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(error) => {
            warn!("{error}; the counters start from zero");
            return;
        }
    };
    // A state from before series expiry has no activity times: its series count as active now.
    let now = super::unix_now() as u64;
    for series in &saved.series {
        let last_active = series.last_active.unwrap_or(now);
        metrics
            .traffic
            .restore(&series.key, &series.traffic, last_active);
    }
    let same_maps = persistence.found == Found::Reusable
        && saved.boot_id == state::boot_id()
        && Some(saved.flows_map_id) == poller.flows_map_id();
    if same_maps {
        poller.resume(&saved.flows, &saved.kernel_stats);
        info!(
            "continuing the previous agent's counters: {} series, {} live flows",
            saved.series.len(),
            saved.flows.len()
        );
    } else {
        info!(
            "continuing the previous agent's totals ({} series); the kernel maps are new",
            saved.series.len()
        );
    }
}

/// Saves what the agent has accounted for after every poll.
pub struct StateSaver {
    file: StateFile,
    boot_id: String,
    flows_map_id: Option<u32>,
}

impl StateSaver {
    pub fn new(persistence: Persistence, poller: &Poller) -> Self {
        Self {
            file: persistence.state,
            boot_id: state::boot_id(),
            flows_map_id: poller.flows_map_id(),
        }
    }

    pub fn save(&self, poller: &Poller, metrics: &Metrics) -> Result<(), StateError> {
        let (flows, kernel_stats) = poller.accounted();
        let state = AgentState {
            format_version: state::FORMAT_VERSION,
            boot_id: self.boot_id.clone(),
            flows_map_id: self.flows_map_id.unwrap_or(0),
            flows,
            kernel_stats,
            series: metrics
                .traffic
                .snapshot()
                .into_iter()
                .map(|(key, traffic, last_active)| SavedSeries {
                    key,
                    traffic,
                    last_active: Some(last_active),
                })
                .collect(),
        };
        self.file.save(&state)
    }
}

/// Loads and attaches the programs and builds the poller around their maps.
pub fn attach(
    config: &Config,
    cgroup: &Path,
    metrics: &Metrics,
    persistence: Option<&Persistence>,
) -> anyhow::Result<(AttachedPrograms, Poller, KernelLogger)> {
    let capacities = MapCapacities {
        flows: config.kernel.flow_capacity,
        peers: config.kernel.peer_capacity,
        sockets: config.kernel.socket_capacity,
        event_bytes: config.names.ring_buffer_bytes,
    };
    if !config.agent.cgroup.is_empty() && !config.kernel.interfaces.is_empty() {
        info!(
            "only cgroup {} is watched: on the watched interfaces, all other traffic counts as \
             unattributed (bitsecure_unattributed_bytes_total); set kernel.interfaces = [] to \
             turn interface totals off",
            cgroup.display()
        );
    }
    let (programs, maps, kernel_logger) = kernel::load_and_attach(
        cgroup,
        &capacities,
        &config.kernel.interfaces,
        persistence.map(|persistence| &persistence.pins),
    )?;
    metrics.poller.set_map_capacities(&[
        ("flows", capacities.flows),
        ("peers", capacities.peers),
        ("sockets", capacities.sockets),
    ]);
    metrics.traffic.set_limits(
        config.metrics.max_remotes,
        config.metrics.max_series,
        config.metrics.series_idle_seconds,
    );
    metrics
        .naming
        .names_limit
        .set(config.names.max_entries as i64);
    let naming = Naming::new(
        config.names.max_entries,
        config.names.trusted_resolvers.clone(),
    );
    // A sub-cgroup's agent judges the packet sockets of its processes only.
    let watched = if config.agent.cgroup.is_empty() {
        None
    } else {
        kernel::cgroup::path_in_hierarchy(cgroup)
    };
    let mut poller = Poller::new(maps, naming, config.poll_interval(), watched)?;
    if let Some(persistence) = persistence {
        resume(persistence, &mut poller, metrics);
    }
    Ok((programs, poller, kernel_logger))
}
