//! What crossed each watched interface, and what of it no socket accounted for.
//!
//! The tc programs count every IP packet crossing an interface; the socket programs add what
//! they attributed to the interface's same entry. The difference is traffic that took a path
//! below or beside the sockets: frames of packet sockets, forwarded packets, packets no socket
//! took (scans of closed ports, dropped packets), the outer headers of tunnels.
//!
//! The two programs see a packet at different moments (egress: the socket hook first, the
//! interface after; ingress the other way round), so a poll can fall between the two for a
//! packet in flight. A difference is therefore only reported once it has lasted a poll
//! ([`Unattributed`]); a surplus of attributed bytes (sent by a socket, then dropped before the
//! interface, e.g. to an address that never answers ARP) is forgiven after a poll, so it cannot
//! hide later traffic for long.

use std::{collections::HashMap, ffi::CStr, os::fd::AsFd as _};

use bitsecure_common::InterfaceCounters;

use crate::kernel::batch;

/// One interface's traffic in one poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceDelta {
    pub interface: String,
    /// IP bytes that crossed the interface (L3, as the flows count them).
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Of those, what no socket accounted for (reported a poll late, see the module docs).
    pub unattributed_sent_bytes: u64,
    pub unattributed_received_bytes: u64,
}

/// The running difference of one direction of one interface.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unattributed {
    /// Interface bytes minus attributed bytes, not reported yet.
    balance: i64,
    /// The balance that was positive at the last poll: only what outlasts a poll is reported.
    held: i64,
}

impl Unattributed {
    /// Adds one poll's interface bytes and attributed bytes; returns the bytes to report now
    /// as unattributed.
    pub fn advance(&mut self, interface_bytes: u64, attributed_bytes: u64) -> u64 {
        let was_negative = self.balance < 0;
        self.balance += interface_bytes as i64 - attributed_bytes as i64;
        let report = self.balance.min(self.held).max(0);
        self.balance -= report;
        if self.balance < 0 && was_negative {
            // Attributed bytes the interface did not carry for two polls: dropped, not late.
            self.balance = 0;
        }
        self.held = self.balance.max(0);
        report as u64
    }
}

/// Per interface: the last cumulative counters read and the running differences.
#[derive(Debug, Default)]
struct Tracked {
    last: InterfaceCounters,
    sent: Unattributed,
    received: Unattributed,
}

/// The poller's view of the `INTERFACES` map.
#[derive(Default)]
pub struct InterfaceTotals {
    tracked: HashMap<u32, Tracked>,
}

impl InterfaceTotals {
    /// Reads the map: what is new per interface since the last poll.
    pub fn poll(
        &mut self,
        map: &aya::maps::MapData,
        cpus: usize,
    ) -> anyhow::Result<Vec<InterfaceDelta>> {
        let slots = batch::lookup_all::<u32, InterfaceCounters>(map.fd().as_fd(), cpus)?;
        let mut deltas = Vec::new();
        let mut present = Vec::new();
        for (_, per_cpu) in slots {
            // The agent writes the same ifindex into every CPU's copy; 0: an empty slot.
            let ifindex = per_cpu.first().map_or(0, |cpu| cpu.ifindex);
            if ifindex == 0 {
                continue;
            }
            present.push(ifindex);
            let now = sum(&per_cpu);
            let tracked = self.tracked.entry(ifindex).or_insert_with(|| Tracked {
                // Counted before this agent read it: not new.
                last: now,
                ..Tracked::default()
            });
            let Some(interface) = interface_name(ifindex) else {
                continue;
            };
            deltas.push(tracked.advance(interface, now));
        }
        self.tracked.retain(|ifindex, _| present.contains(ifindex));
        Ok(deltas)
    }
}

impl Tracked {
    fn advance(&mut self, interface: String, now: InterfaceCounters) -> InterfaceDelta {
        let last = self.last;
        self.last = now;
        let new = |now: u64, last: u64| now.saturating_sub(last);
        let sent_bytes = new(now.wire_tx_bytes, last.wire_tx_bytes);
        let received_bytes = new(now.wire_rx_bytes, last.wire_rx_bytes);
        InterfaceDelta {
            interface,
            sent_bytes,
            received_bytes,
            unattributed_sent_bytes: self.sent.advance(
                sent_bytes,
                new(now.attributed_tx_bytes, last.attributed_tx_bytes),
            ),
            unattributed_received_bytes: self.received.advance(
                received_bytes,
                new(now.attributed_rx_bytes, last.attributed_rx_bytes),
            ),
        }
    }
}

fn sum(per_cpu: &[InterfaceCounters]) -> InterfaceCounters {
    per_cpu
        .iter()
        .fold(InterfaceCounters::default(), |mut total, cpu| {
            total.wire_tx_bytes += cpu.wire_tx_bytes;
            total.wire_rx_bytes += cpu.wire_rx_bytes;
            total.wire_tx_packets += cpu.wire_tx_packets;
            total.wire_rx_packets += cpu.wire_rx_packets;
            total.attributed_tx_bytes += cpu.attributed_tx_bytes;
            total.attributed_rx_bytes += cpu.attributed_rx_bytes;
            total.attributed_tx_packets += cpu.attributed_tx_packets;
            total.attributed_rx_packets += cpu.attributed_rx_packets;
            total
        })
}

/// The name of the interface with `ifindex` in this network namespace (None: gone).
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buffer.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_no_socket_saw_are_reported_once_they_last_a_poll() {
        let mut sent = Unattributed::default();
        assert_eq!(sent.advance(5_000, 1_000), 0, "held for a poll");
        assert_eq!(sent.advance(0, 0), 4_000);
        assert_eq!(sent.advance(0, 0), 0, "reported once");
    }

    #[test]
    fn a_packet_between_the_two_programs_at_a_poll_is_not_reported() {
        // Ingress: the interface counted it at poll 1, the socket at poll 2.
        let mut received = Unattributed::default();
        assert_eq!(received.advance(1_500, 0), 0);
        assert_eq!(received.advance(10_000, 11_500), 0);
        assert_eq!(received.advance(10_000, 10_000), 0);
        // Egress: the socket first.
        let mut sent = Unattributed::default();
        assert_eq!(sent.advance(0, 1_500), 0);
        assert_eq!(sent.advance(1_500, 0), 0);
        assert_eq!(sent.advance(0, 0), 0);
    }

    #[test]
    fn attributed_bytes_that_never_left_hide_later_traffic_for_one_poll_at_most() {
        let mut sent = Unattributed::default();
        // 3,000 attributed bytes dropped before the interface (no ARP answer).
        assert_eq!(sent.advance(0, 3_000), 0);
        assert_eq!(sent.advance(0, 0), 0, "forgiven");
        // Then 8,000 bytes of frames from a packet socket.
        assert_eq!(sent.advance(8_000, 0), 0);
        assert_eq!(sent.advance(0, 0), 8_000);
    }

    #[test]
    fn steady_unattributed_traffic_is_reported_with_one_poll_of_delay() {
        let mut sent = Unattributed::default();
        let reported: u64 = (0..10).map(|_| sent.advance(1_000, 0)).sum();
        assert_eq!(reported, 9_000);
        assert_eq!(sent.advance(0, 0), 1_000);
    }
}
