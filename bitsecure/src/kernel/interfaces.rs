//! The interfaces whose every packet is counted (the tc programs), so that what no socket hook
//! saw shows as the difference: every interface of the agent's network namespace except
//! loopback (whose packets are all between local sockets) and the ports of another device
//! (bridge ports, bond slaves: their host traffic crosses the master, which is watched).
//!
//! Interfaces come and go (containers, VPNs, test veths): each check lists them again, gives
//! new ones an `INTERFACES` entry and the two tc programs (TCX links from Linux 6.6, a clsact
//! qdisc filter before), drops what went away, and re-attaches a program someone detached.
//! The links are not pinned: they go with the agent, and the next agent attaches its own.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, links::Link as _, tc},
    util::KernelVersion,
};
use bitsecure_common::{InterfaceCounters, interface_slot};
use log::{debug, info, warn};

/// The tc program names in the object.
pub const INTERFACE_EGRESS: &str = "iface_egress";
pub const INTERFACE_INGRESS: &str = "iface_ingress";

/// `ARPHRD_*` link types (linux/if_arp.h) whose IP header offset is known, with that offset.
const LINK_HEADERS: [(u32, u32); 5] = [
    (1, 14),    // ARPHRD_ETHER: Ethernet (VLAN tags are out of band or belong to the VLAN device)
    (65534, 0), // ARPHRD_NONE: WireGuard, tun
    (768, 0),   // ARPHRD_TUNNEL: ipip
    (769, 0),   // ARPHRD_TUNNEL6: ip6ip6
    (776, 0),   // ARPHRD_SIT
];
const ARPHRD_LOOPBACK: u32 = 772;

/// One interface as `/sys/class/net` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: String,
    ifindex: u32,
    /// Bytes before the IP header; `None`: a link type the tc programs cannot read.
    link_header_len: Option<u32>,
    /// A port of another device (it has a `master`).
    enslaved: bool,
    mtu: u32,
}

/// One watched interface: its name and the two links (dropped: detached).
struct Watched {
    name: String,
    /// The MTU written into its slot.
    mtu: u32,
    egress: tc::SchedClassifierLink,
    ingress: tc::SchedClassifierLink,
}

/// What one check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterfaceCheck {
    /// Interfaces watched after the check.
    pub watched: usize,
    /// New interfaces that could not be watched (attaching failed, or the map is full).
    pub unwatched: Vec<String>,
    /// Watched interfaces whose program someone detached, and that got it back.
    pub reattached: usize,
    /// Watched interfaces whose program someone detached, and re-attaching failed.
    pub lost: usize,
}

/// The watched interfaces, their links and their `INTERFACES` entries.
pub struct InterfaceWatch {
    map: PerCpuArray<MapData, InterfaceCounters>,
    /// `kernel.interfaces`: names or `*` patterns.
    patterns: Vec<String>,
    watched: HashMap<u32, Watched>,
    sys_class_net: PathBuf,
    cpus: usize,
    /// Link types already reported as not watchable, so the log says it once.
    reported: HashMap<String, u32>,
    /// Interfaces that could not be watched, so the log warns once, not every check.
    failed: HashMap<String, u32>,
    /// Ids of this agent's egress and ingress programs, to find them among an interface's.
    own_ids: [u32; 2],
    /// TCX links (Linux 6.6), which can be asked for; else clsact filters.
    tcx: bool,
}

impl InterfaceWatch {
    /// `own_ids`: the loaded egress and ingress programs' ids.
    pub fn new(map: MapData, patterns: Vec<String>, own_ids: [u32; 2]) -> anyhow::Result<Self> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, error)| anyhow::anyhow!("cannot read {path}: {error}"))?;
        Ok(Self {
            map: PerCpuArray::try_from(Map::PerCpuArray(map))?,
            patterns,
            watched: HashMap::new(),
            sys_class_net: PathBuf::from("/sys/class/net"),
            cpus,
            reported: HashMap::new(),
            failed: HashMap::new(),
            own_ids,
            tcx: kernel_at_least(6, 6),
        })
    }

    /// Lists the interfaces and brings the watch in line: new ones attached, gone ones
    /// dropped, detached programs re-attached. Needs CAP_NET_ADMIN and CAP_BPF.
    pub fn check(&mut self, ebpf: &mut Ebpf) -> InterfaceCheck {
        let listed = match list(&self.sys_class_net) {
            Ok(listed) => listed,
            Err(error) => {
                warn!("cannot list the network interfaces: {error:#}");
                return InterfaceCheck {
                    watched: self.watched.len(),
                    ..InterfaceCheck::default()
                };
            }
        };
        let mut check = InterfaceCheck::default();
        let patterns = std::mem::take(&mut self.patterns);
        let wanted: Vec<(&Listed, u32)> = listed
            .iter()
            .filter(|interface| {
                !interface.enslaved
                    && patterns
                        .iter()
                        .any(|pattern| matches_pattern(pattern, &interface.name))
            })
            .filter_map(|interface| match interface.link_header_len {
                Some(len) => Some((interface, len)),
                None => {
                    self.report_unwatchable(interface);
                    None
                }
            })
            .collect();
        self.patterns = patterns;
        // Gone (or renamed, or a new device reusing the index): drop the entry and the links.
        let stale: Vec<u32> = self
            .watched
            .iter()
            .filter(|(ifindex, watched)| {
                !wanted
                    .iter()
                    .any(|(listed, _)| listed.ifindex == **ifindex && listed.name == watched.name)
            })
            .map(|(ifindex, _)| *ifindex)
            .collect();
        for ifindex in stale {
            if let Some(watched) = self.watched.remove(&ifindex) {
                debug!("interface {} is gone: no longer watched", watched.name);
            }
            self.clear_slot(ifindex);
        }
        for (interface, link_header_len) in wanted {
            match self.watched.get(&interface.ifindex) {
                Some(watched) if self.still_attached(interface) => {
                    if watched.mtu != interface.mtu {
                        self.update_mtu(interface);
                    }
                }
                Some(_) => {
                    // Someone detached a program: attach both again (the entry stays).
                    self.watched.remove(&interface.ifindex);
                    match attach_both(ebpf, &interface.name, self.tcx) {
                        Ok((egress, ingress)) => {
                            warn!(
                                "the interface counting programs were detached from {}: \
                                 someone with root did it, and what crossed it meanwhile was \
                                 not counted; attached them again",
                                interface.name
                            );
                            check.reattached += 1;
                            self.insert_watched(interface, egress, ingress);
                        }
                        Err(error) => {
                            warn!(
                                "the interface counting programs were detached from {}, and \
                                 re-attaching them failed: {error:#}",
                                interface.name
                            );
                            check.lost += 1;
                        }
                    }
                }
                None => match self.watch(ebpf, interface, link_header_len) {
                    Ok(()) => {
                        self.failed.remove(&interface.name);
                        info!("watching interface {}", interface.name);
                    }
                    Err(error) => {
                        // Tried again at every check; said once per interface.
                        let first = self
                            .failed
                            .insert(interface.name.clone(), interface.ifindex)
                            != Some(interface.ifindex);
                        if first {
                            warn!("cannot watch interface {}: {error:#}", interface.name);
                        } else {
                            debug!("cannot watch interface {}: {error:#}", interface.name);
                        }
                        check.unwatched.push(interface.name.clone());
                    }
                },
            }
        }
        // Interfaces that went away are forgotten (names of churned veths would pile up).
        self.failed
            .retain(|name, _| listed.iter().any(|interface| &interface.name == name));
        check.watched = self.watched.len();
        check
    }

    fn watch(
        &mut self,
        ebpf: &mut Ebpf,
        interface: &Listed,
        link_header_len: u32,
    ) -> anyhow::Result<()> {
        let slot = interface_slot(interface.ifindex);
        if let Some(other) = self
            .watched
            .iter()
            .find(|(ifindex, _)| interface_slot(**ifindex) == slot)
            .map(|(_, watched)| &watched.name)
        {
            anyhow::bail!(
                "its index {} shares a counter slot with {other}, which is watched already",
                interface.ifindex
            );
        }
        // The slot first: counting starts on both sides once the programs run. A slot left
        // for this interface by a previous agent (pinned map) keeps its counters.
        let kept = self.map.get(&slot, 0).is_ok_and(|values| {
            values
                .first()
                .is_some_and(|cpu| cpu.ifindex == interface.ifindex)
        });
        if kept {
            self.write_mtu(slot, interface.mtu);
        } else {
            let entry = InterfaceCounters {
                link_header_len,
                ifindex: interface.ifindex,
                mtu: interface.mtu,
                ..InterfaceCounters::default()
            };
            self.map
                .set(slot, PerCpuValues::try_from(vec![entry; self.cpus])?, 0)?;
        }
        let (egress, ingress) = attach_both(ebpf, &interface.name, self.tcx)?;
        self.insert_watched(interface, egress, ingress);
        Ok(())
    }

    fn insert_watched(
        &mut self,
        interface: &Listed,
        egress: tc::SchedClassifierLink,
        ingress: tc::SchedClassifierLink,
    ) {
        self.watched.insert(
            interface.ifindex,
            Watched {
                name: interface.name.clone(),
                mtu: interface.mtu,
                egress,
                ingress,
            },
        );
    }

    /// The interface's MTU changed: its slot says so from now on.
    fn update_mtu(&mut self, interface: &Listed) {
        self.write_mtu(interface_slot(interface.ifindex), interface.mtu);
        if let Some(watched) = self.watched.get_mut(&interface.ifindex) {
            watched.mtu = interface.mtu;
        }
    }

    /// Writes `mtu` into every CPU's copy of `slot`, keeping the counters (an increment racing
    /// the write may be lost; MTUs rarely change).
    fn write_mtu(&mut self, slot: u32, mtu: u32) {
        let Ok(values) = self.map.get(&slot, 0) else {
            return;
        };
        let updated: Vec<InterfaceCounters> = values
            .iter()
            .map(|cpu| InterfaceCounters { mtu, ..*cpu })
            .collect();
        if let Ok(values) = PerCpuValues::try_from(updated) {
            let _ = self.map.set(slot, values, 0);
        }
    }

    /// Empties the slot of `ifindex`: nothing counts there any more.
    fn clear_slot(&mut self, ifindex: u32) {
        let empty = vec![InterfaceCounters::default(); self.cpus];
        if let Ok(values) = PerCpuValues::try_from(empty) {
            let _ = self.map.set(interface_slot(ifindex), values, 0);
        }
    }

    /// Whether both programs are still attached to the interface. Only TCX links can be
    /// asked; a clsact filter (before 6.6) is taken as attached.
    fn still_attached(&self, interface: &Listed) -> bool {
        if !self.tcx {
            return true;
        }
        [TcAttachType::Egress, TcAttachType::Ingress]
            .into_iter()
            .zip(self.own_ids)
            .all(|(attach_type, own_id)| {
                match SchedClassifier::query_tcx(&interface.name, attach_type) {
                    Ok((_, programs)) => programs.iter().any(|program| program.id() == own_id),
                    // Gone between the listing and the query: the next check drops it.
                    Err(_) => true,
                }
            })
    }

    fn report_unwatchable(&mut self, interface: &Listed) {
        if self
            .reported
            .insert(interface.name.clone(), interface.ifindex)
            != Some(interface.ifindex)
        {
            info!(
                "interface {} has a link type the interface counters cannot read: what crosses \
                 it outside sockets is not measured",
                interface.name
            );
        }
    }

    /// The names of the watched interfaces, by ifindex.
    pub fn names(&self) -> HashMap<u32, String> {
        self.watched
            .iter()
            .map(|(ifindex, watched)| (*ifindex, watched.name.clone()))
            .collect()
    }
}

impl Drop for InterfaceWatch {
    fn drop(&mut self) {
        let watched: Vec<(u32, Watched)> = self.watched.drain().collect();
        for (ifindex, watched) in watched {
            self.clear_slot(ifindex);
            let Watched {
                egress, ingress, ..
            } = watched;
            let _ = egress.detach();
            let _ = ingress.detach();
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn kernel_at_least(major: u8, minor: u8) -> bool {
    KernelVersion::current().is_ok_and(|current| current >= KernelVersion::new(major, minor, 0))
}

/// Attaches both tc programs to `interface` (`tcx`: as TCX links, else as clsact filters).
fn attach_both(
    ebpf: &mut Ebpf,
    interface: &str,
    tcx: bool,
) -> anyhow::Result<(tc::SchedClassifierLink, tc::SchedClassifierLink)> {
    if !tcx {
        // EEXIST: the qdisc is there already (another tool's, or ours from before).
        if let Err(error) = tc::qdisc_add_clsact(interface)
            && !matches!(&error, tc::TcError::IoError(io) if io.kind() == std::io::ErrorKind::AlreadyExists)
        {
            debug!("clsact on {interface}: {error}");
        }
    }
    let egress = attach_one(ebpf, INTERFACE_EGRESS, interface, TcAttachType::Egress)?;
    let ingress = attach_one(ebpf, INTERFACE_INGRESS, interface, TcAttachType::Ingress)?;
    Ok((egress, ingress))
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &str,
    interface: &str,
    attach_type: TcAttachType,
) -> anyhow::Result<tc::SchedClassifierLink> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))?;
    let link = program
        .attach(interface, attach_type)
        .with_context(|| format!("cannot attach {name} to {interface}"))?;
    Ok(program.take_link(link)?)
}

/// Every interface of this network namespace.
fn list(sys_class_net: &Path) -> anyhow::Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for entry in std::fs::read_dir(sys_class_net)
        .with_context(|| format!("cannot read {}", sys_class_net.display()))?
    {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        let number = |file: &str| -> Option<u32> {
            std::fs::read_to_string(dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        // Gone between the listing and the reads: skipped.
        let (Some(ifindex), Some(link_type), Some(mtu)) =
            (number("ifindex"), number("type"), number("mtu"))
        else {
            continue;
        };
        if link_type == ARPHRD_LOOPBACK {
            continue;
        }
        listed.push(Listed {
            name,
            ifindex,
            link_header_len: LINK_HEADERS
                .iter()
                .find(|(known, _)| *known == link_type)
                .map(|(_, len)| *len),
            enslaved: dir.join("master").exists(),
            mtu,
        });
    }
    listed.sort_by_key(|interface| interface.ifindex);
    Ok(listed)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14), for
/// the socket programs to tell this namespace's packets from others'. `None` when the kernel
/// cannot give it, or its cgroup_skb programs cannot compare it (the helper came in 6.15).
pub fn watched_netns_cookie() -> Option<u64> {
    if !kernel_at_least(6, 15) {
        return None;
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (result == 0 && cookie != 0).then_some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_interface(root: &Path, name: &str, ifindex: u32, link_type: u32, master: bool) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ifindex"), format!("{ifindex}\n")).unwrap();
        std::fs::write(dir.join("type"), format!("{link_type}\n")).unwrap();
        std::fs::write(dir.join("mtu"), "1500\n").unwrap();
        if master {
            std::fs::write(dir.join("master"), "").unwrap();
        }
    }

    #[test]
    fn patterns_match_names_with_any_run_for_a_star() {
        for (pattern, name, expected) in [
            ("*", "eth0", true),
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth*", "eth0", true),
            ("eth*", "veth0", false),
            ("*0", "veth0", true),
            ("*0", "veth1", false),
            ("v*h*1", "veth1", true),
            ("v*h*1", "vh1", true),
            ("a*a", "a", false),
            ("bitsecure-*", "bitsecure-pool", true),
        ] {
            assert_eq!(
                matches_pattern(pattern, name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn lists_interfaces_but_loopback_with_their_link_header() {
        let root = std::env::temp_dir().join(format!("bitsecure-ifaces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake_interface(&root, "lo", 1, ARPHRD_LOOPBACK, false);
        fake_interface(&root, "eth0", 2, 1, false);
        fake_interface(&root, "wg0", 5, 65534, false);
        fake_interface(&root, "veth1", 4, 1, true);
        fake_interface(&root, "ib0", 3, 32, false);
        let listed = list(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        let summary: Vec<(&str, u32, Option<u32>, bool)> = listed
            .iter()
            .map(|l| (l.name.as_str(), l.ifindex, l.link_header_len, l.enslaved))
            .collect();
        assert_eq!(
            summary,
            [
                ("eth0", 2, Some(14), false),
                ("ib0", 3, None, false),
                ("veth1", 4, Some(14), true),
                ("wg0", 5, Some(0), false),
            ]
        );
    }
}
