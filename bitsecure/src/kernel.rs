//! Loading the embedded eBPF programs and attaching them to a cgroup v2 directory.
//!
//! Dropping [`AttachedPrograms`] detaches every program (the links are owned by it).

use std::{fs::File, path::Path};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps},
    util::KernelVersion,
};
use bitsecure_common::map_names;

/// The compiled programs, built by build.rs from `bitsecure-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bitsecure"));

/// Oldest kernel with everything used: cgroup/sock_release (5.9), batch map ops (5.6),
/// bpf_ktime_get_boot_ns (5.8). 5.10 is the LTS release that covers them.
pub const MINIMUM_KERNEL: (u32, u32) = (5, 10);

/// Program names in the object, with how each attaches.
pub const EGRESS: &str = "count_egress";
pub const INGRESS: &str = "count_ingress";
pub const SOCK_CREATE: &str = "record_owner";
pub const SOCK_RELEASE: &str = "mark_released";
pub const SOCK_OPS: &str = "mark_passive";

/// The maps the agent reads, taken out of the loaded object.
pub struct KernelMaps {
    pub flows: MapData,
    pub sockets: MapData,
    pub stats: MapData,
}

/// The kernel's log records (aya-log), read by the agent and passed to the `log` crate.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct AttachedPrograms {
    // Owns the programs and their links; never read, dropped to detach.
    _ebpf: Ebpf,
}

/// Map sizes chosen by the config.
pub struct MapCapacities {
    pub flows: u32,
    pub sockets: u32,
}

/// Fails with a clear message on kernels older than [`MINIMUM_KERNEL`].
pub fn check_kernel_version() -> anyhow::Result<()> {
    let current = KernelVersion::current().context("cannot read the running kernel's version")?;
    let (major, minor) = MINIMUM_KERNEL;
    if current < KernelVersion::new(major as u8, minor as u8, 0) {
        bail!(
            "kernel {current:?} is too old: BitSecure needs Linux {major}.{minor} or newer \
             (cgroup/sock_release, batched map reads)"
        );
    }
    Ok(())
}

/// Loads the programs, sizes the maps, and attaches everything to `cgroup`.
pub fn load_and_attach(
    cgroup: &Path,
    capacities: &MapCapacities,
) -> anyhow::Result<(AttachedPrograms, KernelMaps, KernelLogger)> {
    check_kernel_version()?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::FLOWS, capacities.flows)
        .map_max_entries(map_names::SOCKETS, capacities.sockets)
        .load(PROGRAMS)
        .context(
            "loading the eBPF programs failed: BitSecure needs root (or CAP_BPF, CAP_NET_ADMIN \
             and CAP_PERFMON) and a kernel with BPF enabled",
        )?;
    // Take the log ring buffer before loading the programs that write to it.
    let logger = KernelLogger::init(&mut ebpf).context("kernel log ring buffer missing")?;
    let cgroup_dir = File::open(cgroup)
        .with_context(|| format!("cannot open cgroup directory {}", cgroup.display()))?;

    for (name, attach_type) in [
        (EGRESS, CgroupSkbAttachType::Egress),
        (INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        let program: &mut CgroupSkb = program_mut(&mut ebpf, name)?;
        program
            .load()
            .with_context(|| format!("kernel rejected program {name}"))?;
        // With bpf links (5.7+) programs always stack; other agents' programs keep running.
        program
            .attach(&cgroup_dir, attach_type, CgroupAttachMode::Single)
            .with_context(|| format!("cannot attach {name} to {}", cgroup.display()))?;
    }
    for name in [SOCK_CREATE, SOCK_RELEASE] {
        let program: &mut CgroupSock = program_mut(&mut ebpf, name)?;
        program
            .load()
            .with_context(|| format!("kernel rejected program {name}"))?;
        program
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .with_context(|| format!("cannot attach {name} to {}", cgroup.display()))?;
    }
    let program: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS)?;
    program
        .load()
        .with_context(|| format!("kernel rejected program {SOCK_OPS}"))?;
    program
        .attach(&cgroup_dir, CgroupAttachMode::Single)
        .with_context(|| format!("cannot attach {SOCK_OPS} to {}", cgroup.display()))?;

    let maps = KernelMaps {
        flows: take_map(&mut ebpf, map_names::FLOWS)?,
        sockets: take_map(&mut ebpf, map_names::SOCKETS)?,
        stats: take_map(&mut ebpf, map_names::STATS)?,
    };
    Ok((AttachedPrograms { _ebpf: ebpf }, maps, logger))
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<MapData> {
    match ebpf.take_map(name) {
        Some(Map::HashMap(data) | Map::PerCpuHashMap(data) | Map::PerCpuArray(data)) => Ok(data),
        Some(_) => bail!("map {name} has an unexpected type"),
        None => bail!("map {name} missing from the eBPF object"),
    }
}
