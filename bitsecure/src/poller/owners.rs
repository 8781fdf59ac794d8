//! Who owns a socket: the owners of live sockets (from the kernel's record, else from
//! sock_diag + /proc), the owners of folded sockets kept for their trailing packets, and the
//! shared identities they point to.
//!
//! Bookkeeping only: it reads /proc and sock_diag but never a kernel map, deletes nothing in
//! the kernel and knows nothing of flows, counters or names. The poller tells it which
//! sockets were seen, folded or are gone.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bitsecure_common::{FlowKey, OWNER_UNKNOWN, SocketCreated, SocketOwner};
use log::{debug, warn};

use crate::poller::{
    cgroups::CgroupPaths,
    executables::ExecutableHashes,
    identity::{self, ProcessIdentity},
    proc_net::SocketsByEndpoint,
    sock_diag,
};

/// Polls an unattributed socket is given to be found in /proc before it counts as "unknown".
const OWNER_LOOKUP_ATTEMPTS: u8 = 3;
/// How long the owner of a folded socket is remembered, for packets that trail its close. A
/// TCP connection established while the agent runs is folded only once it reached CLOSE, so
/// nothing trails it; this is for the others (UDP, connections older than the agent), whose
/// retransmitted FINs and their ACKs come within a few round trips. At 100,000 connections
/// a minute that is ~50,000 small entries, the owner itself being shared (see
/// [`Owners::intern`]).
const RETIRED_OWNER_TTL: Duration = Duration::from_secs(30);
/// How long after its latest late packet the owner of a folded socket whose packets still
/// trail in is remembered: longer than TCP's longest retransmission interval (120 s), so a
/// FIN retransmitted to a peer gone dark is never counted as `unknown`.
const LINGERING_OWNER_TTL: Duration = Duration::from_secs(130);

/// What is remembered of a folded socket.
struct Retired {
    owner: Arc<ProcessIdentity>,
    passive: bool,
    /// When it was folded, or when its latest late packet was.
    since: Instant,
    /// Late packets came: remembered for [`LINGERING_OWNER_TTL`].
    lingering: bool,
}

/// The owners of sockets, by socket cookie.
pub(super) struct Owners {
    proc_root: PathBuf,
    /// Resolved owners of live sockets; one shared identity per process.
    owners: HashMap<u64, Arc<ProcessIdentity>>,
    /// The identities in use, so thousands of sockets of one process share one.
    identities: HashSet<Arc<ProcessIdentity>>,
    /// Sockets already folded, for packets that trail their close.
    retired: HashMap<u64, Retired>,
    /// Failed owner lookups per socket cookie.
    lookup_attempts: HashMap<u64, u8>,
    /// The kernel's cgroup ids as paths.
    cgroups: CgroupPaths,
    /// Hashes of the executables seen.
    executables: ExecutableHashes,
}

impl Owners {
    /// No owners known yet; process identities are read below `proc_root` (normally /proc).
    pub(super) fn new(proc_root: PathBuf, cgroups: CgroupPaths) -> Self {
        Self {
            proc_root,
            owners: HashMap::new(),
            identities: HashSet::new(),
            retired: HashMap::new(),
            lookup_attempts: HashMap::new(),
            cgroups,
            executables: ExecutableHashes::default(),
        }
    }

    /// `identity` (read from /proc for `pid`) with the hash of its executable.
    fn with_executable_hash(&mut self, mut identity: ProcessIdentity, pid: u32) -> ProcessIdentity {
        if identity.exe.is_some() {
            identity.sha256 = self.executables.of_process(&self.proc_root, pid);
        }
        identity
    }

    /// The owner of a live or recently folded socket; `None` while it is being looked up.
    pub(super) fn owner_of(&self, cookie: u64) -> Option<&Arc<ProcessIdentity>> {
        self.owners
            .get(&cookie)
            .or_else(|| self.retired.get(&cookie).map(|retired| &retired.owner))
    }

    /// Gives a socket whose owner is being looked up the owner found another way (an
    /// accepted connection, its listener's).
    pub(super) fn adopt(&mut self, cookie: u64, owner: Arc<ProcessIdentity>) {
        self.lookup_attempts.remove(&cookie);
        self.owners.insert(cookie, owner);
    }

    /// Takes the owner of a socket just created, as the kernel told it at once: its process
    /// is read now, while even a short-lived one still runs.
    pub(super) fn note_created(&mut self, created: &SocketCreated) {
        if self.owners.contains_key(&created.cookie) {
            return;
        }
        let identity = self.recorded_identity(created);
        self.owners.insert(created.cookie, identity);
    }

    /// The identity of the process the kernel recorded as a socket's owner: read from /proc
    /// (if that pid still is the process that made the socket), else the kernel's comm; the
    /// cgroup always the one the kernel recorded, not where the process may have moved since
    /// (nor the path of a cgroup gone since).
    fn recorded_identity(&mut self, created: &SocketCreated) -> Arc<ProcessIdentity> {
        let recorded = Duration::from_nanos(created.recorded_boot_ns);
        let mut identity =
            match identity::read_identity(&self.proc_root, created.tgid, Some(recorded)) {
                Some(identity) => self.with_executable_hash(identity, created.tgid),
                None => ProcessIdentity::from_comm(&created.comm),
            };
        identity.cgroup = self.cgroups.path_of(created.cgroup_id);
        identity.unit = identity
            .cgroup
            .as_deref()
            .and_then(identity::unit_from_cgroup_path);
        self.intern(identity)
    }

    /// Whether the socket was folded (and its owner is still remembered).
    pub(super) fn is_retired(&self, cookie: u64) -> bool {
        self.retired.contains_key(&cookie)
    }

    /// Whether a folded socket was a TCP listener or accepted by one.
    pub(super) fn was_passive(&self, cookie: u64) -> bool {
        self.retired
            .get(&cookie)
            .is_some_and(|retired| retired.passive)
    }

    /// Finds owners for sockets seen for the first time, those of the flows read
    /// (`flow_cookies`) and those the kernel recorded (`sockets`): from the kernel's record
    /// (created while the agent ran), else from sock_diag + /proc (older or accepted sockets).
    /// Returns how many sockets were given up on as "unknown".
    pub(super) fn resolve<'a>(
        &mut self,
        flows: impl Iterator<Item = &'a FlowKey> + Clone,
        sockets: &HashMap<u64, SocketOwner>,
    ) -> u64 {
        let unresolved = self.resolve_from_kernel(flows.clone().map(|key| key.cookie), sockets);
        if unresolved.is_empty() {
            return 0;
        }
        self.resolve_from_proc(unresolved, flows)
    }

    /// Takes the owners the kernel recorded; returns the sockets it knows no owner of.
    fn resolve_from_kernel(
        &mut self,
        flow_cookies: impl Iterator<Item = u64>,
        sockets: &HashMap<u64, SocketOwner>,
    ) -> HashSet<u64> {
        let mut unresolved = HashSet::new();
        let unknown = ProcessIdentity::unknown();
        for cookie in flow_cookies.chain(sockets.keys().copied()) {
            let kernel_knows = sockets
                .get(&cookie)
                .is_some_and(|owner| owner.origin != OWNER_UNKNOWN);
            match self.owner_of(cookie) {
                // An accepted socket given up on may name its owner when it closes.
                Some(owner) if **owner == unknown && kernel_knows => {}
                Some(_) => continue,
                None if unresolved.contains(&cookie) => continue,
                None => {}
            }
            if let Some(owner) = sockets
                .get(&cookie)
                .filter(|owner| owner.origin != OWNER_UNKNOWN)
            {
                let identity = self.recorded_identity(&SocketCreated {
                    cookie,
                    cgroup_id: owner.cgroup_id,
                    recorded_boot_ns: owner.recorded_boot_ns,
                    tgid: owner.tgid,
                    _pad: [0; 4],
                    comm: owner.comm,
                });
                self.owners.insert(cookie, identity);
            } else {
                unresolved.insert(cookie);
            }
        }
        unresolved
    }

    /// Looks the `unresolved` sockets up in /proc; one not found for
    /// [`OWNER_LOOKUP_ATTEMPTS`] polls is given up on as "unknown". Returns how many were.
    fn resolve_from_proc<'a>(
        &mut self,
        unresolved: HashSet<u64>,
        flows: impl Iterator<Item = &'a FlowKey>,
    ) -> u64 {
        let mut given_up = 0;
        let found = self.lookup_in_proc(&unresolved, flows);
        for cookie in unresolved {
            if let Some((pid, identity)) = found.get(&cookie) {
                let identity = self.with_executable_hash(identity.clone(), *pid);
                let identity = self.intern(identity);
                self.owners.insert(cookie, identity);
                self.lookup_attempts.remove(&cookie);
                continue;
            }
            let attempts = self.lookup_attempts.entry(cookie).or_default();
            *attempts += 1;
            if *attempts >= OWNER_LOOKUP_ATTEMPTS {
                debug!("socket {cookie:#x}: owner not found, counting it as unknown");
                let unknown = self.intern(ProcessIdentity::unknown());
                self.owners.insert(cookie, unknown);
                self.lookup_attempts.remove(&cookie);
                given_up += 1;
            }
        }
        given_up
    }

    /// sock_diag gives cookie → inode for the agent's network namespace; a socket it does
    /// not list with a file (another namespace's, or a connection not accepted yet) is found
    /// by its flow's endpoints ([`SocketsByEndpoint`]); `/proc/*/fd` gives inode → pid.
    fn lookup_in_proc<'a>(
        &self,
        wanted: &HashSet<u64>,
        flows: impl Iterator<Item = &'a FlowKey>,
    ) -> HashMap<u64, (u32, ProcessIdentity)> {
        let sockets = match sock_diag::dump_sockets() {
            Ok(sockets) => sockets,
            Err(error) => {
                warn!("sock_diag failed, cannot attribute older sockets: {error}");
                return HashMap::new();
            }
        };
        // Socket cookie → inode.
        let mut inodes: HashMap<u64, u64> = sockets
            .iter()
            // TIME_WAIT and SYN_RECV entries have no file (inode 0) and no owner.
            .filter(|socket| socket.inode != 0 && wanted.contains(&socket.cookie))
            .map(|socket| (socket.cookie, socket.inode))
            .collect();
        let by_endpoint: Vec<&FlowKey> = flows
            .filter(|key| wanted.contains(&key.cookie) && !inodes.contains_key(&key.cookie))
            .collect();
        if !by_endpoint.is_empty() {
            let mut known = SocketsByEndpoint::from_diag(&sockets);
            if let Err(error) = known.add_other_namespaces(&self.proc_root) {
                warn!("cannot read the sockets of other network namespaces: {error}");
            }
            for key in by_endpoint {
                if let Some(inode) = known.find(key) {
                    inodes.entry(key.cookie).or_insert(inode);
                }
            }
        }
        if inodes.is_empty() {
            return HashMap::new();
        }
        let owners = match sock_diag::socket_inode_owners() {
            Ok(owners) => owners,
            Err(error) => {
                warn!("cannot scan /proc for socket owners: {error}");
                return HashMap::new();
            }
        };
        inodes
            .iter()
            .filter_map(|(cookie, inode)| {
                let pid = *owners.get(inode)?;
                Some((
                    *cookie,
                    (pid, identity::read_identity(&self.proc_root, pid, None)?),
                ))
            })
            .collect()
    }

    /// Forgets the owners of folded sockets older than [`RETIRED_OWNER_TTL`] (or, with late
    /// packets, [`LINGERING_OWNER_TTL`]).
    pub(super) fn expire(&mut self, now: Instant) {
        self.retired.retain(|_, retired| {
            let ttl = if retired.lingering {
                LINGERING_OWNER_TTL
            } else {
                RETIRED_OWNER_TTL
            };
            now.duration_since(retired.since) < ttl
        });
    }

    /// A folded socket had late packets: its owner is kept [`LINGERING_OWNER_TTL`] from now.
    pub(super) fn linger(&mut self, cookie: u64, now: Instant) {
        if let Some(retired) = self.retired.get_mut(&cookie) {
            retired.since = now;
            retired.lingering = true;
        }
    }

    /// Moves the owners of the `folded` sockets (deleted from the kernel maps) to the
    /// retired, for packets that trail their close.
    pub(super) fn retire(
        &mut self,
        folded: &[u64],
        sockets: &HashMap<u64, SocketOwner>,
        now: Instant,
    ) {
        for cookie in folded {
            if let Some(owner) = self.owners.remove(cookie) {
                let passive = sockets
                    .get(cookie)
                    .is_some_and(|socket| socket.passive != 0);
                self.retired.insert(
                    *cookie,
                    Retired {
                        owner,
                        passive,
                        since: now,
                        lingering: false,
                    },
                );
            }
        }
    }

    /// Forgets what is known of sockets gone from the kernel maps (`flow_cookies`: the
    /// sockets of the flows read), and the identities no socket refers to any more.
    pub(super) fn forget_gone(
        &mut self,
        flow_cookies: impl Iterator<Item = u64>,
        sockets: &HashMap<u64, SocketOwner>,
    ) {
        // Forget owners of sockets that have neither flows nor a kernel record any more.
        let live: HashSet<u64> = flow_cookies.collect();
        self.owners
            .retain(|cookie, _| live.contains(cookie) || sockets.contains_key(cookie));
        self.lookup_attempts
            .retain(|cookie, _| live.contains(cookie));
        // Identities no socket refers to any more.
        self.identities
            .retain(|identity| Arc::strong_count(identity) > 1);
    }

    /// The shared copy of `identity`.
    fn intern(&mut self, identity: ProcessIdentity) -> Arc<ProcessIdentity> {
        if let Some(shared) = self.identities.get(&identity) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(identity);
        self.identities.insert(Arc::clone(&shared));
        shared
    }
}
