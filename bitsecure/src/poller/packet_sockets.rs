//! Who holds a packet socket (AF_PACKET) or a raw IP socket, in every network namespace.
//!
//! A packet socket sends and receives whole frames below IP: what it sends never passes the
//! cgroup hooks, so no byte of it is in the flow counters (a DHCP client needs one; so do
//! BPFDoor-style backdoors and frame-level exfiltration tools). A raw IP socket builds its own
//! IP headers. Neither is hidden by counting less; both are listed with their process, read from
//! `/proc/<pid>/net/{packet,raw,raw6}` of one process per namespace (AF_PACKET sockets never run
//! the cgroup socket hooks), and the holders from the `/proc/*/fd` scan, done again only when a
//! socket not seen before appears.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use log::warn;

use crate::flow::protocol_label;
pub use crate::flow::{PacketSocketClass, PacketSocketKind as Kind};
use crate::poller::{
    identity::{self, ProcessIdentity},
    proc_net::{self, namespace_processes},
    sock_diag,
};

/// One socket as `/proc/net/{packet,raw,raw6}` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    kind: Kind,
    protocol: String,
    inode: u64,
}

/// The inventory, kept between polls so the `/proc` scan runs only for new sockets.
pub struct PacketSockets {
    proc_root: PathBuf,
    /// Holder of each socket seen (`None`: no process holds it any more, or it was not found).
    holders: HashMap<u64, Option<ProcessIdentity>>,
    /// Only holders in this cgroup (or below) are listed; `None`: every holder.
    watched_cgroup: Option<String>,
}

impl PacketSockets {
    pub fn new(proc_root: PathBuf, watched_cgroup: Option<String>) -> Self {
        Self {
            proc_root,
            holders: HashMap::new(),
            watched_cgroup,
        }
    }

    /// Whether a holder is one this agent watches (with a watched cgroup, an unknown holder is
    /// not).
    fn watched(&self, holder: Option<&ProcessIdentity>) -> bool {
        let Some(watched) = &self.watched_cgroup else {
            return true;
        };
        let cgroup = holder.and_then(|holder| holder.cgroup.as_deref());
        cgroup.is_some_and(|cgroup| {
            watched == "/"
                || cgroup == watched
                || cgroup
                    .strip_prefix(watched.as_str())
                    .is_some_and(|below| below.starts_with('/'))
        })
    }

    /// The packet and raw sockets on the host now, counted per holder and protocol.
    pub fn poll(&mut self) -> BTreeMap<PacketSocketClass, usize> {
        let listed = match list(&self.proc_root) {
            Ok(listed) => listed,
            Err(error) => {
                warn!("cannot list packet and raw sockets: {error}");
                return BTreeMap::new();
            }
        };
        if listed
            .iter()
            .any(|socket| !self.holders.contains_key(&socket.inode))
        {
            self.find_holders(&listed);
        }
        let open: HashSet<u64> = listed.iter().map(|socket| socket.inode).collect();
        self.holders.retain(|inode, _| open.contains(inode));
        let mut classes = BTreeMap::new();
        for socket in &listed {
            let holder = self.holders.get(&socket.inode).cloned().flatten();
            if !self.watched(holder.as_ref()) {
                continue;
            }
            let holder = holder.unwrap_or_else(ProcessIdentity::unknown);
            let class = PacketSocketClass {
                process: holder.name,
                exe: holder.exe.unwrap_or_default(),
                kind: socket.kind,
                protocol: socket.protocol.clone(),
            };
            *classes.entry(class).or_default() += 1;
        }
        classes
    }

    /// Maps every listed socket's inode to its process (one `/proc/*/fd` scan).
    fn find_holders(&mut self, listed: &[Listed]) {
        let owners = match sock_diag::socket_inode_owners() {
            Ok(owners) => owners,
            Err(error) => {
                warn!("cannot scan /proc for packet socket holders: {error}");
                return;
            }
        };
        for socket in listed {
            let holder = owners
                .get(&socket.inode)
                .and_then(|pid| identity::read_identity(&self.proc_root, *pid, None));
            self.holders.insert(socket.inode, holder);
        }
    }
}

/// The protocol a raw socket table is read as (its lines carry their own protocol).
const IPPROTO_RAW: u8 = 255;

/// Every packet and raw socket of every network namespace, read below `proc_root`.
fn list(proc_root: &Path) -> std::io::Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for process in namespace_processes(proc_root)? {
        let net = process.join("net");
        if let Ok(text) = std::fs::read_to_string(net.join("packet")) {
            listed.extend(parse_packet_table(&text));
        }
        for file in ["raw", "raw6"] {
            if let Ok(text) = std::fs::read_to_string(net.join(file)) {
                // A raw socket's "local port" is its IP protocol number.
                listed.extend(
                    proc_net::parse_table(&text, IPPROTO_RAW).map(|socket| Listed {
                        kind: Kind::Raw,
                        protocol: protocol_label(socket.local_port as u8),
                        inode: socket.inode,
                    }),
                );
            }
        }
    }
    Ok(listed)
}

/// `/proc/net/packet`: `sk RefCnt Type Proto Iface R Rmem User Inode`, Proto the EtherType in
/// hex (host order).
fn parse_packet_table(text: &str) -> impl Iterator<Item = Listed> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ethertype = u16::from_str_radix(fields.get(3)?, 16).ok()?;
        let inode = fields.get(8)?.parse().ok().filter(|inode| *inode != 0)?;
        Some(Listed {
            kind: Kind::Packet,
            protocol: ethertype_name(ethertype),
            inode,
        })
    })
}

/// The EtherTypes a packet socket usually asks for by name, others in hex.
fn ethertype_name(ethertype: u16) -> String {
    match ethertype {
        0x0003 => "all".into(),
        0x0800 => "ipv4".into(),
        0x0806 => "arp".into(),
        0x86dd => "ipv6".into(),
        0x88cc => "lldp".into(),
        0 => "none".into(),
        other => format!("0x{other:04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_of_a_cgroup_lists_the_holders_in_it_only() {
        let holder = |cgroup: Option<&str>| ProcessIdentity {
            cgroup: cgroup.map(str::to_owned),
            ..ProcessIdentity::from_comm(b"dhclient")
        };
        let rig = PacketSockets::new(PathBuf::from("/proc"), Some("/rig".to_owned()));
        assert!(rig.watched(Some(&holder(Some("/rig")))));
        assert!(rig.watched(Some(&holder(Some("/rig/miner.service")))));
        assert!(!rig.watched(Some(&holder(Some("/rigged")))));
        assert!(!rig.watched(Some(&holder(Some("/system.slice/x.service")))));
        assert!(!rig.watched(Some(&holder(None))));
        assert!(!rig.watched(None));
        let host = PacketSockets::new(PathBuf::from("/proc"), None);
        assert!(host.watched(None));
        assert!(host.watched(Some(&holder(Some("/anything")))));
    }

    #[test]
    fn packet_table_lines_give_kind_ethertype_and_inode() {
        let text = "\
sk               RefCnt Type Proto  Iface R Rmem   User   Inode
ffff8880046e6000 3      3    0003   2     1 0      0      31337
ffff8880046e7000 3      2    0800   0     1 0      101    4242
ffff8880046e8000 3      3    88b5   2     1 0      0      0
";
        let listed: Vec<Listed> = parse_packet_table(text).collect();
        assert_eq!(
            listed,
            [
                Listed {
                    kind: Kind::Packet,
                    protocol: "all".into(),
                    inode: 31337
                },
                Listed {
                    kind: Kind::Packet,
                    protocol: "ipv4".into(),
                    inode: 4242
                },
            ]
        );
        assert_eq!(ethertype_name(0x88b5), "0x88b5");
    }
}
