//! Loading the embedded eBPF programs and attaching them to a cgroup v2 directory.
//!
//! Dropping [`AttachedPrograms`] detaches every program that is not pinned.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps,
        links::{FdLink, PinnedLink},
    },
    util::KernelVersion,
};
use bitsecure_common::map_names;
use log::{debug, info};

use crate::kernel::pins::PinDir;

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
    /// DNS responses and first payloads of flows ([`bitsecure_common::PayloadEvent`]).
    pub events: RingBuf<MapData>,
    /// Size of `events` in bytes.
    pub event_bytes: u32,
}

/// The kernel's log records (aya-log), read by the agent and passed to the `log` crate.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct AttachedPrograms {
    // Never read. Dropping the links detaches them; pinned links stay attached (their pins
    // hold them) until `bitsecure uninstall`. The object owns the programs.
    _links: Vec<FdLink>,
    _pinned: Vec<PinnedLink>,
    _ebpf: Ebpf,
}

/// Map sizes chosen by the config.
pub struct MapCapacities {
    pub flows: u32,
    pub sockets: u32,
    /// Size of the `EVENTS` ring buffer in bytes.
    pub event_bytes: u32,
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
///
/// With `pins`, the maps and links are pinned there: programs already attached by a previous
/// agent from the very same object stay attached (no gap, no double count), others are
/// replaced; see [`crate::kernel::pins`].
pub fn load_and_attach(
    cgroup: &Path,
    capacities: &MapCapacities,
    pins: Option<&PinDir>,
) -> anyhow::Result<(AttachedPrograms, KernelMaps, KernelLogger)> {
    check_kernel_version()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::FLOWS, capacities.flows)
        .map_max_entries(map_names::SOCKETS, capacities.sockets)
        .map_max_entries(map_names::EVENTS, capacities.event_bytes);
    if let Some(pins) = pins {
        // EVENTS too: programs kept attached across a restart go on writing to it.
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    let mut ebpf = loader.load(PROGRAMS).context(
        "loading the eBPF programs failed: BitSecure needs root (or CAP_BPF, CAP_NET_ADMIN \
         and CAP_PERFMON) and a kernel with BPF enabled",
    )?;
    // Take the log ring buffer before loading the programs that write to it.
    let logger = KernelLogger::init(&mut ebpf).context("kernel log ring buffer missing")?;
    let cgroup_dir = File::open(cgroup)
        .with_context(|| format!("cannot open cgroup directory {}", cgroup.display()))?;
    let mut attached = Attacher {
        cgroup,
        pins,
        links: Vec::new(),
        pinned: Vec::new(),
    };
    if let Some(pins) = pins {
        // Links of another cgroup (the config changed) would count traffic we no longer watch.
        let wanted: Vec<PathBuf> = ALL_PROGRAMS
            .iter()
            .map(|name| pins.link(name, cgroup))
            .collect::<Result<_, _>>()?;
        pins.remove_links(|path| !wanted.iter().any(|want| want == path))?;
    }

    for (name, attach_type) in [
        (EGRESS, CgroupSkbAttachType::Egress),
        (INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        let program: &mut CgroupSkb = program_mut(&mut ebpf, name)?;
        program
            .load()
            .with_context(|| format!("kernel rejected program {name}"))?;
        attached.attach(name, program.info()?.tag(), || {
            // With bpf links (5.7+) programs always stack; other agents' programs keep running.
            let link = program.attach(&cgroup_dir, attach_type, CgroupAttachMode::Single)?;
            Ok(FdLink::try_from(program.take_link(link)?)?)
        })?;
    }
    for name in [SOCK_CREATE, SOCK_RELEASE] {
        let program: &mut CgroupSock = program_mut(&mut ebpf, name)?;
        program
            .load()
            .with_context(|| format!("kernel rejected program {name}"))?;
        attached.attach(name, program.info()?.tag(), || {
            let link = program.attach(&cgroup_dir, CgroupAttachMode::Single)?;
            Ok(FdLink::try_from(program.take_link(link)?)?)
        })?;
    }
    let program: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS)?;
    program
        .load()
        .with_context(|| format!("kernel rejected program {SOCK_OPS}"))?;
    attached.attach(SOCK_OPS, program.info()?.tag(), || {
        let link = program.attach(&cgroup_dir, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(program.take_link(link)?)?)
    })?;

    let maps = KernelMaps {
        flows: take_map(&mut ebpf, map_names::FLOWS)?,
        sockets: take_map(&mut ebpf, map_names::SOCKETS)?,
        stats: take_map(&mut ebpf, map_names::STATS)?,
        events: match ebpf.take_map(map_names::EVENTS) {
            Some(map @ Map::RingBuf(_)) => RingBuf::try_from(map)?,
            Some(_) => bail!("map {} has an unexpected type", map_names::EVENTS),
            None => bail!("map {} missing from the eBPF object", map_names::EVENTS),
        },
        event_bytes: capacities.event_bytes,
    };
    let Attacher { links, pinned, .. } = attached;
    Ok((
        AttachedPrograms {
            _links: links,
            _pinned: pinned,
            _ebpf: ebpf,
        },
        maps,
        logger,
    ))
}

/// The maps pinned (with `kernel.pin_path`).
pub const PINNED_MAPS: [&str; 4] = [
    map_names::FLOWS,
    map_names::SOCKETS,
    map_names::STATS,
    map_names::EVENTS,
];

/// Every program, in attach order.
const ALL_PROGRAMS: [&str; 5] = [EGRESS, INGRESS, SOCK_CREATE, SOCK_RELEASE, SOCK_OPS];

/// Attaches programs, pinning their links when asked to.
struct Attacher<'a> {
    cgroup: &'a Path,
    pins: Option<&'a PinDir>,
    links: Vec<FdLink>,
    pinned: Vec<PinnedLink>,
}

impl Attacher<'_> {
    fn attach(
        &mut self,
        name: &str,
        tag: u64,
        attach: impl FnOnce() -> anyhow::Result<FdLink>,
    ) -> anyhow::Result<()> {
        let attach = || {
            attach().with_context(|| format!("cannot attach {name} to {}", self.cgroup.display()))
        };
        let Some(pins) = self.pins else {
            self.links.push(attach()?);
            return Ok(());
        };
        let path = pins.link(name, self.cgroup)?;
        let previous = PinnedLink::from_pin(&path).ok().map(FdLink::from);
        if let Some(previous) = &previous
            && attached_tag(previous) == Some(tag)
        {
            // The same program is attached already and counting into the same maps: keep it.
            debug!("{name}: keeping the pinned link of the previous agent");
            return Ok(());
        }
        // A different program (another agent version): attach the new one, then let the old
        // go, so no packet is missed in between.
        let link = attach()?;
        if previous.is_some() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale pin {}", path.display()))?;
            info!("{name}: replaced the program a previous agent had attached");
        }
        let pinned = link
            .pin(&path)
            .with_context(|| format!("cannot pin {name}'s link at {}", path.display()))?;
        self.pinned.push(pinned);
        Ok(())
    }
}

/// The tag (hash of the instructions) of the program behind a link.
fn attached_tag(link: &FdLink) -> Option<u64> {
    let id = link.info().ok()?.program_id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == id)
        .map(|program| program.tag())
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
