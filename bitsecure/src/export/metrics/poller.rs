//! The poller's metrics: kernel maps, processes on the network, attribution, poll health.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::register;
use crate::kernel::ProgramCheck;
use crate::poller::{KernelStats, PollReport, blind_spots::NatChain, identity::ProcessIdentity};

/// The poller's view of the kernel: maps, processes, attribution, its own health.
pub struct PollerMetrics {
    pub process_info: IntGaugeVec,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub map_insert_failures: IntCounterVec,
    pub malformed_packets: IntCounter,
    pub poll_duration: Histogram,
    pub poll_errors: IntCounter,
    pub closed_sockets: IntCounter,
    pub folded_peers: IntCounter,
    pub unattributed_sockets: IntCounter,
    pub programs_attached: IntGaugeVec,
    pub program_reattachments: IntCounterVec,
    pub packet_sockets: IntGaugeVec,
    pub interface_bytes: IntCounterVec,
    pub unattributed_bytes: IntCounterVec,
    pub forwarding_enabled: IntGaugeVec,
    pub xdp_programs: IntGaugeVec,
    pub nat_chains: IntGaugeVec,
    pub pool_redirects: IntCounterVec,
}

impl PollerMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            pool_redirects: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_pool_redirects_total",
                        "Stratum client.reconnect messages seen in a flow's first messages: a \
                         pool (remote) telling a miner (process) to mine at another server (to).",
                    ),
                    &["process", "remote", "to"],
                )?,
            )?,
            process_info: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_process_info",
                        "Always 1: executable path and systemd unit (or cgroup) of each process label.",
                    ),
                    &["process", "exe", "unit"],
                )?,
            )?,
            map_entries: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_map_entries",
                        "Entries in a kernel map at the last poll.",
                    ),
                    &["map"],
                )?,
            )?,
            map_capacity: register(
                registry,
                IntGaugeVec::new(
                    Opts::new("bitsecure_map_capacity", "Maximum entries of a kernel map."),
                    &["map"],
                )?,
            )?,
            map_insert_failures: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_map_insert_failures_total",
                        "Kernel map inserts that failed because the map was full: that traffic or owner was not recorded (map=\"peers\": the packets of a new peer were counted without their remote, under remote=\"::\").",
                    ),
                    &["map"],
                )?,
            )?,
            malformed_packets: register(
                registry,
                IntCounter::new(
                    "bitsecure_malformed_packets_total",
                    "Packets whose headers could not be read; their bytes are counted under remote \"::\" (as are new peers' packets while the kernel peer map is full).",
                )?,
            )?,
            poll_duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "bitsecure_poll_duration_seconds",
                        "Time to read the kernel maps and update the flow table.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )?,
            )?,
            poll_errors: register(
                registry,
                IntCounter::new(
                    "bitsecure_poll_errors_total",
                    "Polls that failed to read the kernel maps (see the agent log).",
                )?,
            )?,
            closed_sockets: register(
                registry,
                IntCounter::new(
                    "bitsecure_closed_sockets_total",
                    "Closed sockets whose counters were folded into the totals and removed from the kernel maps.",
                )?,
            )?,
            folded_peers: register(
                registry,
                IntCounter::new(
                    "bitsecure_folded_peers_total",
                    "Idle peer entries (of listeners, unconnected UDP, raw sockets) whose counters were folded into the totals and removed from the kernel peer map.",
                )?,
            )?,
            unattributed_sockets: register(
                registry,
                IntCounter::new(
                    "bitsecure_unattributed_sockets_total",
                    "Sockets whose owning process could not be determined (their traffic is process=\"unknown\").",
                )?,
            )?,
            packet_sockets: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_packet_sockets",
                        "Packet (AF_PACKET: whole frames, below every socket hook, so never in the \
                         traffic counters) and raw IP sockets open on the host, in any network \
                         namespace, per holding process and protocol (EtherType or IP protocol).",
                    ),
                    &["process", "exe", "kind", "protocol"],
                )?,
            )?,
            interface_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_interface_bytes_total",
                        "IP bytes (L3, GSO/GRO-corrected, as the traffic counters count them) that \
                         crossed a network interface of the agent's namespace, whatever sent them.",
                    ),
                    &["interface", "direction"],
                )?,
            )?,
            unattributed_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_unattributed_bytes_total",
                        "Of bitsecure_interface_bytes_total, what no socket accounted for, so no \
                         process: sent: frames of packet sockets, forwarded or NAT-ed packets, \
                         tunnels' outer headers; received: also packets no socket took (scans of \
                         closed ports, dropped or broadcast packets). Reported a poll late.",
                    ),
                    &["interface", "direction"],
                )?,
            )?,
            forwarding_enabled: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_forwarding_enabled",
                        "1 if this host forwards packets of the family (sysctl \
                         net.ipv4.ip_forward, net.ipv6.conf.all.forwarding): forwarded packets \
                         pass no socket, so they are in no process's counters, only in \
                         bitsecure_unattributed_bytes_total of the interfaces they cross.",
                    ),
                    &["family"],
                )?,
            )?,
            xdp_programs: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_xdp_programs",
                        "1 per interface with an XDP program attached (mode: driver, generic, \
                         offload, multi): it sees packets in the driver, before every BitSecure \
                         program, and can drop, answer or redirect them unseen.",
                    ),
                    &["interface", "mode"],
                )?,
            )?,
            nat_chains: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_nat_chains",
                        "1 per nftables chain of type nat (iptables-nft's too) in the agent's \
                         network namespace: it rewrites addresses. TCP a local process sends \
                         through it is still keyed by the address asked for; what it forwards \
                         is unattributed interface traffic.",
                    ),
                    &["family", "table", "chain"],
                )?,
            )?,
            programs_attached: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_programs_attached",
                        "1 if the agent's kernel program is attached to the watched cgroup at the last check. 0: it was detached or replaced (by someone with root) and could not be re-attached, so part of the traffic is not counted; see the agent log, and restart the agent.",
                    ),
                    &["program"],
                )?,
            )?,
            program_reattachments: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_program_reattachments_total",
                        "Times the agent found its kernel program detached or replaced on the watched cgroup and attached it again. Traffic between the detach and the re-attachment was not counted; someone with root did it: find out who (the agent log says what was found).",
                    ),
                    &["program"],
                )?,
            )?,
        })
    }

    /// The NAT chains found now (the guard thread asks nftables).
    pub fn record_nat_chains(&self, chains: &[NatChain]) {
        self.nat_chains.reset();
        for chain in chains {
            self.nat_chains
                .with_label_values(&[chain.family, chain.table.as_str(), chain.chain.as_str()])
                .set(1);
        }
    }

    /// One check of the programs' attachments.
    pub fn record_attachments(&self, checks: &[ProgramCheck]) {
        for check in checks {
            self.programs_attached
                .with_label_values(&[check.program])
                .set(i64::from(check.attached));
            // Created at 0 on the first check, so a first re-attachment is an increase.
            self.program_reattachments
                .with_label_values(&[check.program])
                .inc_by(u64::from(check.reattached));
        }
    }

    /// The kernel maps' sizes; each map's insert failures start at 0, so a first failure is an
    /// increase Prometheus can see.
    pub fn set_map_capacities(&self, capacities: &[(&str, u32)]) {
        for (map, capacity) in capacities {
            self.map_capacity
                .with_label_values(&[*map])
                .set(i64::from(*capacity));
            self.map_insert_failures.with_label_values(&[*map]);
        }
    }

    pub(super) fn record(&self, report: &PollReport) {
        for process in &report.new_processes {
            self.add_process(process);
        }
        for (process, pool, to) in &report.redirects {
            self.pool_redirects
                .with_label_values(&[process, pool, to])
                .inc();
        }
        self.unattributed_sockets
            .inc_by(report.unattributed_sockets);
        self.closed_sockets.inc_by(report.folded_sockets as u64);
        let KernelStats {
            flow_insert_failures,
            socket_insert_failures,
            malformed_packets,
            events_dropped: _,
            peer_insert_failures,
        } = report.kernel;
        self.map_insert_failures
            .with_label_values(&["flows"])
            .inc_by(flow_insert_failures);
        self.map_insert_failures
            .with_label_values(&["sockets"])
            .inc_by(socket_insert_failures);
        self.map_insert_failures
            .with_label_values(&["peers"])
            .inc_by(peer_insert_failures);
        self.malformed_packets.inc_by(malformed_packets);
        self.map_entries
            .with_label_values(&["flows"])
            .set(report.flows as i64);
        self.map_entries
            .with_label_values(&["peers"])
            .set(report.peers as i64);
        self.map_entries
            .with_label_values(&["sockets"])
            .set(report.sockets as i64);
        self.folded_peers.inc_by(report.folded_peers as u64);
        // The sockets open now: holders gone since the last poll disappear.
        self.packet_sockets.reset();
        for (class, count) in &report.packet_sockets {
            self.packet_sockets
                .with_label_values(&[
                    class.process.as_str(),
                    class.exe.as_str(),
                    class.kind.as_str(),
                    class.protocol.as_str(),
                ])
                .set(*count as i64);
        }
        for delta in &report.interfaces {
            for (direction, bytes, unattributed) in [
                ("sent", delta.sent_bytes, delta.unattributed_sent_bytes),
                (
                    "received",
                    delta.received_bytes,
                    delta.unattributed_received_bytes,
                ),
            ] {
                let labels = [delta.interface.as_str(), direction];
                self.interface_bytes
                    .with_label_values(&labels)
                    .inc_by(bytes);
                self.unattributed_bytes
                    .with_label_values(&labels)
                    .inc_by(unattributed);
            }
        }
        for (family, enabled) in &report.blind_spots.forwarding {
            self.forwarding_enabled
                .with_label_values(&[*family])
                .set(i64::from(*enabled));
        }
        // The programs attached now: detached ones disappear.
        self.xdp_programs.reset();
        for (interface, mode) in &report.blind_spots.xdp {
            self.xdp_programs
                .with_label_values(&[interface.as_str(), *mode])
                .set(1);
        }
        self.poll_duration.observe(report.duration.as_secs_f64());
    }

    fn add_process(&self, identity: &ProcessIdentity) {
        self.process_info
            .with_label_values(&[
                identity.name.as_str(),
                identity.exe.as_deref().unwrap_or(""),
                identity.unit.as_deref().unwrap_or(""),
            ])
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reattached_program_counts_and_stays_attached() {
        let metrics = PollerMetrics::new(&Registry::new()).unwrap();
        let check = |attached, reattached| ProgramCheck {
            program: "count_egress",
            attached,
            reattached,
        };
        metrics.record_attachments(&[check(true, false)]);
        let reattachments = || {
            metrics
                .program_reattachments
                .with_label_values(&["count_egress"])
                .get()
        };
        assert_eq!(reattachments(), 0);
        metrics.record_attachments(&[check(true, true)]);
        assert_eq!(reattachments(), 1);
        metrics.record_attachments(&[check(false, false)]);
        let attached = metrics
            .programs_attached
            .with_label_values(&["count_egress"])
            .get();
        assert_eq!((attached, reattachments()), (0, 1));
    }
}
