//! The vocabulary every stage shares: traffic counts, one poll's attributed flow deltas, the
//! packet and raw sockets held, and the label values of an exported series (built in one
//! place, [`SeriesKey::of`]).
//!
//! Pure data: no I/O, no metric handles. The poller produces [`FlowDelta`]s; the baseline and the
//! exporter consume them.

use std::net::IpAddr;

use bitsecure_common::protocol;

use crate::naming::{App, Source};

/// One kind of socket below the transport layer, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketSocketKind {
    /// AF_PACKET: whole link-layer frames.
    Packet,
    /// AF_INET/AF_INET6 SOCK_RAW: hand-built IP packets of one protocol.
    Raw,
}

impl PacketSocketKind {
    pub const ALL: [Self; 2] = [Self::Packet, Self::Raw];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Packet => "packet",
            Self::Raw => "raw",
        }
    }
}

/// What is exported per holder: its process, the kind of socket and the protocol (an
/// EtherType for a packet socket, an IP protocol for a raw one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketSocketClass {
    pub process: String,
    pub exe: String,
    pub kind: PacketSocketKind,
    pub protocol: String,
}

/// What one poll hands to the baseline: the attributed flow deltas, the packet and raw
/// sockets held (count per holder and protocol) and the DNS questions processes asked.
#[derive(Debug, Default, Clone)]
pub struct Polled {
    pub deltas: Vec<FlowDelta>,
    pub packet_sockets: std::collections::BTreeMap<PacketSocketClass, usize>,
    pub asked: Vec<AskedName>,
}

/// A DNS question a process sent (one query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskedName {
    pub process: String,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
    /// The DNS server asked (and what the asker knows it as), its port and the transport.
    pub server: IpAddr,
    pub server_name: Option<String>,
    pub port: u16,
    pub protocol: u8,
    /// The name asked for: lowercase, no trailing dot.
    pub name: String,
}

/// Label value for remotes folded away by the cardinality limits.
pub const OTHER_REMOTE: &str = "other";

/// Bytes and packets in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_packets: u64,
    pub received_packets: u64,
}

impl Traffic {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    pub fn total_bytes(&self) -> u64 {
        self.sent_bytes + self.received_bytes
    }

    pub fn add(&mut self, other: &Traffic) {
        self.sent_bytes += other.sent_bytes;
        self.received_bytes += other.received_bytes;
        self.sent_packets += other.sent_packets;
        self.received_packets += other.received_packets;
    }

    /// `self - earlier`, for cumulative counters; a counter that went backwards (the kernel
    /// entry was deleted and re-created) counts from zero again.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        Traffic {
            sent_bytes: delta(self.sent_bytes, earlier.sent_bytes),
            received_bytes: delta(self.received_bytes, earlier.received_bytes),
            sent_packets: delta(self.sent_packets, earlier.sent_packets),
            received_packets: delta(self.received_packets, earlier.received_packets),
        }
    }
}

/// New traffic of one kernel flow since the last poll, already attributed to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDelta {
    pub process: String,
    /// Executable path of the process, when /proc told it.
    pub exe: Option<String>,
    /// SHA-256 of the executable's content (lowercase hex), when it could be read.
    pub exe_sha256: Option<String>,
    /// The cgroup v2 path the socket was created in, as the kernel recorded it (or, for a
    /// socket older than the agent, the process's cgroup).
    pub cgroup: Option<String>,
    /// The kernel flow (socket × remote) was seen for the first time in this poll.
    pub new_flow: bool,
    pub remote: IpAddr,
    /// Service port (see [`crate::poller::service_port`]); `None` for protocols without ports.
    pub port: Option<u16>,
    pub protocol: u8,
    /// Application protocol of the flow, from its first payload bytes.
    pub app: App,
    /// What the remote is called, as this host learnt it (DNS answer, TLS SNI, HTTP Host).
    pub name: Option<RemoteName>,
    /// The account (wallet, worker) a Stratum flow logged in with, when its login was seen.
    pub account: Option<String>,
    pub traffic: Traffic,
}

/// A name of a remote endpoint and where it was learnt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RemoteName {
    /// Lowercase host name, no trailing dot.
    pub name: String,
    pub source: Source,
}

/// A class of traffic, typed: who (process) talks to whom (remote, port, protocol) in what
/// (app). The remote's name is not part of it (it comes and goes with DNS answers and TTLs).
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
}

/// Label values `(process, remote, port, protocol, app)` of one exported series; also the
/// form in which the agent state saves it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SeriesKey {
    pub process: String,
    pub remote: String,
    pub port: String,
    pub protocol: String,
    /// [`App::as_str`] of the flows in the series (absent in states of agents before names).
    #[serde(default = "unknown_app")]
    pub app: String,
}

fn unknown_app() -> String {
    App::Unknown.as_str().to_owned()
}

impl SeriesKey {
    /// The label names, in the order of [`SeriesKey::labels`].
    pub const LABEL_NAMES: [&'static str; 5] = ["process", "remote", "port", "protocol", "app"];

    /// The labels of a class of traffic: the one place they are made.
    pub fn of(class: &ClassKey) -> Self {
        Self {
            process: class.process.clone(),
            remote: remote_label(class.remote),
            port: port_label(class.port),
            protocol: protocol_label(class.protocol),
            app: class.app.as_str().to_owned(),
        }
    }

    /// The same series with its remote folded into [`OTHER_REMOTE`]. The port goes too: the
    /// ports of folded traffic would bring the cardinality back (port scans).
    pub fn folded(self) -> Self {
        Self {
            remote: OTHER_REMOTE.to_owned(),
            port: String::new(),
            ..self
        }
    }

    pub fn labels(&self) -> [&str; 5] {
        [
            &self.process,
            &self.remote,
            &self.port,
            &self.protocol,
            &self.app,
        ]
    }
}

/// Canonical text of a remote address; IPv4-mapped IPv6 is shown as IPv4.
pub fn remote_label(remote: IpAddr) -> String {
    remote.to_canonical().to_string()
}

/// The `port` label: the service port, empty for protocols without ports.
pub fn port_label(port: Option<u16>) -> String {
    port.map(|port| port.to_string()).unwrap_or_default()
}

/// The `protocol` label: a name for the common protocols, else the IP protocol number.
pub fn protocol_label(number: u8) -> String {
    protocol::name(number).map_or_else(|| number.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn labels_follow_the_metric_contract() {
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(remote_label(mapped), "10.1.2.3");
        assert_eq!(remote_label(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1");
        assert_eq!(protocol_label(6), "tcp");
        assert_eq!(protocol_label(58), "icmpv6");
        assert_eq!(protocol_label(253), "253");
    }

    #[test]
    fn since_handles_recreated_counters() {
        let before = Traffic {
            sent_bytes: 100,
            ..Traffic::default()
        };
        let after = Traffic {
            sent_bytes: 30,
            ..Traffic::default()
        };
        assert_eq!(after.since(&before).sent_bytes, 30);
        assert_eq!(before.since(&after).sent_bytes, 70);
    }
}
