//! The poller: reads the kernel maps, attributes each flow to a process, and folds closed
//! sockets so the kernel maps never silently fill. A producer: each poll returns a
//! [`PollReport`] of what it saw (attributed flow deltas, new processes, kernel statistics);
//! it holds no metric handles and knows nothing of series or labels.
//!
//! Kernel counters are cumulative per flow; the poller remembers the last value it saw and
//! passes on only the difference. A flow whose owner is not known yet is simply not advanced:
//! its bytes stay in the kernel counter until the owner is found, so nothing is lost or
//! attributed twice.
//!
//! Two kernel maps hold flows: `FLOWS` for connected sockets (an entry lives as long as its
//! socket) and `PEERS` for the peers of sockets that talk to many (listeners, unconnected UDP,
//! raw and control sockets), where anyone who can send packets can add entries. Peer entries
//! are folded once idle, whatever their socket; a listener's handshake with a peer is
//! accounted in the series of the connection it accepted (same addresses and ports), so a
//! server has one series per service, not a second one for its handshakes.
//!
//! This file owns the poll itself (read → attribute → account → fold → report), the kernel
//! maps, what was accounted for of each kernel flow, the payload events handed to naming and
//! the kernel statistics. Who owns a socket is `owners.rs`'s business, the `port` label
//! `service_port.rs`'s, a process's identity `identity.rs`'s and the netlink dumps
//! `sock_diag.rs`'s: this file only calls them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use bitsecure_common::{
    DIRECTION_EGRESS, FlowCounters, FlowKey, PayloadEvent, SocketCreated, SocketOwner, Stat,
};
use log::{info, warn};

use crate::{
    flow::{AskedName, FlowDelta, RemoteName, Traffic},
    kernel::KernelMaps,
    kernel::batch,
    naming::App,
    naming::{AppDecision, Asker, EventCounts, Naming, Scope, remote_address},
    poller::{
        identity::ProcessIdentity,
        interfaces::{InterfaceDelta, InterfaceTotals},
        owners::Owners,
        packet_sockets::{PacketSocketClass, PacketSockets},
    },
    state::SeenFlow,
};

pub mod blind_spots;
pub mod cgroups;
pub mod executables;
pub mod identity;
pub mod interfaces;
mod owners;
pub mod packet_sockets;
pub mod proc_net;
mod service_port;
pub mod sock_diag;

pub use service_port::{Role, service_port};

/// Polls a TCP peer entry (a listener's handshake) waits for the connection it belongs to
/// before it is accounted on its own: the accepted socket's first packet comes right after
/// the handshake, unless neither side speaks.
const HANDSHAKE_WAIT_POLLS: u8 = 2;
/// A process as naming tells askers of DNS apart: its executable (for a trusted resolver),
/// and its name and cgroup hashed. Not the executable: a short-lived process (a lookup
/// helper) may be gone before /proc is read, and its names must still be its own process's;
/// the name and cgroup come from the kernel's record. (Another program under the same name in
/// the same cgroup shares them: its traffic is an impostor's anyway.)
fn asker(owner: &ProcessIdentity) -> Asker {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(&owner.name, &owner.cgroup), &mut hasher);
    Asker {
        exe: owner.exe.clone(),
        id: std::hash::Hasher::finish(&hasher),
    }
}

/// Takes the owners of the sockets just created (at most a ring buffer's worth).
fn read_socket_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, owners: &mut Owners) {
    for _ in 0..SOCKET_EVENTS_PER_READ {
        let Some(item) = ring.next() else {
            break;
        };
        if item.len() >= size_of::<SocketCreated>() {
            // SAFETY: the kernel wrote a whole SocketCreated (checked length); read unaligned,
            // as the ring buffer guarantees only 8-byte alignment.
            let created =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SocketCreated>()) };
            owners.note_created(&created);
        }
    }
}

/// Whose DNS answers name a process's flows: its own, and trusted resolvers'.
fn owner_scope(naming: &Naming, owner: &ProcessIdentity) -> Scope {
    let asker = asker(owner);
    naming.scope_of(asker.exe.as_deref(), asker.id)
}

/// Most socket events one [`Poller::read_events`] takes: the ring buffer's worth.
const SOCKET_EVENTS_PER_READ: usize =
    bitsecure_common::SOCKET_EVENT_BUFFER_BYTES as usize / size_of::<SocketCreated>();
/// Idle polls after which a peer entry is folded.
const PEER_IDLE_POLLS: u32 = 2;
/// A peer entry whose application was recognised is kept this long idle: folded and seen
/// again, its application would be decided anew from a payload in mid-conversation.
const RECOGNISED_PEER_IDLE: Duration = Duration::from_secs(60);

/// What the poller has accounted for of one kernel flow; decided once, so a flow's series
/// never changes.
#[derive(Debug, Clone, PartialEq)]
struct Accounted {
    /// Cumulative kernel counters as of the last poll.
    counters: Traffic,
    /// The service port.
    port: Option<u16>,
    app: App,
    /// Known from the flow's own first bytes or the name map when it started; looked up again
    /// while unknown. Kept for the flow's life, so an expiring DNS entry does not rename it.
    name: Option<RemoteName>,
    /// A listener's handshake accounted in the series of the connection it accepted.
    merged: bool,
    /// The account a Stratum flow logged in with (the latest seen).
    account: Option<String>,
    /// Polls in a row without new traffic.
    idle_polls: u32,
}

impl Accounted {
    /// The attributed delta of `traffic`, new in this flow since the last poll.
    fn delta(&self, key: &FlowKey, owner: &ProcessIdentity, traffic: Traffic) -> FlowDelta {
        FlowDelta {
            process: owner.name.clone(),
            exe: owner.exe.clone(),
            exe_sha256: owner.sha256.clone(),
            cgroup: owner.cgroup.clone(),
            new_flow: self.counters == Traffic::default(),
            remote: IpAddr::V6(Ipv6Addr::from(key.remote_addr)),
            port: self.port,
            protocol: key.protocol,
            app: self.app,
            name: self.name.clone(),
            account: self.account.clone(),
            traffic,
        }
    }
}

/// One read of the kernel's flow and socket maps.
struct Snapshot {
    /// Every kernel flow: those of `FLOWS` first, then those of `PEERS`.
    flows: Vec<KernelFlow>,
    /// The kernel's record of each socket, by cookie.
    sockets: HashMap<u64, SocketOwner>,
}

impl Snapshot {
    /// The socket of each flow read (a socket with several flows comes again).
    fn flow_cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.flows.iter().map(|flow| flow.key.cookie)
    }
}

/// One entry of the kernel's flow maps, its per-CPU counters summed.
struct KernelFlow {
    key: FlowKey,
    /// Cumulative counters.
    traffic: Traffic,
    /// Some CPU saw the flow's first packet leave this host.
    egress_first: bool,
    /// From `PEERS` only (a socket connected after talking unconnected has its flow in both
    /// maps: one `FLOWS` entry, the sum of both).
    peer: bool,
}

/// Where a TCP peer entry (a listener's handshake, or a control socket's reply) is accounted.
enum Handshake {
    /// In the series of the connected flow with the same addresses and ports.
    Connection(FlowKey),
    /// Not yet: that connection may still show up.
    Wait,
    /// On its own socket's series.
    Own,
}

/// What accounting one attributed flow gave.
// Returned once per flow and consumed at once: boxing the delta would allocate per flow.
#[allow(clippy::large_enum_variant)]
enum Accounting {
    /// Not advanced: its application waits for its first payloads (see [`AppDecision::Wait`]).
    Deferred,
    /// Nothing new since the last poll.
    Unchanged,
    /// New traffic.
    Delta(FlowDelta),
}

/// The kernel maps and what was learnt of them, from one poll to the next.
pub struct Poller {
    maps: KernelMaps,
    cpus: usize,
    /// A closed socket is folded this long after its release, so in-flight data (TCP sends
    /// continue after close()) is counted before the entries are deleted.
    close_grace: Duration,
    /// What was accounted for of each kernel flow.
    last_seen: HashMap<FlowKey, Accounted>,
    /// Names and applications, from the kernel's payload events.
    naming: Naming,
    /// Who owns each socket.
    owners: Owners,
    /// Last value of each kernel statistic, so reports carry what is new.
    last_stats: [u64; Stat::COUNT as usize],
    /// Processes already reported as new on the network.
    reported_processes: HashSet<ProcessIdentity>,
    /// Most payload events one [`Poller::read_events`] takes: about a ring buffer's worth.
    events_per_ring: usize,
    ephemeral_ports: (u16, u16),
    /// Polls each unmatched TCP peer entry has waited for its connection.
    handshakes_waiting: HashMap<FlowKey, u8>,
    /// Idle polls after which a peer entry with a recognised application is folded.
    recognised_peer_idle_polls: u32,
    packet_sockets: PacketSockets,
    interface_totals: InterfaceTotals,
}

/// One poll's outcome, for logs and tests.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Entries read from the kernel's flow, peer and socket maps.
    pub flows: usize,
    pub peers: usize,
    pub sockets: usize,
    /// Closed sockets folded and deleted from the kernel maps.
    pub folded_sockets: usize,
    /// Idle peer entries folded and deleted from the kernel map.
    pub folded_peers: usize,
    /// Packet and raw sockets on the host, per holder and protocol.
    pub packet_sockets: BTreeMap<PacketSocketClass, usize>,
    /// What crossed each watched interface, and what of it no socket accounted for.
    pub interfaces: Vec<InterfaceDelta>,
    /// Forwarding and XDP programs: paths the counters cannot follow.
    pub blind_spots: blind_spots::BlindSpots,
    /// Flows whose owner is still being looked up (not counted yet).
    pub deferred_flows: usize,
    /// New traffic of this poll per kernel flow, attributed (before cardinality folding).
    pub deltas: Vec<FlowDelta>,
    /// Sockets given up on as `unknown` in this poll (their owner was not found).
    pub unattributed_sockets: u64,
    /// Processes seen on the network for the first time.
    pub new_processes: Vec<ProcessIdentity>,
    /// What the kernel programs counted since the last poll.
    pub kernel: KernelStats,
    /// Payload events read in this poll.
    pub events: EventCounts,
    /// Addresses in the address -> name map.
    pub names: usize,
    /// Pools that told a miner to connect elsewhere (`client.reconnect`): process, the pool
    /// (remote address) and where to.
    pub redirects: Vec<(String, String, String)>,
    /// The DNS questions processes asked since the last poll.
    pub asked: Vec<AskedName>,
    /// How long the poll took.
    pub duration: Duration,
}

/// The kernel programs' own statistics (the STATS map), new since the last poll.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    /// Packets not counted: the flow map was full.
    pub flow_insert_failures: u64,
    /// Socket owners not recorded: the socket map was full.
    pub socket_insert_failures: u64,
    /// Packets whose headers could not be read.
    pub malformed_packets: u64,
    /// Payload events dropped: the ring buffer was full.
    pub events_dropped: u64,
    /// Packets of new peers counted without their remote: the peer map was full.
    pub peer_insert_failures: u64,
}

impl Poller {
    /// `watched_cgroup`: the cgroup path (as `/proc/PID/cgroup` writes it) whose packet
    /// sockets are listed; `None`: every process's.
    pub fn new(
        maps: KernelMaps,
        naming: Naming,
        poll_interval: Duration,
        watched_cgroup: Option<String>,
    ) -> anyhow::Result<Self> {
        let events_per_ring = (maps.event_bytes as usize / size_of::<PayloadEvent>()).max(1);
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, error)| anyhow::anyhow!("cannot read {path}: {error}"))?;
        Ok(Self {
            maps,
            cpus,
            close_grace: (poll_interval * 2).max(Duration::from_secs(2)),
            last_seen: HashMap::new(),
            naming,
            owners: Owners::new(PathBuf::from("/proc"), cgroups::CgroupPaths::of_host()),
            packet_sockets: PacketSockets::new(PathBuf::from("/proc"), watched_cgroup),
            interface_totals: InterfaceTotals::default(),
            last_stats: [0; Stat::COUNT as usize],
            reported_processes: HashSet::new(),
            events_per_ring,
            ephemeral_ports: service_port::read_ephemeral_port_range(),
            handshakes_waiting: HashMap::new(),
            recognised_peer_idle_polls: (RECOGNISED_PEER_IDLE.as_secs_f64()
                / poll_interval.as_secs_f64().max(0.001))
            .ceil() as u32,
        })
    }

    /// Id of the kernel's FLOWS map (tells whether pinned maps are the ones last read).
    pub fn flows_map_id(&self) -> Option<u32> {
        self.maps.flows.info().ok().map(|info| info.id())
    }

    /// What this poller has accounted for, to be continued by the next agent
    /// ([`crate::state`]): the kernel counters per flow and the kernel statistics.
    pub fn accounted(&self) -> (Vec<SeenFlow>, Vec<u64>) {
        let flows = self
            .last_seen
            .iter()
            .map(|(key, accounted)| SeenFlow {
                cookie: key.cookie,
                remote_addr: key.remote_addr,
                local_port: key.local_port,
                remote_port: key.remote_port,
                protocol: key.protocol,
                counters: accounted.counters,
                port: accounted.port,
                app: accounted.app.as_str().to_owned(),
                name: accounted.name.clone(),
            })
            .collect();
        (flows, self.last_stats.to_vec())
    }

    /// Continues from what a previous agent accounted for on the same (pinned) maps.
    pub fn resume(&mut self, flows: &[SeenFlow], kernel_stats: &[u64]) {
        for flow in flows {
            let key = FlowKey {
                cookie: flow.cookie,
                remote_addr: flow.remote_addr,
                local_port: flow.local_port,
                remote_port: flow.remote_port,
                protocol: flow.protocol,
                ..FlowKey::default()
            };
            self.last_seen.insert(
                key,
                Accounted {
                    counters: flow.counters,
                    port: flow.port,
                    app: App::parse(&flow.app).unwrap_or(App::Unknown),
                    name: flow.name.clone(),
                    merged: false,
                    // Seen again at the flow's next login (a restart does not keep it).
                    account: None,
                    idle_polls: 0,
                },
            );
        }
        for (last, saved) in self.last_stats.iter_mut().zip(kernel_stats) {
            *last = *saved;
        }
    }

    /// Reads everything once: what is new since the last poll.
    ///
    /// read (payload events, flows, sockets) → attribute (owners of new sockets) → account
    /// (each attributed flow's delta) → fold (closed sockets) → report (kernel statistics).
    pub fn poll(&mut self) -> anyhow::Result<PollReport> {
        let started = Instant::now();
        let now_boot = boot_time();
        // Events first: the payload of every flow counted below is handed over before its
        // counters are read (except for a packet racing this read: that flow waits a poll).
        let events = self.read_events();
        let snapshot = self.read_snapshot()?;
        let peers = snapshot.flows.iter().filter(|flow| flow.peer).count();
        self.adopt_accepted_connections(&snapshot);
        let mut report = PollReport {
            flows: snapshot.flows.len() - peers,
            peers,
            sockets: snapshot.sockets.len(),
            unattributed_sockets: self.owners.resolve(
                snapshot.flows.iter().map(|flow| &flow.key),
                &snapshot.sockets,
            ),
            events,
            ..PollReport::default()
        };
        self.account(&snapshot, started, &mut report);
        self.forget_gone_flows(&snapshot, started);
        report.folded_peers = self.fold_idle_peers(&snapshot, &mut report.deltas)?;
        report.names = self.naming.len();
        report.redirects = self.redirects();
        report.asked = self.asked_names();
        report.folded_sockets = self.fold_closed(&snapshot, now_boot)?;
        report.kernel = self.read_kernel_stats()?;
        report.packet_sockets = self.packet_sockets.poll();
        report.interfaces = self
            .interface_totals
            .poll(&self.maps.interfaces, self.cpus)?;
        report.blind_spots = blind_spots::read();
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Reads the kernel's flow map, its peer map, then its socket map.
    fn read_snapshot(&self) -> anyhow::Result<Snapshot> {
        let read = |map: &aya::maps::MapData, peer: bool| -> anyhow::Result<Vec<KernelFlow>> {
            Ok(
                batch::lookup_all::<FlowKey, FlowCounters>(map.fd().as_fd(), self.cpus)?
                    .into_iter()
                    .map(|(key, per_cpu)| {
                        let (traffic, egress_first) = sum_per_cpu(&per_cpu);
                        KernelFlow {
                            key,
                            traffic,
                            egress_first,
                            peer,
                        }
                    })
                    .collect(),
            )
        };
        let mut flows = read(&self.maps.flows, false)?;
        let connected: HashMap<FlowKey, usize> = flows
            .iter()
            .enumerate()
            .map(|(index, flow)| (flow.key, index))
            .collect();
        for peer in read(&self.maps.peers, true)? {
            match connected.get(&peer.key) {
                // The socket was connected after talking unconnected: one flow, both entries.
                Some(&index) => flows[index].traffic.add(&peer.traffic),
                None => flows.push(peer),
            }
        }
        // Sockets after flows: every flow read has its socket's record (created at socket(2),
        // accept or release, before the flow's packets) in this snapshot.
        let sockets = batch::lookup_all::<u64, SocketOwner>(self.maps.sockets.fd().as_fd(), 1)?
            .into_iter()
            .filter_map(|(cookie, mut values)| Some((cookie, values.pop()?)))
            .collect();
        Ok(Snapshot { flows, sockets })
    }

    /// Accounts each kernel flow whose owner is known: its new traffic goes into the report.
    fn account(&mut self, snapshot: &Snapshot, now: Instant, report: &mut PollReport) {
        // The listening ports only decide the port of new TCP flows: dumped at most once per
        // poll, and only when such a flow appears.
        let mut listening_ports = None;
        let connections = connections_by_endpoints(snapshot);
        let mut waiting = HashMap::new();
        // Connected flows come first: a handshake is accounted after its connection.
        for flow in &snapshot.flows {
            let connection = match self.handshake(flow, &connections) {
                Handshake::Own => None,
                Handshake::Connection(key) => Some(key),
                Handshake::Wait => {
                    let waited = self.handshakes_waiting.get(&flow.key).copied().unwrap_or(0);
                    waiting.insert(flow.key, waited + 1);
                    report.deferred_flows += 1;
                    continue;
                }
            };
            // A flow whose owner is not known yet is not advanced: its bytes wait in the
            // kernel counter.
            let Some(owner) = self.owners.owner_of(flow.key.cookie).cloned() else {
                report.deferred_flows += 1;
                continue;
            };
            let accounting = match connection {
                Some(connection) => self.account_handshake(flow, &connection, &owner),
                None => {
                    self.account_flow(flow, &owner, &snapshot.sockets, &mut listening_ports, now)
                }
            };
            match accounting {
                Accounting::Deferred => report.deferred_flows += 1,
                Accounting::Unchanged => {}
                Accounting::Delta(delta) => {
                    // Looked up before cloning: this runs for every flow with new traffic.
                    if !self.reported_processes.contains(&*owner) {
                        report_new_process(&owner);
                        self.reported_processes.insert((*owner).clone());
                        report.new_processes.push((*owner).clone());
                    }
                    report.deltas.push(delta);
                }
            }
        }
        self.handshakes_waiting = waiting;
    }

    /// Gives each connection a listener accepted, or has yet to accept, the owner of that
    /// listener, known from the handshake it counted with the same endpoints: that is the
    /// process that accepts it (nothing in /proc names one before), in whatever network
    /// namespace, and by socket, so two containers listening on one port are not confused.
    fn adopt_accepted_connections(&mut self, snapshot: &Snapshot) {
        let tcp = bitsecure_common::protocol::TCP;
        let handshakes: HashMap<Endpoints, u64> = snapshot
            .flows
            .iter()
            .filter(|flow| flow.peer && flow.key.protocol == tcp)
            .map(|flow| (Endpoints::of(&flow.key), flow.key.cookie))
            .collect();
        if handshakes.is_empty() {
            return;
        }
        let unknown = ProcessIdentity::unknown();
        for flow in snapshot.flows.iter().filter(|flow| !flow.peer) {
            let cookie = flow.key.cookie;
            let accepted = snapshot.sockets.get(&cookie).is_some_and(|socket| {
                socket.passive != 0 && socket.origin == bitsecure_common::OWNER_UNKNOWN
            });
            if !accepted || self.owners.owner_of(cookie).is_some() {
                continue;
            }
            let listener_owner = handshakes
                .get(&Endpoints::of(&flow.key))
                .and_then(|listener| self.owners.owner_of(*listener))
                .filter(|owner| ***owner != unknown)
                .cloned();
            if let Some(owner) = listener_owner {
                self.owners.adopt(cookie, owner);
            }
        }
    }

    /// Where a flow seen for the first time is accounted: a TCP peer entry (a listener's
    /// handshake, a control socket's reply) in the series of the connection with the same
    /// addresses and ports, once that is accounted; other flows (and flows already accounted,
    /// see [`Accounted::merged`]) on their own.
    fn handshake(&self, flow: &KernelFlow, connections: &HashMap<Endpoints, FlowKey>) -> Handshake {
        if !flow.peer
            || flow.key.protocol != bitsecure_common::protocol::TCP
            || self.last_seen.contains_key(&flow.key)
        {
            return Handshake::Own;
        }
        match connections.get(&Endpoints::of(&flow.key)) {
            Some(connection) if self.last_seen.contains_key(connection) => {
                Handshake::Connection(*connection)
            }
            // Its application is still being decided.
            Some(_) => Handshake::Wait,
            None if self.handshakes_waiting.get(&flow.key).copied().unwrap_or(0)
                < HANDSHAKE_WAIT_POLLS =>
            {
                Handshake::Wait
            }
            None => Handshake::Own,
        }
    }

    /// Accounts a listener's handshake, seen for the first time, in the series of the
    /// connection it accepted (already accounted). The owner stays the listener's: it knew
    /// its process while the process ran, an accepted socket may learn it only at close.
    fn account_handshake(
        &mut self,
        flow: &KernelFlow,
        connection: &FlowKey,
        owner: &ProcessIdentity,
    ) -> Accounting {
        let Some(series) = self.last_seen.get(connection) else {
            return Accounting::Deferred;
        };
        let accounted = Accounted {
            counters: flow.traffic,
            merged: true,
            idle_polls: 0,
            ..series.clone()
        };
        let mut delta = accounted.delta(&flow.key, owner, flow.traffic);
        // The connection is the flow; its handshake is not another.
        delta.new_flow = false;
        self.last_seen.insert(flow.key, accounted);
        if flow.traffic.is_zero() {
            return Accounting::Unchanged;
        }
        Accounting::Delta(delta)
    }

    /// Advances one attributed flow to its kernel counters and returns what is new. A flow
    /// seen for the first time has its port, application and name decided here, once.
    fn account_flow(
        &mut self,
        flow: &KernelFlow,
        owner: &ProcessIdentity,
        sockets: &HashMap<u64, SocketOwner>,
        listening_ports: &mut Option<HashSet<u16>>,
        now: Instant,
    ) -> Accounting {
        let accounted = match self.last_seen.get_mut(&flow.key) {
            Some(accounted) => accounted,
            None => match self.new_accounted(flow, owner, sockets, listening_ports, now) {
                Some(accounted) => self.last_seen.entry(flow.key).or_insert(accounted),
                None => return Accounting::Deferred,
            },
        };
        let new = flow.traffic.since(&accounted.counters);
        if new.is_zero() {
            accounted.idle_polls += 1;
            return Accounting::Unchanged;
        }
        accounted.idle_polls = 0;
        if let Some(account) = self.naming.account_of(&flow.key)
            && accounted.account.as_ref() != Some(account)
        {
            accounted.account = Some(account.clone());
        }
        if accounted.name.is_none() {
            let scope = owner_scope(&self.naming, owner);
            accounted.name = self.naming.name_for(remote_address(&flow.key), scope, now);
        }
        let delta = accounted.delta(&flow.key, owner, new);
        accounted.counters = flow.traffic;
        Accounting::Delta(delta)
    }

    /// What is decided once for a flow seen for the first time: its application, service
    /// port and name. `None` while its application waits for the flow's first payloads.
    fn new_accounted(
        &mut self,
        flow: &KernelFlow,
        owner: &ProcessIdentity,
        sockets: &HashMap<u64, SocketOwner>,
        listening_ports: &mut Option<HashSet<u16>>,
        now: Instant,
    ) -> Option<Accounted> {
        let (key, socket) = (&flow.key, sockets.get(&flow.key.cookie));
        let released = socket.is_some_and(|owner| owner.released_boot_ns != 0)
            || self.owners.is_retired(key.cookie);
        let app = match self.naming.decide_app(key, released) {
            AppDecision::Decided(app) => app,
            AppDecision::Wait => return None,
        };
        let role = Role {
            passive: socket.is_some_and(|owner| owner.passive != 0)
                || self.owners.was_passive(key.cookie),
            egress_first: flow.egress_first,
        };
        let listening = listening_ports.get_or_insert_with(service_port::listening_ports);
        let port = service_port(key, &role, listening, self.ephemeral_ports);
        let scope = owner_scope(&self.naming, owner);
        Some(Accounted {
            counters: Traffic::default(),
            port,
            app,
            name: self.naming.name_of(key, scope, now),
            account: self.naming.account_of(key).cloned(),
            merged: false,
            idle_polls: 0,
        })
    }

    /// Folds the peer entries idle for long enough: each is read and deleted in one step, and
    /// what it counted since the last read (a packet racing the fold) goes into `deltas`.
    /// Returns how many were folded.
    fn fold_idle_peers(
        &mut self,
        snapshot: &Snapshot,
        deltas: &mut Vec<FlowDelta>,
    ) -> anyhow::Result<usize> {
        let idle: Vec<FlowKey> = snapshot
            .flows
            .iter()
            .filter(|flow| flow.peer)
            .filter(|flow| {
                self.last_seen.get(&flow.key).is_some_and(|accounted| {
                    let limit = if accounted.app == App::Unknown || accounted.merged {
                        PEER_IDLE_POLLS
                    } else {
                        self.recognised_peer_idle_polls
                    };
                    accounted.idle_polls >= limit
                })
            })
            .map(|flow| flow.key)
            .collect();
        let unknown = ProcessIdentity::unknown();
        for key in &idle {
            let Some(accounted) = self.last_seen.remove(key) else {
                continue;
            };
            let per_cpu = batch::lookup_and_delete::<FlowKey, FlowCounters>(
                self.maps.peers.fd().as_fd(),
                key,
                self.cpus,
            )?;
            let Some(per_cpu) = per_cpu else { continue };
            let (last, _) = sum_per_cpu(&per_cpu);
            let racing = last.since(&accounted.counters);
            if !racing.is_zero() {
                let owner = self.owners.owner_of(key.cookie);
                let owner = owner.map_or(&unknown, |owner| &**owner);
                deltas.push(accounted.delta(key, owner, racing));
            }
        }
        Ok(idle.len())
    }

    /// Forgets what the poller and naming keep of flows gone from the kernel map.
    fn forget_gone_flows(&mut self, snapshot: &Snapshot, now: Instant) {
        let present: HashSet<FlowKey> = snapshot.flows.iter().map(|flow| flow.key).collect();
        // Entries deleted since the last poll (folded) must not be remembered.
        self.last_seen.retain(|key, _| present.contains(key));
        // Insights are only needed until a flow is decided; a flow gone undecided needs none.
        let last_seen = &self.last_seen;
        self.naming.forget(
            |key| present.contains(key) && !last_seen.contains_key(key),
            |key| present.contains(key),
            now,
        );
    }

    /// The DNS questions naming saw, with the process that asked each (a socket whose owner
    /// is not known yet asks as `unknown`).
    fn asked_names(&mut self) -> Vec<AskedName> {
        let questions = self.naming.take_questions();
        questions
            .into_iter()
            .map(|question| {
                let owner = self.owners.owner_of(question.cookie);
                let server_name = owner.and_then(|owner| {
                    let scope = owner_scope(&self.naming, owner);
                    let now = Instant::now();
                    self.naming.name_for(question.server, scope, now)
                });
                AskedName {
                    process: owner.map_or_else(|| "unknown".to_owned(), |owner| owner.name.clone()),
                    exe: owner.and_then(|owner| owner.exe.clone()),
                    cgroup: owner.and_then(|owner| owner.cgroup.clone()),
                    server: question.server,
                    server_name: server_name.map(|name| name.name),
                    port: question.port,
                    protocol: question.protocol,
                    name: question.name,
                }
            })
            .collect()
    }

    /// The pool redirects naming saw, with the process that received each (logged: a pool
    /// sending a miner elsewhere is how pool-side hijacks move the hash power).
    fn redirects(&mut self) -> Vec<(String, String, String)> {
        let redirects = self.naming.take_redirects();
        redirects
            .into_iter()
            .map(|redirect| {
                let process = self
                    .owners
                    .owner_of(redirect.flow.cookie)
                    .map_or_else(|| "unknown".to_owned(), |owner| owner.name.clone());
                let pool = remote_address(&redirect.flow).to_string();
                warn!(
                    "the pool {pool} tells {process} to connect to {}",
                    redirect.to
                );
                (process, pool, redirect.to)
            })
            .collect()
    }

    /// Deletes the kernel entries of sockets closed longer than the grace period ago.
    fn fold_closed(&mut self, snapshot: &Snapshot, now_boot: Duration) -> anyhow::Result<usize> {
        let closed = self.closed_sockets(&snapshot.sockets, now_boot);
        // Late packets of an already folded socket re-create entries: fold them right away.
        let now = Instant::now();
        self.owners.expire(now);
        let flow_keys: Vec<FlowKey> = snapshot
            .flows
            .iter()
            .map(|flow| flow.key)
            .filter(|key| {
                (closed.contains(&key.cookie) || self.owners.is_retired(key.cookie))
                    && self.last_seen.contains_key(key)
            })
            .collect();
        // A flow may have entries in both maps (see [`KernelFlow::peer`]).
        batch::delete_keys(self.maps.flows.fd().as_fd(), &flow_keys)?;
        batch::delete_keys(self.maps.peers.fd().as_fd(), &flow_keys)?;
        let cookies: Vec<u64> = closed.iter().copied().collect();
        batch::delete_keys(self.maps.sockets.fd().as_fd(), &cookies)?;
        for key in &flow_keys {
            self.last_seen.remove(key);
            self.owners.linger(key.cookie, now);
        }
        self.owners.retire(&cookies, &snapshot.sockets, now);
        self.owners
            .forget_gone(snapshot.flow_cookies(), &snapshot.sockets);
        Ok(cookies.len())
    }

    /// The sockets released longer than the grace period ago.
    fn closed_sockets(
        &self,
        sockets: &HashMap<u64, SocketOwner>,
        now_boot: Duration,
    ) -> HashSet<u64> {
        sockets
            .iter()
            .filter(|(_, owner)| {
                owner.released_boot_ns != 0
                    && now_boot.saturating_sub(Duration::from_nanos(owner.released_boot_ns))
                        >= self.close_grace
            })
            .map(|(cookie, _)| *cookie)
            .collect()
    }

    /// Waits until the kernel has payload or socket events to read, or `timeout`.
    pub fn wait_for_events(&self, timeout: Duration) {
        let mut poll_fds = [&self.maps.events, &self.maps.socket_events].map(|ring| libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two valid pollfds for the duration of the call. An error (EINTR) just ends
        // the wait early.
        unsafe {
            libc::poll(
                poll_fds.as_mut_ptr(),
                poll_fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
    }

    /// Reads the events waiting in the kernel's ring buffers: the owners of sockets just
    /// created (read from /proc at once), then the payload events, at most about one ring
    /// buffer's worth of each, so a flood cannot keep the poller from polling.
    pub fn read_events(&mut self) -> EventCounts {
        read_socket_events(&mut self.maps.socket_events, &mut self.owners);
        let now = Instant::now();
        let mut counts = EventCounts::default();
        for _ in 0..self.events_per_ring {
            let Some(item) = self.maps.events.next() else {
                break;
            };
            // A socket's creation comes before its first payload: read the creations that
            // arrived meanwhile, so a DNS answer knows who asked.
            read_socket_events(&mut self.maps.socket_events, &mut self.owners);
            let owners = &self.owners;
            self.naming.on_event(&item, &mut counts, now, |cookie| {
                match owners.owner_of(cookie) {
                    Some(owner) => asker(owner),
                    // Not known yet: its answers name nothing another socket could use.
                    None => Asker {
                        exe: None,
                        id: cookie,
                    },
                }
            });
        }
        counts
    }

    /// One name for each of `remotes` (the remotes with a series of their own), so that a
    /// PromQL join on the remote is one-to-one even for a CDN address with many names: the
    /// name most of its live flows carry (ties: the first by name), else what the name map
    /// says now.
    pub fn names_of(&self, remotes: &[IpAddr]) -> Vec<(IpAddr, RemoteName)> {
        let now = Instant::now();
        let wanted: HashSet<IpAddr> = remotes.iter().copied().collect();
        let mut flows_per_name: HashMap<IpAddr, HashMap<&RemoteName, usize>> = HashMap::new();
        for (key, accounted) in &self.last_seen {
            let Some(name) = &accounted.name else {
                continue;
            };
            let remote = IpAddr::V6(Ipv6Addr::from(key.remote_addr)).to_canonical();
            if wanted.contains(&remote) {
                *flows_per_name
                    .entry(remote)
                    .or_default()
                    .entry(name)
                    .or_default() += 1;
            }
        }
        remotes
            .iter()
            .filter_map(|remote| {
                let most_used = flows_per_name.get(remote).and_then(|names| {
                    names
                        .iter()
                        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.name.cmp(&a.0.name)))
                        .map(|(name, _)| (*name).clone())
                });
                most_used
                    .or_else(|| self.naming.name_of_address(*remote, now))
                    .map(|name| (*remote, name))
            })
            .collect()
    }

    /// What the kernel programs counted since the last poll (and a warning for each loss).
    fn read_kernel_stats(&mut self) -> anyhow::Result<KernelStats> {
        let per_cpu = batch::lookup_all::<u32, u64>(self.maps.stats.fd().as_fd(), self.cpus)?;
        let mut stats = KernelStats::default();
        for (index, values) in per_cpu {
            let Some(stat) = Stat::ALL.get(index as usize) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let new = total.saturating_sub(self.last_stats[index as usize]);
            self.last_stats[index as usize] = total;
            if new == 0 {
                continue;
            }
            match stat {
                Stat::FlowInsertFailed => {
                    warn!("{new} packets not counted: the kernel flow map is full");
                    stats.flow_insert_failures += new;
                }
                Stat::SocketInsertFailed => {
                    warn!("{new} socket owners not recorded: the kernel socket map is full");
                    stats.socket_insert_failures += new;
                }
                Stat::MalformedPackets => stats.malformed_packets += new,
                Stat::PeerInsertFailed => {
                    warn!(
                        "{new} packets of new peers counted without their remote (remote=\"::\"): \
                         the kernel peer map is full (a flood of peers?)"
                    );
                    stats.peer_insert_failures += new;
                }
                Stat::EventsDropped => {
                    warn!(
                        "{new} payload events dropped: the kernel ring buffer was full \
                         (names.ring_buffer_bytes); some names or applications were not learnt"
                    );
                    stats.events_dropped += new;
                }
            }
        }
        Ok(stats)
    }
}

/// The addresses and ports of a flow, without its socket: a listener's handshake with a peer
/// and the connection it accepted have the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Endpoints {
    remote_addr: [u8; 16],
    local_port: u16,
    remote_port: u16,
}

impl Endpoints {
    fn of(key: &FlowKey) -> Self {
        Self {
            remote_addr: key.remote_addr,
            local_port: key.local_port,
            remote_port: key.remote_port,
        }
    }
}

/// The connected TCP flows of a snapshot by their endpoints; built only when some TCP peer
/// entry needs it.
fn connections_by_endpoints(snapshot: &Snapshot) -> HashMap<Endpoints, FlowKey> {
    let tcp = bitsecure_common::protocol::TCP;
    if !snapshot
        .flows
        .iter()
        .any(|flow| flow.peer && flow.key.protocol == tcp)
    {
        return HashMap::new();
    }
    snapshot
        .flows
        .iter()
        .filter(|flow| !flow.peer && flow.key.protocol == tcp)
        .map(|flow| (Endpoints::of(&flow.key), flow.key))
        .collect()
}

/// Logs a process seen on the network for the first time.
fn report_new_process(identity: &ProcessIdentity) {
    if identity.name != ProcessIdentity::unknown().name {
        info!(
            "new process on the network: {} (exe {}, unit {})",
            identity.name,
            identity.exe.as_deref().unwrap_or("?"),
            identity.unit.as_deref().unwrap_or("?")
        );
    }
}

/// Sums a flow's per-CPU counters; the flag tells whether some CPU saw it egress first.
fn sum_per_cpu(per_cpu: &[FlowCounters]) -> (Traffic, bool) {
    let mut traffic = Traffic::default();
    let mut egress_first = false;
    for counters in per_cpu {
        traffic.add(&Traffic {
            sent_bytes: counters.tx_bytes,
            received_bytes: counters.rx_bytes,
            sent_packets: counters.tx_packets,
            received_packets: counters.rx_packets,
        });
        egress_first |= counters.first_direction == DIRECTION_EGRESS;
    }
    (traffic, egress_first)
}

/// CLOCK_BOOTTIME, the clock of `bpf_ktime_get_boot_ns()`.
fn boot_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_summed() {
        let cpu = |tx: u64, rx: u64, first: u8| FlowCounters {
            tx_bytes: tx,
            rx_bytes: rx,
            tx_packets: 1,
            rx_packets: 2,
            first_direction: first,
            sampled: 0,
            _pad: [0; 6],
        };
        let (traffic, egress_first) = sum_per_cpu(&[
            cpu(10, 0, bitsecure_common::DIRECTION_INGRESS),
            cpu(5, 7, DIRECTION_EGRESS),
            FlowCounters::default(),
        ]);
        assert_eq!(traffic.sent_bytes, 15);
        assert_eq!(traffic.received_bytes, 7);
        assert_eq!(traffic.sent_packets, 2);
        assert_eq!(traffic.received_packets, 4);
        assert!(egress_first);
    }
}
