//! Types shared between the kernel programs (`bitsecure-ebpf`) and the agent (`bitsecure`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree on the byte layout
//! of every map key and value. Size asserts catch accidental layout changes at compile time.
#![no_std]

/// Map names, as the kernel side declares them and the agent looks them up.
pub mod map_names {
    /// Per-CPU hash: [`FlowKey`](crate::FlowKey) → [`FlowCounters`](crate::FlowCounters).
    pub const FLOWS: &str = "FLOWS";
    /// Hash: socket cookie (`u64`) → [`SocketOwner`](crate::SocketOwner).
    pub const SOCKETS: &str = "SOCKETS";
    /// Per-CPU array of `u64` event counters, indexed by [`Stat`](crate::Stat).
    pub const STATS: &str = "STATS";
}

/// Default capacity of the `FLOWS` map (entries; the agent may override it at load time).
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Default capacity of the `SOCKETS` map (entries; the agent may override it at load time).
pub const DEFAULT_SOCKET_CAPACITY: u32 = 65_536;

/// Direction of a packet relative to this host.
pub const DIRECTION_EGRESS: u8 = 1;
/// Direction of a packet relative to this host.
pub const DIRECTION_INGRESS: u8 = 2;

/// How the owner of a socket was learned: not yet (an accepted socket, known only as passive).
pub const OWNER_UNKNOWN: u8 = 0;
/// How the owner of a socket was learned: the process that called socket(2).
pub const OWNER_FROM_CREATE: u8 = 1;
/// The socket existed before the program, or was accepted; the owner is whoever closed it.
pub const OWNER_FROM_RELEASE: u8 = 2;

/// One flow as the kernel counts it: a socket and the remote endpoint of its packets.
///
/// Unconnected UDP and raw sockets talk to many remotes, so the remote is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `bpf_get_socket_cookie()`: unique per socket for the kernel's lifetime.
    pub cookie: u64,
    /// Remote IP address; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), network byte order.
    pub remote_addr: [u8; 16],
    /// Local port in host byte order; 0 for protocols without ports.
    pub local_port: u16,
    /// Remote port in host byte order; 0 for protocols without ports.
    pub remote_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Counters of one [`FlowKey`] on one CPU. The agent sums the per-CPU values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// L3 bytes sent (IP header included, GSO-corrected to what the wire carries).
    pub tx_bytes: u64,
    /// L3 bytes received (IP header included, GRO-corrected to what the wire carried).
    pub rx_bytes: u64,
    /// Wire packets sent (GSO segments counted one by one).
    pub tx_packets: u64,
    /// Wire packets received (GRO segments counted one by one).
    pub rx_packets: u64,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`]: the first packet this CPU saw for the flow.
    pub first_direction: u8,
    pub _pad: [u8; 7],
}

/// Who created (or, for sockets older than the agent, closed) a socket, and its TCP role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    /// Process id (thread group id) of the creator.
    pub tgid: u32,
    /// Real uid of the creator.
    pub uid: u32,
    /// cgroup v2 id of the creator (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` when the owner was recorded.
    pub recorded_boot_ns: u64,
    /// `bpf_ktime_get_boot_ns()` when the socket was released; 0 while it is open.
    pub released_boot_ns: u64,
    /// `comm` of the creating thread, NUL-padded.
    pub comm: [u8; 16],
    /// [`OWNER_UNKNOWN`], [`OWNER_FROM_CREATE`] or [`OWNER_FROM_RELEASE`].
    pub origin: u8,
    /// 1 for a TCP listener or a connection it accepted: the local port is the service port.
    pub passive: u8,
    pub _pad: [u8; 6],
}

/// Indexes into the `STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A new flow could not be inserted into `FLOWS` (map full): its packets went uncounted.
    FlowInsertFailed = 0,
    /// A socket owner could not be inserted into `SOCKETS` (map full).
    SocketInsertFailed = 1,
    /// Packets whose IP header could not be read (counted with len only, no endpoint).
    MalformedPackets = 2,
}

impl Stat {
    /// Number of entries of the `STATS` array.
    pub const COUNT: u32 = 3;
    /// All stats, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::FlowInsertFailed,
        Stat::SocketInsertFailed,
        Stat::MalformedPackets,
    ];
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 32);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 40);
const _: () = assert!(core::mem::size_of::<SocketOwner>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: `#[repr(C)]`, integer fields only, no implicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketOwner {}
}
