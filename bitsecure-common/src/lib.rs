//! Types shared between the kernel programs (`bitsecure-ebpf`) and the agent (`bitsecure`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree on the byte layout
//! of every map key and value. Size asserts catch accidental layout changes at compile time.
#![no_std]

/// Map names, as the kernel side declares them and the agent looks them up.
pub mod map_names {
    /// Per-CPU hash: [`FlowKey`](crate::FlowKey) → [`FlowCounters`](crate::FlowCounters), for
    /// connected sockets (one remote each).
    pub const FLOWS: &str = "FLOWS";
    /// Per-CPU hash like `FLOWS`, for the peers of sockets that talk to many (listeners'
    /// handshakes, unconnected UDP, raw and the kernel's control sockets).
    pub const PEERS: &str = "PEERS";
    /// Hash: socket cookie (`u64`) → [`SocketOwner`](crate::SocketOwner).
    pub const SOCKETS: &str = "SOCKETS";
    /// Per-CPU array of `u64` event counters, indexed by [`Stat`](crate::Stat).
    pub const STATS: &str = "STATS";
    /// Ring buffer of [`PayloadEvent`](crate::PayloadEvent)s.
    pub const EVENTS: &str = "EVENTS";
    /// Ring buffer of [`SocketCreated`](crate::SocketCreated) events: who made a socket, told
    /// at once so the agent reads the process's executable before a short-lived one is gone.
    pub const SOCKET_EVENTS: &str = "SOCKET_EVENTS";
    /// Per-CPU array of [`InterfaceCounters`](crate::InterfaceCounters), one slot per watched
    /// interface of the agent's network namespace at
    /// [`interface_slot`](crate::interface_slot)`(ifindex)`, filled in by the agent.
    pub const INTERFACES: &str = "INTERFACES";
}

/// Names of the kernel programs' global constants, set by the agent at load time.
pub mod global_names {
    /// `u64`: the cookie of the agent's network namespace (`SO_NETNS_COOKIE`), whose
    /// interfaces the `INTERFACES` map watches; 0 when the kernel cannot tell a packet's
    /// namespace in a cgroup_skb program (before 6.15): then every namespace's packets count
    /// for the interface with their ifindex.
    pub const WATCHED_NETNS_COOKIE: &str = "WATCHED_NETNS_COOKIE";
}

/// IP protocol numbers and their names: the one table the kernel (which protocols have
/// ports), the `protocol` label and baseline rules (`tcp`, `udp`, ...) agree on.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// The protocols known by name, as labels and baseline rules write them; any other
    /// protocol is written as its number.
    pub const NAMES: [(u8, &str); 5] = [
        (TCP, "tcp"),
        (UDP, "udp"),
        (ICMP, "icmp"),
        (ICMPV6, "icmpv6"),
        (SCTP, "sctp"),
    ];

    /// The name of a protocol number, if it has one.
    pub fn name(number: u8) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(known, _)| *known == number)
            .map(|(_, name)| *name)
    }

    /// The number of a protocol name (in any case), if known.
    pub fn number(name: &str) -> Option<u8> {
        NAMES
            .iter()
            .find(|(_, known)| known.eq_ignore_ascii_case(name))
            .map(|(number, _)| *number)
    }

    /// Whether the protocol's header starts with source and destination ports.
    #[inline(always)]
    pub const fn has_ports(protocol: u8) -> bool {
        matches!(protocol, TCP | UDP | UDPLITE | SCTP)
    }
}

/// Default capacity of the `FLOWS` map (entries; the agent may override it at load time).
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Default capacity of the `PEERS` map (entries; the agent may override it at load time).
pub const DEFAULT_PEER_CAPACITY: u32 = 65_536;
/// Flags of the `FLOWS` and `PEERS` maps: none, so their elements are preallocated. Anyone
/// who can send packets adds peers, and a map that allocates per new entry takes the kernel's
/// atomic per-CPU memory in softirq context: under a SYN flood such maps (`BPF_F_NO_PREALLOC`)
/// failed 626 and 1,440 `FLOWS` inserts of new connections in two runs, their packets lost.
/// A preallocated element may be handed to a new entry while a program on another CPU still
/// adds to it; the agent deletes only entries nothing should be sending to any more (sockets
/// closed a grace period ago, TCP connections once they reached CLOSE, peers idle for two
/// polls), so at worst one packet racing its own fold lands on another entry.
pub const FLOW_MAP_FLAGS: u32 = 0;
/// Slots of the `INTERFACES` array. An array, not a hash: its lookup is a bounds check and an
/// offset, on every packet of a watched interface.
pub const INTERFACE_SLOTS: u32 = 1024;

/// The `INTERFACES` slot of an interface. Two watched interfaces whose indexes share a slot
/// cannot both be watched (the agent says so); the slot records its ifindex, so a packet of
/// an interface that is not watched never counts for one that is.
#[inline(always)]
pub const fn interface_slot(ifindex: u32) -> u32 {
    ifindex & (INTERFACE_SLOTS - 1)
}
/// Default capacity of the `SOCKETS` map (entries; the agent may override it at load time).
pub const DEFAULT_SOCKET_CAPACITY: u32 = 65_536;

/// Default size of the `EVENTS` ring buffer in bytes (a power of two, at least a page; the agent
/// may override it at load time).
pub const DEFAULT_EVENT_BUFFER_BYTES: u32 = 256 * 1024;

/// Size of the `SOCKET_EVENTS` ring buffer in bytes: 1,365 [`SocketCreated`] events waiting
/// (the agent reads them as they come). When it is full, an owner is found at the next poll
/// instead, as before the event existed.
pub const SOCKET_EVENT_BUFFER_BYTES: u32 = 64 * 1024;

/// Most payload bytes one [`PayloadEvent`] carries: enough for a DNS response without EDNS
/// padding, a TLS ClientHello up to its server name, an HTTP request line and headers.
pub const EVENT_PAYLOAD_MAX: usize = 1024;

/// [`PayloadEvent::kind`]: a DNS message to or from port 53 (every one is handed over): a
/// query this host sent ([`DIRECTION_EGRESS`]) or an answer it received ([`DIRECTION_INGRESS`]).
pub const EVENT_DNS: u8 = 1;
/// [`PayloadEvent::kind`]: the first payload of a flow in one direction (once per CPU).
pub const EVENT_FIRST_PAYLOAD: u8 = 2;

/// [`PayloadEvent::kind`]: a later payload of a flow whose first payload in that direction
/// was JSON (newline-delimited JSON-RPC: Stratum), within its first packets.
pub const EVENT_MORE_PAYLOAD: u8 = 3;
/// [`FlowCounters::sampled`]: the direction bits shifted by this are the "follow" bits.
pub const FOLLOW_SHIFT: u8 = 4;

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
    /// The directions (bit mask of [`DIRECTION_EGRESS`] and [`DIRECTION_INGRESS`]) whose first
    /// payload this CPU has handed over as an [`EVENT_FIRST_PAYLOAD`] event (or tried to); the
    /// same bits shifted by [`FOLLOW_SHIFT`]: directions whose first payload was JSON (`{`),
    /// whose next payloads in the first packets go over too ([`EVENT_MORE_PAYLOAD`]: the
    /// Stratum login may follow a subscribe).
    pub sampled: u8,
    pub _pad: [u8; 6],
}

/// What crossed one interface (one CPU's share), in L3 wire bytes and wire packets like
/// [`FlowCounters`]: everything the interface carried (IPv4 and IPv6, counted by the tc
/// programs) and what the socket programs attributed to a socket. The difference is traffic
/// no socket hook saw: packet sockets, forwarding, tunnels' outer headers, packets no socket
/// took.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub wire_tx_bytes: u64,
    pub wire_rx_bytes: u64,
    pub wire_tx_packets: u64,
    pub wire_rx_packets: u64,
    pub attributed_tx_bytes: u64,
    pub attributed_rx_bytes: u64,
    pub attributed_tx_packets: u64,
    pub attributed_rx_packets: u64,
    /// Bytes before the IP header in the tc programs' view (14 on Ethernet, 0 on IP-only
    /// devices such as WireGuard or tun), written by the agent.
    pub link_header_len: u32,
    /// The interface the slot counts for, written by the agent; 0: none (ifindexes start at 1).
    pub ifindex: u32,
    /// The interface's MTU, written by the agent: a datagram longer than it is fragmented on
    /// the way out, and was reassembled on the way in. 0: unknown.
    pub mtu: u32,
    pub _pad: [u8; 4],
}

/// The first bytes of a packet's payload, handed to the agent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    /// The flow the packet belongs to.
    pub key: FlowKey,
    /// Payload bytes in the packet (transport header excluded).
    pub payload_len: u32,
    /// Bytes of `data` filled in: `min(payload_len, EVENT_PAYLOAD_MAX)`.
    pub captured_len: u32,
    /// [`EVENT_DNS`] or [`EVENT_FIRST_PAYLOAD`].
    pub kind: u8,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
    pub _pad: [u8; 6],
    /// The first `captured_len` payload bytes.
    pub data: [u8; EVENT_PAYLOAD_MAX],
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
    /// `bpf_ktime_get_boot_ns()` when the socket was done: released, or for a tracked TCP
    /// connection ([`SocketOwner::tcp_tracked`]) when it reached CLOSE; 0 while it is open.
    pub released_boot_ns: u64,
    /// `comm` of the creating thread, NUL-padded.
    pub comm: [u8; 16],
    /// [`OWNER_UNKNOWN`], [`OWNER_FROM_CREATE`] or [`OWNER_FROM_RELEASE`].
    pub origin: u8,
    /// 1 for a TCP listener or a connection it accepted: the local port is the service port.
    pub passive: u8,
    /// 1 for a TCP connection established while the agent ran: the kernel reports its state
    /// changes, so it is done when it reaches CLOSE (after its last retransmitted FIN, or
    /// when its listener closes before accepting it), not when its descriptor is released.
    pub tcp_tracked: u8,
    pub _pad: [u8; 5],
}

/// A socket just created, and the owner recorded for it in `SOCKETS` (the same fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCreated {
    /// `bpf_get_socket_cookie()` of the new socket.
    pub cookie: u64,
    /// cgroup v2 id of the creator.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` when the owner was recorded.
    pub recorded_boot_ns: u64,
    /// Process id (thread group id) of the creator.
    pub tgid: u32,
    pub _pad: [u8; 4],
    /// `comm` of the creating thread, NUL-padded.
    pub comm: [u8; 16],
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
    /// Events not handed over because the `EVENTS` ring buffer was full.
    EventsDropped = 3,
    /// Packets of a new peer of a many-peer socket counted without their remote (in the
    /// socket's remote-less `FLOWS` entry) because `PEERS` was full.
    PeerInsertFailed = 4,
}

impl Stat {
    /// Number of entries of the `STATS` array.
    pub const COUNT: u32 = 5;
    /// All stats, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::FlowInsertFailed,
        Stat::SocketInsertFailed,
        Stat::MalformedPackets,
        Stat::EventsDropped,
        Stat::PeerInsertFailed,
    ];
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 32);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 40);
const _: () = assert!(core::mem::size_of::<SocketOwner>() == 56);
const _: () = assert!(core::mem::size_of::<InterfaceCounters>() == 80);
const _: () = assert!(core::mem::size_of::<SocketCreated>() == 48);
const _: () = assert!(SOCKET_EVENT_BUFFER_BYTES.is_power_of_two());
const _: () = assert!(INTERFACE_SLOTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 48 + EVENT_PAYLOAD_MAX);
// The kernel's ring buffer reserves 8-byte aligned records.
const _: () = assert!(core::mem::align_of::<PayloadEvent>() <= 8);
const _: () = assert!(EVENT_PAYLOAD_MAX.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: `#[repr(C)]`, integer fields only, no implicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PayloadEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterfaceCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketCreated {}
}

#[cfg(test)]
mod tests {
    use super::protocol;

    #[test]
    fn protocol_names_and_numbers_round_trip() {
        for (number, name) in protocol::NAMES {
            assert_eq!(protocol::name(number), Some(name));
            assert_eq!(protocol::number(name), Some(number));
        }
        assert_eq!(protocol::number("TCP"), Some(6));
        assert_eq!(protocol::name(253), None);
        assert_eq!(protocol::number("gre"), None);
        assert!(protocol::has_ports(protocol::UDPLITE));
        assert!(!protocol::has_ports(protocol::ICMPV6));
    }
}
