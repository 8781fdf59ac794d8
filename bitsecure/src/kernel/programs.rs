//! Loading the embedded eBPF programs and attaching them to a cgroup v2 directory (the socket
//! programs) and to the network interfaces ([`crate::kernel::interfaces`]).
//!
//! Dropping [`AttachedPrograms`] detaches every program that is not pinned.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, Program, SockOps,
        links::{FdLink, PinnedLink},
    },
    util::KernelVersion,
};
use bitsecure_common::{global_names, map_names};
use log::{debug, info, warn};

use crate::kernel::{
    attachment::{self, Finding},
    interfaces::{self, INTERFACE_EGRESS, INTERFACE_INGRESS, InterfaceWatch},
    pins::PinDir,
};

/// The compiled programs, built by build.rs from `bitsecure-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bitsecure"));

/// SHA-256 of the embedded eBPF object (hex), for `bitsecure_build_info`: which kernel
/// programs this agent loads.
pub fn programs_sha256() -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(PROGRAMS)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Oldest kernel with everything used: cgroup/sock_release (5.9), batch map ops (5.6),
/// bpf_ktime_get_boot_ns (5.8). 5.10 is the LTS release that covers them.
pub const MINIMUM_KERNEL: (u32, u32) = (5, 10);

/// Program names in the object, with how each attaches.
pub const EGRESS: &str = "count_egress";
pub const INGRESS: &str = "count_ingress";
pub const SOCK_CREATE: &str = "record_owner";
pub const SOCK_RELEASE: &str = "mark_released";
pub const SOCK_OPS: &str = "mark_passive";
/// Every program name, in attach order (the `program` label of the attachment metrics).
pub const PROGRAM_NAMES: [&str; 5] = [EGRESS, INGRESS, SOCK_CREATE, SOCK_RELEASE, SOCK_OPS];

/// The maps the agent reads, taken out of the loaded object.
pub struct KernelMaps {
    /// Connected sockets' flows.
    pub flows: MapData,
    /// The peers of sockets that talk to many.
    pub peers: MapData,
    pub sockets: MapData,
    pub stats: MapData,
    /// DNS responses and first payloads of flows ([`bitsecure_common::PayloadEvent`]).
    pub events: RingBuf<MapData>,
    /// Size of `events` in bytes.
    pub event_bytes: u32,
    /// Sockets just created ([`bitsecure_common::SocketCreated`]).
    pub socket_events: RingBuf<MapData>,
    /// What crossed each watched interface (the agent's own handle; the guard inserts and
    /// removes the entries).
    pub interfaces: MapData,
}

/// The kernel's log records (aya-log), read by the agent and passed to the `log` crate.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct AttachedPrograms {
    cgroup: PathBuf,
    cgroup_dir: File,
    slots: Vec<Slot>,
    interfaces: InterfaceWatch,
    // The object owns the programs; re-attaching takes them from here. Declared last: the
    // links above are dropped (detached) first.
    ebpf: Ebpf,
}

/// One program and where it is attached.
struct Slot {
    name: &'static str,
    /// `enum bpf_attach_type`, for the query.
    attach_type: u32,
    /// The program the agent attached (or kept attached): the id the kernel must list.
    attached_id: u32,
    /// This agent's own copy, attached when the program has to be re-attached.
    own_id: u32,
    /// Where the link is pinned (with `kernel.pin_path`).
    pin: Option<PathBuf>,
    // Never read. Dropping a link detaches it unless it is pinned; pinned links stay attached
    // (their pins hold them) until `bitsecure uninstall`.
    _link: Held,
}

#[expect(
    dead_code,
    reason = "held for their drop: closing the fd detaches an unpinned link"
)]
enum Held {
    Fd(FdLink),
    Pinned(PinnedLink),
}

/// What the kernel says of one of the agent's loaded programs. `runs` and `run_time` grow only
/// while the kernel's BPF statistics are on (`sysctl kernel.bpf_stats_enabled=1`, which costs
/// every BPF program a clock read per run): otherwise they stay 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub id: u32,
    /// The kernel's tag of the program (a hash of its instructions), as `bpftool` shows it.
    pub tag: u64,
    pub runs: u64,
    pub run_time: Duration,
}

/// One program at one check: is it attached, and did the agent have to re-attach it?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCheck {
    pub program: &'static str,
    /// Attached after this check (after re-attaching it if needed). False when the kernel
    /// could not be asked.
    pub attached: bool,
    /// It was gone and the agent attached it again.
    pub reattached: bool,
}

impl AttachedPrograms {
    /// Checks that every program is attached to the cgroup as the agent left it, and
    /// re-attaches those that are gone (see [`crate::kernel::attachment`] for what a detach
    /// looks like). Logs a warning for each one found missing. Needs CAP_NET_ADMIN (and
    /// CAP_BPF to re-attach).
    /// The kernel's information on every program of the agent (from the programs' own
    /// descriptors: no capability beyond holding them).
    pub fn stats(&self) -> Vec<ProgramStats> {
        ALL_PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .chain([INTERFACE_EGRESS, INTERFACE_INGRESS])
            .filter_map(|program| {
                let info = self.ebpf.program(program)?.info().ok()?;
                Some(ProgramStats {
                    program,
                    id: info.id(),
                    tag: info.tag(),
                    runs: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }

    pub fn check_and_repair(&mut self) -> Vec<ProgramCheck> {
        let mut checks = Vec::with_capacity(self.slots.len() + 2);
        for index in 0..self.slots.len() {
            checks.push(self.check_one(index));
        }
        // The interface programs: detached when someone detached them from an interface
        // and they could not be put back (a new interface that cannot be watched is logged).
        let interfaces = self.interfaces.check(&mut self.ebpf);
        for program in [INTERFACE_EGRESS, INTERFACE_INGRESS] {
            checks.push(ProgramCheck {
                program,
                attached: interfaces.lost == 0,
                reattached: interfaces.reattached > 0,
            });
        }
        checks
    }

    fn check_one(&mut self, index: usize) -> ProgramCheck {
        let slot = &self.slots[index];
        let name = slot.name;
        let finding = match self.finding(slot) {
            Ok(finding) => finding,
            Err(error) => {
                warn!(
                    "cannot check that {name} is attached to {}: {error}",
                    self.cgroup.display()
                );
                return ProgramCheck {
                    program: name,
                    attached: false,
                    reattached: false,
                };
            }
        };
        if finding == Finding::Attached {
            return ProgramCheck {
                program: name,
                attached: true,
                reattached: false,
            };
        }
        let found = finding.describe();
        let result = self.reattach(index).and_then(|()| {
            let slot = &self.slots[index];
            match self.finding(slot)? {
                Finding::Attached => Ok(()),
                still => bail!("after re-attaching, it is still {}", still.describe()),
            }
        });
        match result {
            Ok(()) => {
                warn!(
                    "{name} is no longer attached to cgroup {} ({found}): someone with root \
                     detached or replaced it, and what it counts was not counted since; \
                     re-attached it",
                    self.cgroup.display()
                );
                ProgramCheck {
                    program: name,
                    attached: true,
                    reattached: true,
                }
            }
            Err(error) => {
                warn!(
                    "{name} is no longer attached to cgroup {} ({found}): someone with root \
                     detached or replaced it; re-attaching failed: {error:#}; what it counts \
                     is not counted until the agent restarts",
                    self.cgroup.display()
                );
                ProgramCheck {
                    program: name,
                    attached: false,
                    reattached: false,
                }
            }
        }
    }

    fn finding(&self, slot: &Slot) -> std::io::Result<Finding> {
        let ids = attachment::attached_program_ids(self.cgroup_dir.as_fd(), slot.attach_type)?;
        Ok(Finding::of(slot.attached_id, &ids))
    }

    /// Attaches this agent's copy of the program again; with pins, its new link replaces the
    /// pin of the detached one, so a restart keeps it and `bitsecure uninstall` removes it.
    fn reattach(&mut self, index: usize) -> anyhow::Result<()> {
        let name = self.slots[index].name;
        let link = attach_link(&mut self.ebpf, name, &self.cgroup_dir)?;
        let slot = &mut self.slots[index];
        slot._link =
            match &slot.pin {
                None => Held::Fd(link),
                Some(path) => {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(error).with_context(|| {
                                format!("cannot remove the detached link's pin {}", path.display())
                            });
                        }
                    }
                    Held::Pinned(link.pin(path).with_context(|| {
                        format!("cannot pin the new link at {}", path.display())
                    })?)
                }
            };
        slot.attached_id = slot.own_id;
        Ok(())
    }
}

/// Map sizes chosen by the config.
pub struct MapCapacities {
    pub flows: u32,
    pub peers: u32,
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

/// Loads the programs, sizes the maps, and attaches the socket programs to `cgroup`; the
/// interface programs go to the `interfaces` (names or `*` patterns) at the first check.
///
/// With `pins`, the maps and links are pinned there: programs already attached by a previous
/// agent from the very same object stay attached (no gap, no double count), others are
/// replaced; see [`crate::kernel::pins`].
pub fn load_and_attach(
    cgroup: &Path,
    capacities: &MapCapacities,
    interfaces: &[String],
    pins: Option<&PinDir>,
) -> anyhow::Result<(AttachedPrograms, KernelMaps, KernelLogger)> {
    check_kernel_version()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::FLOWS, capacities.flows)
        .map_max_entries(map_names::PEERS, capacities.peers)
        .map_max_entries(map_names::SOCKETS, capacities.sockets)
        .map_max_entries(map_names::EVENTS, capacities.event_bytes);
    let netns_cookie = interfaces::watched_netns_cookie();
    if let Some(cookie) = &netns_cookie {
        loader.override_global(global_names::WATCHED_NETNS_COOKIE, cookie, true);
    } else {
        info!(
            "this kernel cannot tell a packet's network namespace to the socket programs \
             (Linux 6.15+): interface totals may take in other namespaces' packets that use \
             the same interface index"
        );
    }
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
    let mut attacher = Attacher {
        cgroup,
        pins,
        slots: Vec::new(),
    };
    if let Some(pins) = pins {
        // Links of another cgroup (the config changed) would count traffic we no longer watch.
        let wanted: Vec<PathBuf> = ALL_PROGRAMS
            .iter()
            .map(|(name, _)| pins.link(name, cgroup))
            .collect::<Result<_, _>>()?;
        pins.remove_links(|path| !wanted.iter().any(|want| want == path))?;
    }
    for (name, attach_type) in ALL_PROGRAMS {
        let (tag, own_id) = load_program(&mut ebpf, name)?;
        attacher.attach(name, attach_type, tag, own_id, || {
            attach_link(&mut ebpf, name, &cgroup_dir)
        })?;
    }
    // Attached to each interface by the first check (the guard's).
    let (_, egress_id) = load_program(&mut ebpf, INTERFACE_EGRESS)?;
    let (_, ingress_id) = load_program(&mut ebpf, INTERFACE_INGRESS)?;
    let interface_map = take_map(&mut ebpf, map_names::INTERFACES)?;
    // The poller reads the map the guard writes: a second handle from a duplicate of the fd.
    // (Reopening it by id would need CAP_SYS_ADMIN, which the service does not have.)
    let interface_map_fd = interface_map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate the interface map's descriptor")?;
    let interfaces =
        InterfaceWatch::new(interface_map, interfaces.to_vec(), [egress_id, ingress_id])?;

    let maps = KernelMaps {
        flows: take_map(&mut ebpf, map_names::FLOWS)?,
        peers: take_map(&mut ebpf, map_names::PEERS)?,
        sockets: take_map(&mut ebpf, map_names::SOCKETS)?,
        stats: take_map(&mut ebpf, map_names::STATS)?,
        events: take_ring_buffer(&mut ebpf, map_names::EVENTS)?,
        event_bytes: capacities.event_bytes,
        socket_events: take_ring_buffer(&mut ebpf, map_names::SOCKET_EVENTS)?,
        interfaces: MapData::from_fd(interface_map_fd)
            .context("cannot open the interface map a second time")?,
    };
    let slots = attacher.slots;
    Ok((
        AttachedPrograms {
            cgroup: cgroup.to_owned(),
            cgroup_dir,
            slots,
            interfaces,
            ebpf,
        },
        maps,
        logger,
    ))
}

/// Loads one program into the kernel: its tag and id.
fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<(u64, u32)> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?;
    let loaded = match program {
        Program::CgroupSkb(program) => program.load(),
        Program::CgroupSock(program) => program.load(),
        Program::SockOps(program) => program.load(),
        Program::SchedClassifier(program) => program.load(),
        _ => bail!("program {name} has an unexpected type"),
    };
    loaded.with_context(|| format!("kernel rejected program {name}"))?;
    let info = program.info()?;
    Ok((info.tag(), info.id()))
}

/// Attaches a loaded program to the cgroup with a new bpf link. With bpf links (5.7+)
/// programs always stack; other agents' programs keep running.
fn attach_link(ebpf: &mut Ebpf, name: &str, cgroup_dir: &File) -> anyhow::Result<FdLink> {
    Ok(match name {
        EGRESS | INGRESS => {
            let attach_type = if name == EGRESS {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let program: &mut CgroupSkb = program_mut(ebpf, name)?;
            let link = program.attach(cgroup_dir, attach_type, CgroupAttachMode::Single)?;
            FdLink::try_from(program.take_link(link)?)?
        }
        SOCK_CREATE | SOCK_RELEASE => {
            let program: &mut CgroupSock = program_mut(ebpf, name)?;
            let link = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
            FdLink::try_from(program.take_link(link)?)?
        }
        SOCK_OPS => {
            let program: &mut SockOps = program_mut(ebpf, name)?;
            let link = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
            FdLink::try_from(program.take_link(link)?)?
        }
        _ => bail!("no program {name}"),
    })
}

/// The maps pinned (with `kernel.pin_path`).
pub const PINNED_MAPS: [&str; 7] = [
    map_names::FLOWS,
    map_names::PEERS,
    map_names::SOCKETS,
    map_names::STATS,
    map_names::EVENTS,
    map_names::SOCKET_EVENTS,
    map_names::INTERFACES,
];

/// A ring buffer taken out of the loaded object.
fn take_ring_buffer(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<RingBuf<MapData>> {
    match ebpf.take_map(name) {
        Some(map @ Map::RingBuf(_)) => Ok(RingBuf::try_from(map)?),
        Some(_) => bail!("map {name} has an unexpected type"),
        None => bail!("map {name} missing from the eBPF object"),
    }
}

/// Every program with its attach type, in attach order.
const ALL_PROGRAMS: [(&str, u32); 5] = [
    (EGRESS, attachment::ATTACH_EGRESS),
    (INGRESS, attachment::ATTACH_INGRESS),
    (SOCK_CREATE, attachment::ATTACH_SOCK_CREATE),
    (SOCK_RELEASE, attachment::ATTACH_SOCK_RELEASE),
    (SOCK_OPS, attachment::ATTACH_SOCK_OPS),
];

/// Attaches programs, pinning their links when asked to.
struct Attacher<'a> {
    cgroup: &'a Path,
    pins: Option<&'a PinDir>,
    slots: Vec<Slot>,
}

impl Attacher<'_> {
    fn attach(
        &mut self,
        name: &'static str,
        attach_type: u32,
        tag: u64,
        own_id: u32,
        attach: impl FnOnce() -> anyhow::Result<FdLink>,
    ) -> anyhow::Result<()> {
        let attach = || {
            attach().with_context(|| format!("cannot attach {name} to {}", self.cgroup.display()))
        };
        let (attached_id, pin_path, link) = match self.pins {
            None => (own_id, None, Held::Fd(attach()?)),
            Some(pins) => {
                let path = pins.link(name, self.cgroup)?;
                let previous = PinnedLink::from_pin(&path).ok().map(FdLink::from);
                let kept = previous
                    .as_ref()
                    .and_then(attached_program)
                    .filter(|(_, previous_tag)| *previous_tag == tag);
                match (previous, kept) {
                    (Some(previous), Some((program_id, _))) => {
                        // The same program is attached already and counting into the same
                        // maps: keep it. (Were it detached meanwhile, the first check
                        // re-attaches ours.)
                        debug!("{name}: keeping the pinned link of the previous agent");
                        (program_id, Some(path), Held::Fd(previous))
                    }
                    (previous, _) => {
                        // A different program (another agent version): attach the new one,
                        // then let the old go, so no packet is missed in between.
                        let link = attach()?;
                        if previous.is_some() {
                            std::fs::remove_file(&path).with_context(|| {
                                format!("cannot remove the stale pin {}", path.display())
                            })?;
                            info!("{name}: replaced the program a previous agent had attached");
                        }
                        let pinned = pin(link, name, &path)?;
                        (own_id, Some(path), Held::Pinned(pinned))
                    }
                }
            }
        };
        self.slots.push(Slot {
            name,
            attach_type,
            attached_id,
            own_id,
            pin: pin_path,
            _link: link,
        });
        Ok(())
    }
}

fn pin(link: FdLink, name: &str, path: &Path) -> anyhow::Result<PinnedLink> {
    link.pin(path)
        .with_context(|| format!("cannot pin {name}'s link at {}", path.display()))
}

/// The id and tag (hash of the instructions) of the program behind a link.
fn attached_program(link: &FdLink) -> Option<(u32, u64)> {
    let id = link.info().ok()?.program_id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == id)
        .map(|program| (id, program.tag()))
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
