//! BitSecure kernel programs.
//!
//! - `count_egress` / `count_ingress` (cgroup_skb): add every packet of a socket to its
//!   [`FlowKey`] counters, in L3 wire bytes: in `FLOWS` for a connected socket (one remote),
//!   in `PEERS` for a socket that talks to many (a listener's handshakes, unconnected UDP, raw
//!   and the kernel's control sockets). Anyone who can send packets can make a listener or an
//!   unconnected socket grow peers; kept apart, a flood of them cannot crowd connected
//!   sockets out of `FLOWS`, and when `PEERS` is full a new peer's packets are still counted,
//!   against its socket without the remote.
//! - `record_owner` (cgroup/sock_create): remember which process created a socket, in process
//!   context, so even a socket that lives for a millisecond is attributed.
//! - `mark_released` (cgroup/sock_release): stamp the socket as closed so the agent can fold its
//!   counters and free the entries; for sockets the agent never saw created (accepted sockets,
//!   sockets older than the agent) the closing process is recorded as owner.
//! - `mark_passive` (sock_ops): flag TCP listeners and the connections they accept, so the
//!   agent labels them with the local (service) port even after the listener is gone; and
//!   stamp a TCP connection as closed when it reaches CLOSE, which for a connection that
//!   still retransmits its FIN comes after its release, and for one its listener never
//!   accepted comes without one.
//!
//! - `iface_egress` / `iface_ingress` (tc, TCX where the kernel has it):
//!   count every IPv4/IPv6 packet crossing each watched interface of the agent's network
//!   namespace, in the same L3 wire bytes; the socket programs add what they attributed to the
//!   same per-interface entry. The difference is what no socket hook saw: frames of packet
//!   sockets, forwarded packets, packets no socket took. The ingress one also notes IPv4
//!   fragments, so the socket programs count a reassembled datagram as its fragments.
//!
//! The counting programs also hand two kinds of payload bytes to the agent through a ring
//! buffer, for naming remotes and classifying applications: every DNS message received from
//! port 53, and the first payload of each flow in each direction (looked for in its first
//! packets only). Per packet that costs one byte test once a flow's first packets are past.
//!
//! Every program always allows the packet or socket: BitSecure observes, it never filters.
//! Everything that is not packet access (naming, aggregation, statistics) lives in userspace.
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_get_netns_cookie, generated::bpf_get_socket_cookie,
        generated::bpf_ktime_get_boot_ns, generated::bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, cgroup_sock, classifier, map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SkBuffContext, SockContext, SockOpsContext, TcContext, sk_buff::SkBuff},
};
use aya_log_ebpf::warn;
use bitsecure_common::{
    DEFAULT_EVENT_BUFFER_BYTES, DEFAULT_FLOW_CAPACITY, DEFAULT_PEER_CAPACITY,
    DEFAULT_SOCKET_CAPACITY, DIRECTION_EGRESS, DIRECTION_INGRESS, EVENT_DNS, EVENT_FIRST_PAYLOAD,
    EVENT_MORE_PAYLOAD, EVENT_PAYLOAD_MAX, FLOW_MAP_FLAGS, FOLLOW_SHIFT, FlowCounters, FlowKey,
    INTERFACE_SLOTS, InterfaceCounters, OWNER_FROM_CREATE, OWNER_FROM_RELEASE, OWNER_UNKNOWN,
    PayloadEvent, SOCKET_EVENT_BUFFER_BYTES, SocketCreated, SocketOwner, Stat, interface_slot,
    protocol,
};

/// Per-flow counters of connected sockets (bytes are L3 wire bytes, packets are wire
/// packets), one slot per CPU; also the remote-less entry of a many-peer socket whose new
/// peer found `PEERS` full.
#[map]
static FLOWS: PerCpuHashMap<FlowKey, FlowCounters> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, FLOW_MAP_FLAGS);

/// Per-peer counters of sockets that talk to many peers, as in `FLOWS`. The agent folds
/// entries that went idle.
#[map]
static PEERS: PerCpuHashMap<FlowKey, FlowCounters> =
    PerCpuHashMap::with_max_entries(DEFAULT_PEER_CAPACITY, FLOW_MAP_FLAGS);

/// Socket cookie → the process that created (or closed) the socket.
#[map]
static SOCKETS: HashMap<u64, SocketOwner> = HashMap::with_max_entries(DEFAULT_SOCKET_CAPACITY, 0);

/// Event counters (a count of events per [`Stat`] index), one slot per CPU.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Payload bytes for the agent ([`PayloadEvent`]s): DNS responses and first payloads of flows.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_BUFFER_BYTES, 0);

/// Sockets just created ([`SocketCreated`]), for the agent to read their process at once.
#[map]
static SOCKET_EVENTS: RingBuf = RingBuf::with_byte_size(SOCKET_EVENT_BUFFER_BYTES, 0);

/// What crossed each watched interface, and what of it the socket programs attributed.
#[map]
static INTERFACES: PerCpuArray<InterfaceCounters> =
    PerCpuArray::with_max_entries(INTERFACE_SLOTS, 0);

/// IPv4 fragments received on watched interfaces, per datagram, until the socket programs
/// see the datagram they were reassembled into (and count it as these fragments). LRU: a
/// datagram that is never completed (or a flood of fragments) is forgotten, not kept.
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentCounts> =
    LruHashMap::with_max_entries(FRAGMENT_CAPACITY, 0);

/// One IPv4 datagram in fragments: its source, IP identification and protocol.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragmentKey {
    source: [u8; 4],
    id: [u8; 2],
    protocol: u8,
    _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FragmentCounts {
    bytes: u64,
    packets: u64,
}

/// Datagrams in reassembly at once that are remembered.
const FRAGMENT_CAPACITY: u32 = 1024;

/// The agent's network namespace (see `bitsecure_common::global_names`); 0: do not check.
#[unsafe(no_mangle)]
static WATCHED_NETNS_COOKIE: u64 = 0;

/// cgroup_skb: 1 lets the packet through. These programs never return anything else.
const SKB_PASS: i32 = 1;
/// cgroup/sock: 1 lets the socket operation proceed.
const SOCK_ALLOW: i32 = 1;
/// sock_ops: the return value is only read by ops that ask a question; 1 = "ok".
const SOCK_OPS_OK: u32 = 1;
/// tc/TCX: go on with the next program or filter, as if this one were not there.
const TC_NEXT: i32 = -1;
/// Longest link-layer header the tc programs step over.
const MAX_LINK_HEADER: u32 = 64;

const ETH_P_IP: u16 = 0x0800;
/// Address families of `bpf_sock.family`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const ETH_P_IPV6: u16 = 0x86DD;
/// Packets of a flow per direction (and CPU) searched for its first payload: the handshake
/// and a few more.
const FIRST_PACKETS_INSPECTED: u64 = 8;
/// Responses from this remote port are DNS messages, handed over whole (up to the event size).
const DNS_PORT: u16 = 53;
/// The loopback device has this ifindex in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// IPv6 extension headers we step over to find the transport protocol.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// Enough for any real packet; bounded so the verifier sees a finite loop.
const MAX_IPV6_EXT_HEADERS: usize = 4;
/// Largest transport header offset: an IPv6 header and 4 extension headers of 2048 bytes.
const MAX_L4_OFFSET: u32 = 40 + 4 * 2048;

#[cgroup_skb(egress)]
pub fn count_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, DIRECTION_EGRESS);
    SKB_PASS
}

#[cgroup_skb(ingress)]
pub fn count_ingress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, DIRECTION_INGRESS);
    SKB_PASS
}

#[classifier]
pub fn iface_egress(ctx: TcContext) -> i32 {
    count_on_interface(&ctx, DIRECTION_EGRESS);
    TC_NEXT
}

#[classifier]
pub fn iface_ingress(ctx: TcContext) -> i32 {
    count_on_interface(&ctx, DIRECTION_INGRESS);
    TC_NEXT
}

#[cgroup_sock(sock_create)]
pub fn record_owner(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the socket the hook runs for; the helper only reads its cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    if try_record_owner(cookie, OWNER_FROM_CREATE).is_err() {
        bump(Stat::SocketInsertFailed);
        warn!(&ctx, "SOCKETS map full: socket {} not attributed", cookie);
    }
    SOCK_ALLOW
}

#[cgroup_sock(sock_release)]
pub fn mark_released(ctx: SockContext) -> i32 {
    // SAFETY: as in record_owner.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: the helper reads the monotonic boot clock, no memory access.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    match SOCKETS.get_ptr_mut(cookie) {
        // SAFETY: the pointer comes from a successful map lookup and is valid for this program run.
        Some(owner) => unsafe {
            if (*owner).origin == OWNER_UNKNOWN {
                // Accepted socket: the process closing it is its best known owner.
                fill_owner(&mut *owner, OWNER_FROM_RELEASE);
            }
            // A tracked TCP connection lives on after its descriptor (FIN retransmissions):
            // it is done when it reaches CLOSE (see track_tcp).
            if (*owner).tcp_tracked == 0 {
                (*owner).released_boot_ns = now;
            }
        },
        None => {
            // Socket older than the agent: the process closing it is its best known owner.
            let mut owner = SocketOwner::default();
            fill_owner(&mut owner, OWNER_FROM_RELEASE);
            owner.released_boot_ns = now;
            if SOCKETS.insert(cookie, owner, 0).is_err() {
                bump(Stat::SocketInsertFailed);
            }
        }
    }
    SOCK_ALLOW
}

/// TCP roles and ends: marks listeners and the connections they accept as passive (the local
/// port is the service port), and has the kernel report the state changes of every
/// connection established while the agent runs, so its end is when it reaches CLOSE — after
/// its last retransmitted FIN, or when its listener closes before accepting it — not when its
/// descriptor is released.
#[sock_ops]
pub fn mark_passive(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_STATE_CB {
        if ctx.arg(1) == BPF_TCP_CLOSE {
            mark_tcp_closed(&ctx);
        }
        return SOCK_OPS_OK;
    }
    let passive = op == BPF_SOCK_OPS_TCP_LISTEN_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB;
    let established =
        op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB;
    if !passive && !established {
        return SOCK_OPS_OK;
    }
    // SAFETY: ctx.ops is the sock_ops context; the helper reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let tracked = match SOCKETS.get_ptr_mut(cookie) {
        // SAFETY: pointer from a successful map lookup.
        Some(owner) => unsafe {
            (*owner).passive |= passive as u8;
            (*owner).tcp_tracked |= established as u8;
            true
        },
        // An accepted socket: no socket(2) call, and softirq context, so no owner yet.
        None if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let owner = SocketOwner {
                // SAFETY: helper without memory arguments.
                recorded_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
                passive: 1,
                tcp_tracked: 1,
                ..SocketOwner::default()
            };
            let inserted = SOCKETS.insert(cookie, owner, BPF_NOEXIST.into()).is_ok();
            if !inserted {
                bump(Stat::SocketInsertFailed);
            }
            inserted
        }
        // A connection of a socket older than the agent: done when released, as before.
        None => false,
    };
    if established && tracked {
        // Only a socket with a record is tracked: its end must have somewhere to go.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    SOCK_OPS_OK
}

/// Stamps a tracked TCP connection as done: it reached CLOSE.
#[inline(never)]
fn mark_tcp_closed(ctx: &SockOpsContext) {
    // SAFETY: ctx.ops is the sock_ops context; the helper reads the socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if let Some(owner) = SOCKETS.get_ptr_mut(cookie) {
        // SAFETY: pointer from a successful map lookup; the helper reads the boot clock.
        unsafe {
            if (*owner).tcp_tracked != 0 && (*owner).released_boot_ns == 0 {
                (*owner).released_boot_ns = bpf_ktime_get_boot_ns();
            }
        }
    }
}

/// Records the current process as the owner of `cookie`, and tells the agent (best effort: a
/// full ring buffer only means the agent finds the owner at its next poll). Runs in process
/// context only.
fn try_record_owner(cookie: u64, origin: u8) -> Result<(), i32> {
    let mut owner = SocketOwner::default();
    fill_owner(&mut owner, origin);
    SOCKETS.insert(cookie, owner, 0)?;
    if let Some(mut entry) = SOCKET_EVENTS.reserve::<SocketCreated>(0) {
        entry.write(SocketCreated {
            cookie,
            cgroup_id: owner.cgroup_id,
            recorded_boot_ns: owner.recorded_boot_ns,
            tgid: owner.tgid,
            _pad: [0; 4],
            comm: owner.comm,
        });
        entry.submit(0);
    }
    Ok(())
}

/// Fills the owner fields of `owner` from the current task (process context only).
#[inline(always)]
fn fill_owner(owner: &mut SocketOwner, origin: u8) {
    owner.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    owner.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: helpers without memory arguments.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    owner.recorded_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    owner.comm = bpf_get_current_comm().unwrap_or_default();
    owner.origin = origin;
}

/// What the counting needs from one packet's headers.
struct PacketInfo {
    key: FlowKey,
    /// IP header + transport header length: the bytes every GSO segment repeats (only exact
    /// for segmented packets, the only ones it is used for).
    header_len: u32,
    /// Offset of the transport header; 0 when it is not readable (fragments, no ports).
    l4_offset: u32,
}

fn count_packet(ctx: &SkBuffContext, direction: u8) {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: skb is the context pointer the kernel passed in; these are plain context reads.
    let (len, gso_segs, gso_size, l3_protocol, ifindex) = unsafe {
        (
            (*skb).len,
            (*skb).gso_segs,
            (*skb).gso_size,
            (*skb).protocol,
            (*skb).ifindex,
        )
    };
    // SAFETY: as above; the helper reads the cookie of skb->sk.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };

    // A GSO/GRO packet stands for several wire packets, each carrying its own headers.
    // Loopback is the exception: it never segments, it carries the super-packet as is.
    let segmented = (gso_segs > 1 || gso_size != 0) && ifindex != LOOPBACK_IFINDEX;
    // __sk_buff.protocol holds the big-endian 16-bit EtherType.
    let l3_protocol = u16::from_be(l3_protocol as u16);
    let mut info = match read_headers(ctx, l3_protocol, direction, cookie, segmented) {
        Some(info) => info,
        None => {
            bump(Stat::MalformedPackets);
            // Still count the bytes, against an all-zero remote, so totals stay complete.
            PacketInfo {
                key: FlowKey {
                    cookie,
                    ..FlowKey::default()
                },
                header_len: 0,
                l4_offset: 0,
            }
        }
    };

    let segments = if segmented {
        wire_segments(len, gso_segs, gso_size, info.header_len)
    } else {
        1
    };
    let mut wire = Wire {
        bytes: len as u64 + (segments as u64 - 1) * info.header_len as u64,
        packets: segments as u64,
    };
    let interface = if ifindex != LOOPBACK_IFINDEX {
        watched_interface(ifindex)
    } else {
        None
    };
    // The MTU tells a datagram the IP layer fragments (egress: this hook runs before
    // fragmentation) or reassembled (ingress: after reassembly) from the others.
    if let Some(interface) = interface
        && !segmented
    {
        // SAFETY: this CPU's copy of the slot, from a successful lookup in this program run.
        let mtu = unsafe { (*interface).mtu };
        if mtu != 0 && len > mtu {
            let fragments = if direction == DIRECTION_EGRESS {
                fragments_to_send(ctx, l3_protocol, len, mtu)
            } else {
                fragments_received(ctx, l3_protocol)
            };
            if let Some(fragments) = fragments {
                wire = fragments;
            }
        }
    }
    let connected = has_one_remote(skb);
    if connected && info.key.protocol == protocol::TCP {
        use_socket_endpoints(skb, &mut info.key);
    }
    let counters = if connected {
        add_to_flow(&FLOWS, &info.key, direction, &wire)
    } else {
        let counters = add_to_flow(&PEERS, &info.key, direction, &wire);
        if counters.is_none() {
            if count_without_remote(&info.key, direction, &wire) {
                attribute_to_interface(skb, interface, direction, &wire);
            }
            return;
        }
        counters
    };
    let Some(counters) = counters else {
        bump(Stat::FlowInsertFailed);
        return;
    };
    attribute_to_interface(skb, interface, direction, &wire);
    // The common case, a flow whose first payloads are past, costs this one test; the rest
    // is a separate function so it does not weigh on the registers of this path.
    // SAFETY: this CPU's slot of the flow, from a successful lookup in this program run.
    let sampled = unsafe { (*counters).sampled };
    let looking = sampled & direction == 0 || sampled & (direction << FOLLOW_SHIFT) != 0;
    if info.l4_offset != 0 && (looking || is_dns(&info.key)) {
        let packet = Packet {
            direction,
            len,
            segments,
        };
        inspect_payload(ctx, &info, &packet, counters);
    }
}

/// What one packet (or GSO/GRO super-packet) was on the wire.
struct Wire {
    /// L3 bytes: every segment's IP and transport headers and its payload.
    bytes: u64,
    packets: u64,
}

/// The wire packets a segmented (GSO/GRO) packet of `len` L3 bytes stands for. Drivers that
/// merge received packets (virtio-net, tun/tap with vnet headers, LRO) may leave `gso_segs`
/// at 0 with only `gso_size` set: then the count follows from the payload and `gso_size`.
#[inline(always)]
fn wire_segments(len: u32, gso_segs: u32, gso_size: u32, header_len: u32) -> u32 {
    if gso_segs != 0 {
        return gso_segs;
    }
    if gso_size == 0 || len <= header_len {
        return 1;
    }
    (len - header_len).div_ceil(gso_size)
}

/// Adds what a socket program attributed to the interface the packet crossed, if the agent
/// watches it (an interface of its own network namespace; loopback is never watched).
#[inline(always)]
fn attribute_to_interface(
    skb: *mut __sk_buff,
    interface: Option<*mut InterfaceCounters>,
    direction: u8,
    wire: &Wire,
) {
    let Some(interface) = interface else {
        return;
    };
    // SAFETY: a read of a constant the loader may have set.
    let watched_netns = unsafe { read_volatile(&WATCHED_NETNS_COOKIE) };
    // With no cookie set this is dead code the verifier removes, so kernels without the
    // helper for cgroup_skb (before 6.15) still load the program.
    // SAFETY: the helper reads the network namespace of the packet's socket.
    if watched_netns != 0 && unsafe { bpf_get_netns_cookie(skb.cast()) } != watched_netns {
        return;
    }
    // SAFETY: this CPU's copy of the slot, from a successful lookup in this program run.
    unsafe {
        if direction == DIRECTION_EGRESS {
            (*interface).attributed_tx_bytes += wire.bytes;
            (*interface).attributed_tx_packets += wire.packets;
        } else {
            (*interface).attributed_rx_bytes += wire.bytes;
            (*interface).attributed_rx_packets += wire.packets;
        }
    }
}

/// The fragments the IP layer will cut a datagram longer than the MTU into (IPv4 or IPv6).
#[inline(never)]
fn fragments_to_send(ctx: &SkBuffContext, l3_protocol: u16, len: u32, mtu: u32) -> Option<Wire> {
    let (unfragmentable, per_fragment) = if l3_protocol == ETH_P_IP {
        let first: [u8; 2] = load(&ctx.skb, 0)?;
        let ihl = ((first[0] & 0x0f) as u32) * 4;
        (ihl, ihl)
    } else if l3_protocol == ETH_P_IPV6 {
        // Each IPv6 fragment carries an 8-byte fragment header.
        (40, 48)
    } else {
        return None;
    };
    if mtu <= per_fragment + 8 || len <= unfragmentable {
        return None;
    }
    let chunk = (mtu - per_fragment) & !7;
    // Never 0 after the check above; said again so the division has no panic path.
    if chunk == 0 {
        return None;
    }
    let payload = len - unfragmentable;
    let fragments = payload.div_ceil(chunk);
    Some(Wire {
        bytes: payload as u64 + fragments as u64 * per_fragment as u64,
        packets: fragments as u64,
    })
}

/// The fragments a received datagram longer than the MTU was reassembled from, as the
/// interface program noted them. IPv4 only: an IPv6 datagram loses its fragment
/// identification in reassembly, and counts as one packet.
#[inline(never)]
fn fragments_received(ctx: &SkBuffContext, l3_protocol: u16) -> Option<Wire> {
    if l3_protocol != ETH_P_IP {
        return None;
    }
    let header: [u8; 20] = load(&ctx.skb, 0)?;
    let key = FragmentKey {
        source: [header[12], header[13], header[14], header[15]],
        id: [header[4], header[5]],
        protocol: header[9],
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let counted = unsafe { FRAGMENTS.get(key) }.copied()?;
    let _ = FRAGMENTS.remove(key);
    Some(Wire {
        bytes: counted.bytes,
        packets: counted.packets,
    })
}

/// Notes an IPv4 fragment received on a watched interface (see `FRAGMENTS`).
#[inline(never)]
fn note_fragment(ctx: &TcContext, l3_offset: u32, l3_len: u32) {
    let Some(header) = load::<[u8; 20]>(&ctx.skb, l3_offset as usize) else {
        return;
    };
    let key = FragmentKey {
        source: [header[12], header[13], header[14], header[15]],
        id: [header[4], header[5]],
        protocol: header[9],
        _pad: 0,
    };
    match FRAGMENTS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup in this program run.
        Some(counts) => unsafe {
            (*counts).bytes += l3_len as u64;
            (*counts).packets += 1;
        },
        None => {
            let counts = FragmentCounts {
                bytes: l3_len as u64,
                packets: 1,
            };
            let _ = FRAGMENTS.insert(key, counts, 0);
        }
    }
}

/// This CPU's counters of the interface with `ifindex`, if the agent watches it.
#[inline(always)]
fn watched_interface(ifindex: u32) -> Option<*mut InterfaceCounters> {
    let interface = INTERFACES.get_ptr_mut(interface_slot(ifindex))?;
    // SAFETY: this CPU's copy of the slot, from a successful lookup in this program run.
    (unsafe { (*interface).ifindex } == ifindex).then_some(interface)
}

/// Counts an IPv4 or IPv6 packet crossing a watched interface, in the bytes and packets the
/// socket programs count (so that what they attributed can be taken from it exactly).
/// VLAN-tagged frames belong to the VLAN device, which has its own entry.
#[inline(always)]
fn count_on_interface(ctx: &TcContext, direction: u8) {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: skb is the context pointer the kernel passed in; these are plain context reads.
    let (len, gso_segs, gso_size, l3_protocol, ifindex, vlan_present) = unsafe {
        (
            (*skb).len,
            (*skb).gso_segs,
            (*skb).gso_size,
            u16::from_be((*skb).protocol as u16),
            (*skb).ifindex,
            (*skb).vlan_present,
        )
    };
    if vlan_present != 0 || (l3_protocol != ETH_P_IP && l3_protocol != ETH_P_IPV6) {
        return;
    }
    let Some(interface) = watched_interface(ifindex) else {
        return;
    };
    // SAFETY: this CPU's copy of the slot, from a successful lookup in this program run.
    let link_header_len = unsafe { (*interface).link_header_len };
    if link_header_len > MAX_LINK_HEADER || len <= link_header_len {
        return;
    }
    let l3_len = len - link_header_len;
    let mut wire = Wire {
        bytes: l3_len as u64,
        packets: 1,
    };
    if gso_segs > 1 || gso_size != 0 {
        let header_len = segment_header_len(ctx, link_header_len, l3_protocol).unwrap_or(0);
        let segments = wire_segments(l3_len, gso_segs, gso_size, header_len);
        wire.bytes += (segments as u64 - 1) * header_len as u64;
        wire.packets = segments as u64;
    } else if direction == DIRECTION_INGRESS
        && l3_protocol == ETH_P_IP
        // More fragments, or an offset: a piece of a datagram. Most packets stop here, at
        // one bounds-checked read of the flags.
        && load::<[u8; 2]>(&ctx.skb, link_header_len as usize + 6)
            .is_some_and(|flags| u16::from_be_bytes(flags) & 0x3fff != 0)
    {
        note_fragment(ctx, link_header_len, l3_len);
    }
    // SAFETY: as above.
    unsafe {
        if direction == DIRECTION_EGRESS {
            (*interface).wire_tx_bytes += wire.bytes;
            (*interface).wire_tx_packets += wire.packets;
        } else {
            (*interface).wire_rx_bytes += wire.bytes;
            (*interface).wire_rx_packets += wire.packets;
        }
    }
}

/// The IP and transport header length every segment of a segmented packet repeats, as
/// [`read_headers`] finds it, for a packet whose IP header starts at `l3_offset`.
#[inline(never)]
fn segment_header_len(ctx: &TcContext, l3_offset: u32, l3_protocol: u16) -> Option<u32> {
    let l3_offset = l3_offset as usize;
    let (protocol, l4_offset) = if l3_protocol == ETH_P_IP {
        let header: [u8; 20] = load(&ctx.skb, l3_offset)?;
        (header[9], ((header[0] & 0x0f) as usize) * 4)
    } else {
        let header: [u8; 40] = load(&ctx.skb, l3_offset)?;
        let (protocol, offset, _) = skip_ipv6_extensions(&ctx.skb, l3_offset, header[6])?;
        (protocol, offset)
    };
    let transport = match protocol {
        protocol::TCP => {
            let data_offset: [u8; 2] = load(&ctx.skb, l3_offset + l4_offset + 12)?;
            ((data_offset[0] >> 4) as u32) * 4
        }
        _ if protocol::has_ports(protocol) => 8,
        _ => 0,
    };
    Some(l4_offset as u32 + transport)
}

/// What [`inspect_payload`] needs of a packet besides its headers (one argument: BPF
/// functions take five at most).
struct Packet {
    direction: u8,
    /// `skb->len`: IP header to the end of the payload.
    len: u32,
    /// Wire packets it stands for (GSO).
    segments: u32,
}

/// DNS with a server: queries to it and its answers, every one handed over (the agent takes
/// an answer only if this socket asked that server that question).
#[inline(always)]
fn is_dns(key: &FlowKey) -> bool {
    key.remote_port == DNS_PORT && (key.protocol == protocol::UDP || key.protocol == protocol::TCP)
}

/// Hands the payload to the agent if it is a DNS message (to or from port 53) or the flow's
/// first payload in this direction (on this CPU). Packets without payload (handshakes, bare
/// ACKs) do not count.
#[inline(never)]
fn inspect_payload(
    ctx: &SkBuffContext,
    info: &PacketInfo,
    packet: &Packet,
    counters: *mut FlowCounters,
) {
    let (direction, len) = (packet.direction, packet.len);
    let protocol = info.key.protocol;
    let dns = is_dns(&info.key);
    // SAFETY: this CPU's slot of the flow, from a successful lookup in this program run.
    let (sampled, packets) = unsafe {
        let packets = if direction == DIRECTION_EGRESS {
            (*counters).tx_packets
        } else {
            (*counters).rx_packets
        };
        ((*counters).sampled, packets)
    };
    let follow = direction << FOLLOW_SHIFT;
    // The counter already includes this packet.
    if !dns && packets.saturating_sub(packet.segments as u64) >= FIRST_PACKETS_INSPECTED {
        // Only the first packets are looked at: a direction that carried no payload so far
        // (the ACKs of a bulk transfer) is not inspected packet after packet.
        // SAFETY: as above.
        unsafe { (*counters).sampled = (sampled | direction) & !follow };
        return;
    }
    // Bounded again here: the verifier only allows packet offsets it can bound.
    let l4_offset = info.l4_offset;
    if l4_offset > MAX_L4_OFFSET {
        return;
    }
    let payload_offset = match protocol {
        protocol::UDP => l4_offset + 8,
        protocol::TCP => match load::<[u8; 2]>(&ctx.skb, l4_offset as usize + 12) {
            Some(data_offset) => l4_offset + ((data_offset[0] >> 4) as u32) * 4,
            None => return,
        },
        _ => return,
    };
    if len <= payload_offset {
        return;
    }
    let kind = if dns {
        // SAFETY: as above.
        unsafe { (*counters).sampled = sampled | direction };
        EVENT_DNS
    } else if sampled & direction == 0 {
        // A first payload that opens a JSON message: the next ones (in the first packets) go
        // over too.
        // Two bytes, not one: the verifier does not take a one-byte direct-access bound check
        // for the access. A message that short is not JSON; one that cannot be read ends here
        // (comparing the Option would read an unset register).
        let json = match load::<[u8; 2]>(&ctx.skb, payload_offset as usize) {
            Some(first) => first[0] == b'{',
            None => return,
        };
        let follow_bit = if json { follow } else { 0 };
        // SAFETY: as above.
        unsafe { (*counters).sampled = sampled | direction | follow_bit };
        EVENT_FIRST_PAYLOAD
    } else if sampled & follow != 0 {
        EVENT_MORE_PAYLOAD
    } else {
        return;
    };
    hand_over(
        ctx,
        &info.key,
        kind,
        direction,
        payload_offset,
        len - payload_offset,
    );
}

/// Copies up to [`EVENT_PAYLOAD_MAX`] payload bytes into a ring buffer event; a full ring buffer
/// is counted, never waited for.
#[inline(always)]
fn hand_over(
    ctx: &SkBuffContext,
    key: &FlowKey,
    kind: u8,
    direction: u8,
    payload_offset: u32,
    payload_len: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<PayloadEvent>(0) else {
        bump(Stat::EventsDropped);
        return;
    };
    let captured = payload_len.min(EVENT_PAYLOAD_MAX as u32);
    // The verifier must see 1..=EVENT_PAYLOAD_MAX on the very register handed to the helper.
    // LLVM drops checks it can prove redundant, so hide the range from it first.
    // SAFETY: a read of a local.
    let captured = unsafe { core::ptr::read_volatile(&captured) };
    if captured == 0 || captured > EVENT_PAYLOAD_MAX as u32 {
        entry.discard(0);
        return;
    }
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of size_of::<PayloadEvent>() bytes; the copy
    // writes 1..=EVENT_PAYLOAD_MAX bytes into its `data` array.
    let copied = unsafe {
        (*event).key = *key;
        (*event).payload_len = payload_len;
        (*event).captured_len = captured;
        (*event).kind = kind;
        (*event).direction = direction;
        (*event)._pad = [0; 6];
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            payload_offset,
            (*event).data.as_mut_ptr().cast(),
            captured,
        )
    };
    if copied == 0 {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}

/// Whether the packet's socket is connected: it has a remote port, so all its packets go to
/// one remote. Listeners, unconnected UDP, raw sockets and the kernel's control sockets (RSTs,
/// ICMP errors) have none. `__sk_buff.sk` is the socket the hook runs for (a listener for its
/// handshakes).
#[inline(always)]
fn has_one_remote(skb: *const __sk_buff) -> bool {
    // SAFETY: a context read; the verifier allows the socket fields read below once the
    // pointer is checked for null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    // SAFETY: checked for null; dst_port is a sock_common field, readable for any socket.
    !sk.is_null() && unsafe { (*sk).dst_port } != 0
}

/// Keys a TCP packet by its socket's endpoints, not its header's: what the application
/// connected to, before any NAT on this host (an OUTPUT DNAT or REDIRECT rewrites what leaves,
/// and the replies come back rewritten to the original), so a connection is one flow. TCP only:
/// a connected UDP socket may still `sendto` another address, and that packet is its own.
#[inline(always)]
fn use_socket_endpoints(skb: *const __sk_buff, key: &mut FlowKey) {
    // SAFETY: a context read; the socket fields below are read once it is checked for null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: sock_common fields, readable for any socket. Each is loaded once, volatile and
    // unconditionally: the verifier forbids pointer arithmetic on a socket, so no load may
    // take an address the compiler picked by branch (or merged into a wider load).
    let (family, ipv4, ipv6, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).dst_ip4),
            [
                read_volatile(&raw const (*sk).dst_ip6[0]),
                read_volatile(&raw const (*sk).dst_ip6[1]),
                read_volatile(&raw const (*sk).dst_ip6[2]),
                read_volatile(&raw const (*sk).dst_ip6[3]),
            ],
            read_volatile(&raw const (*sk).src_port),
            read_volatile(&raw const (*sk).dst_port),
        )
    };
    let mut remote = [0u8; 16];
    if family == AF_INET {
        remote[10] = 0xff;
        remote[11] = 0xff;
        remote[12..16].copy_from_slice(&ipv4.to_ne_bytes());
    } else if family == AF_INET6 {
        for (chunk, word) in remote.chunks_exact_mut(4).zip(ipv6) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        return;
    }
    key.remote_addr = remote;
    // A socket reaching CLOSE gives its local port back (the RST of a close with unread data
    // leaves after that): then the header's port, which is the same one, stands.
    if local_port != 0 {
        key.local_port = local_port as u16;
    }
    key.remote_port = u16::from_be(remote_port);
}

/// Counts a packet of a many-peer socket whose new peer found `PEERS` full: in the socket's
/// remote-less `FLOWS` entry (one per socket and local port), so its bytes still count for the
/// socket's process. Its payload is not inspected.
#[inline(never)]
fn count_without_remote(key: &FlowKey, direction: u8, wire: &Wire) -> bool {
    bump(Stat::PeerInsertFailed);
    let socket_key = FlowKey {
        cookie: key.cookie,
        local_port: key.local_port,
        protocol: key.protocol,
        ..FlowKey::default()
    };
    let counted = add_to_flow(&FLOWS, &socket_key, direction, wire).is_some();
    if !counted {
        bump(Stat::FlowInsertFailed);
    }
    counted
}

/// Adds a packet to its flow in `map`; returns this CPU's counters of the flow (None if the
/// map is full).
#[inline(always)]
fn add_to_flow(
    map: &PerCpuHashMap<FlowKey, FlowCounters>,
    key: &FlowKey,
    direction: u8,
    wire: &Wire,
) -> Option<*mut FlowCounters> {
    let counters = match map.get_ptr_mut(key) {
        Some(counters) => counters,
        None => {
            let fresh = FlowCounters {
                first_direction: direction,
                ..FlowCounters::default()
            };
            // BPF_NOEXIST: if another CPU raced us to insert, its entry is as good as ours.
            let _ = map.insert(key, fresh, BPF_NOEXIST.into());
            map.get_ptr_mut(key)?
        }
    };
    // SAFETY: pointer from a successful lookup of this CPU's slot; no other CPU writes it.
    unsafe {
        if direction == DIRECTION_EGRESS {
            (*counters).tx_bytes += wire.bytes;
            (*counters).tx_packets += wire.packets;
        } else {
            (*counters).rx_bytes += wire.bytes;
            (*counters).rx_packets += wire.packets;
        }
    }
    Some(counters)
}

fn bump(stat: Stat) {
    if let Some(count) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: this CPU's slot of a per-CPU array; no other CPU writes it.
        unsafe { *count += 1 };
    }
}

/// Reads the remote address, ports and transport protocol from the packet, and for a
/// `segmented` (GSO/GRO) packet the length of the headers each segment repeats.
///
/// In cgroup_skb programs the packet data starts at the IP header in both directions.
#[inline(always)]
fn read_headers(
    ctx: &SkBuffContext,
    l3_protocol: u16,
    direction: u8,
    cookie: u64,
    segmented: bool,
) -> Option<PacketInfo> {
    let mut key = FlowKey {
        cookie,
        ..FlowKey::default()
    };
    let (protocol, l4_offset, fragment_tail) = if l3_protocol == ETH_P_IP {
        let header: [u8; 20] = load(&ctx.skb, 0)?;
        let ihl = ((header[0] & 0x0f) as usize) * 4;
        // A non-first fragment carries no transport header.
        let fragment_offset = u16::from_be_bytes([header[6] & 0x1f, header[7]]);
        let remote = if direction == DIRECTION_EGRESS {
            16
        } else {
            12
        };
        key.remote_addr[10] = 0xff;
        key.remote_addr[11] = 0xff;
        key.remote_addr[12..16].copy_from_slice(&header[remote..remote + 4]);
        (header[9], ihl, fragment_offset != 0)
    } else if l3_protocol == ETH_P_IPV6 {
        let header: [u8; 40] = load(&ctx.skb, 0)?;
        let remote = if direction == DIRECTION_EGRESS { 24 } else { 8 };
        key.remote_addr
            .copy_from_slice(&header[remote..remote + 16]);
        let (protocol, offset, fragment_tail) = skip_ipv6_extensions(&ctx.skb, 0, header[6])?;
        (protocol, offset, fragment_tail)
    } else {
        return None;
    };
    key.protocol = protocol;

    let mut header_len = l4_offset as u32;
    let mut transport_offset = 0;
    if !fragment_tail && protocol::has_ports(protocol) {
        transport_offset = l4_offset as u32;
        let ports: [u8; 4] = load(&ctx.skb, l4_offset)?;
        let source = u16::from_be_bytes([ports[0], ports[1]]);
        let destination = u16::from_be_bytes([ports[2], ports[3]]);
        (key.local_port, key.remote_port) = if direction == DIRECTION_EGRESS {
            (source, destination)
        } else {
            (destination, source)
        };
        // Only segmented packets need the TCP header's length: spare the read otherwise.
        header_len += if protocol == protocol::TCP && segmented {
            // Two bytes, not one: for a 1-byte read LLVM turns the bounds check into a form
            // (`data_end > ptr`) the verifier does not accept as covering the byte.
            let data_offset: [u8; 2] = load(&ctx.skb, l4_offset + 12)?;
            ((data_offset[0] >> 4) as u32) * 4
        } else {
            8
        };
    }
    Some(PacketInfo {
        key,
        header_len,
        l4_offset: transport_offset,
    })
}

/// Walks the extension headers of the IPv6 header at `l3_offset`; returns (transport
/// protocol, its offset from the IPv6 header, non-first fragment).
#[inline(always)]
fn skip_ipv6_extensions(skb: &SkBuff, l3_offset: usize, first: u8) -> Option<(u8, usize, bool)> {
    let mut next = first;
    let mut offset = 40usize;
    let mut fragment_tail = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: [u8; 2] = load(skb, l3_offset + offset)?;
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 4] = load(skb, l3_offset + offset)?;
                next = ext[0];
                fragment_tail = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0;
                offset += 8;
            }
            _ => return Some((next, offset, fragment_tail)),
        }
    }
    Some((next, offset, fragment_tail))
}

/// The one bounds-checked way to read packet bytes.
///
/// IP and transport headers are nearly always in the linear part of the skb, where a direct,
/// bounds-checked read is far cheaper than a helper call; otherwise `bpf_skb_load_bytes`.
#[inline(always)]
fn load<T: Copy>(skb_ref: &SkBuff, offset: usize) -> Option<T> {
    let skb = skb_ref.skb;
    // SAFETY: plain reads of the context's data pointers.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: the range was just checked to lie within the packet's linear data.
        return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    skb_ref.load::<T>(offset).ok()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
