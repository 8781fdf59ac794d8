//! The flow table: kernel flows aggregated into the series of the metric contract,
//! `(process, remote, port, protocol)`, with bounded cardinality.
//!
//! Prometheus counters must never go down, so membership is sticky while traffic goes on: a
//! remote that got a series of its own keeps it, and a remote folded into `other` stays folded.
//! New remotes are admitted biggest-first while there is room.
//!
//! A series that counted nothing for `metrics.series_idle_seconds` is dropped (and its remote
//! leaves the admitted set when it has no series left), so the caps measure the rig's current
//! traffic, not everything it ever talked to. If the traffic comes back, its series starts again
//! from zero: a counter reset, which `rate()` and `increase()` take as one.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::flow::{ClassKey, FlowDelta, SeriesKey, Traffic, remote_label};

pub struct FlowTable {
    max_remotes: usize,
    max_series: usize,
    /// Series that counted nothing for this long are dropped (`None`: never).
    idle_seconds: Option<u64>,
    /// Canonical addresses (IPv4-mapped IPv6 as IPv4).
    admitted_remotes: HashSet<IpAddr>,
    /// The series this agent made, with when each last counted traffic (Unix seconds). Their
    /// totals are the exporter's; only membership and activity count here.
    series: HashMap<SeriesKey, u64>,
}

/// What one [`FlowTable::apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Traffic added per series in this round.
    pub increments: Vec<(SeriesKey, Traffic)>,
    /// Flow deltas that went into a `remote="other"` series.
    pub folded: u64,
    /// Series dropped in this round for being idle (their totals go too).
    pub expired: Vec<SeriesKey>,
}

impl FlowTable {
    /// `idle_seconds` 0 keeps every series for the agent's lifetime.
    pub fn new(max_remotes: usize, max_series: usize, idle_seconds: u64) -> Self {
        Self {
            max_remotes,
            max_series,
            idle_seconds: (idle_seconds > 0).then_some(idle_seconds),
            admitted_remotes: HashSet::new(),
            series: HashMap::new(),
        }
    }

    /// Adds one poll's deltas, made at `now` (Unix seconds), and drops the series idle since
    /// long enough.
    pub fn apply(&mut self, deltas: &[FlowDelta], now: u64) -> Applied {
        self.admit_new_remotes(deltas);
        let mut increments: HashMap<SeriesKey, Traffic> = HashMap::new();
        let mut folded = 0;
        for delta in deltas.iter().filter(|delta| !delta.traffic.is_zero()) {
            let mut key = SeriesKey::of(&ClassKey::of(delta));
            let known = self.series.contains_key(&key);
            let room = self.series.len() < self.max_series;
            if !self.admitted_remotes.contains(&delta.remote.to_canonical()) || (!known && !room) {
                key = key.folded();
                folded += 1;
            }
            self.series.insert(key.clone(), now);
            increments.entry(key).or_default().add(&delta.traffic);
        }
        let mut increments: Vec<_> = increments.into_iter().collect();
        increments.sort_by(|a, b| a.0.cmp(&b.0));
        Applied {
            increments,
            folded,
            expired: self.expire(now),
        }
    }

    /// Drops the series idle for `idle_seconds` at `now`, and the admitted remotes left
    /// without a series (their room goes to newcomers).
    fn expire(&mut self, now: u64) -> Vec<SeriesKey> {
        let Some(idle_seconds) = self.idle_seconds else {
            return Vec::new();
        };
        let mut expired: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, last_active)| now.saturating_sub(**last_active) >= idle_seconds)
            .map(|(key, _)| key.clone())
            .collect();
        if expired.is_empty() {
            return expired;
        }
        for key in &expired {
            self.series.remove(key);
        }
        let remotes_in_use: HashSet<&str> =
            self.series.keys().map(|key| key.remote.as_str()).collect();
        self.admitted_remotes
            .retain(|remote| remotes_in_use.contains(remote_label(*remote).as_str()));
        expired.sort();
        expired
    }

    /// Admits remotes not seen before, biggest by bytes in this round first, while room lasts.
    fn admit_new_remotes(&mut self, deltas: &[FlowDelta]) {
        if self.admitted_remotes.len() >= self.max_remotes {
            return;
        }
        let mut candidates: HashMap<IpAddr, u64> = HashMap::new();
        for delta in deltas {
            let remote = delta.remote.to_canonical();
            if !self.admitted_remotes.contains(&remote) && !delta.traffic.is_zero() {
                *candidates.entry(remote).or_default() += delta.traffic.total_bytes();
            }
        }
        let mut candidates: Vec<_> = candidates.into_iter().collect();
        // Ties broken by address so the outcome does not depend on hash order.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let room = self.max_remotes - self.admitted_remotes.len();
        self.admitted_remotes
            .extend(candidates.into_iter().take(room).map(|(remote, _)| remote));
    }

    /// How many series this agent made.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Takes back a series a previous agent exported (from the agent state), so the limits
    /// count it: a restart does not start the cap from zero while the old series are still
    /// exported. Its remote keeps its own series while `max_remotes` has room. `last_active`
    /// (Unix seconds) is when it last counted traffic, so a restart does not reset its idle time.
    pub fn restore(&mut self, key: &SeriesKey, last_active: u64) {
        if let Ok(remote) = key.remote.parse::<IpAddr>()
            && self.admitted_remotes.len() < self.max_remotes
        {
            self.admitted_remotes.insert(remote.to_canonical());
        }
        self.series.insert(key.clone(), last_active);
    }

    /// When a series last counted traffic (Unix seconds).
    pub fn last_active(&self, key: &SeriesKey) -> Option<u64> {
        self.series.get(key).copied()
    }

    /// The remotes with series of their own (canonical: IPv4-mapped IPv6 as IPv4).
    pub fn remotes_with_own_series(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.admitted_remotes.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::OTHER_REMOTE;

    fn delta(
        process: &str,
        remote: &str,
        port: Option<u16>,
        protocol: u8,
        bytes: u64,
    ) -> FlowDelta {
        FlowDelta {
            process: process.to_owned(),
            exe: None,
            exe_sha256: None,
            cgroup: None,
            new_flow: false,
            remote: remote.parse().unwrap(),
            port,
            protocol,
            app: crate::naming::App::Unknown,
            name: None,
            account: None,
            traffic: Traffic {
                sent_bytes: bytes,
                received_bytes: bytes / 2,
                sent_packets: 1,
                received_packets: 1,
            },
        }
    }

    /// The table with the totals the exporter keeps from its increments.
    struct Counted {
        table: FlowTable,
        totals: HashMap<SeriesKey, Traffic>,
    }

    impl Counted {
        fn new(max_remotes: usize, max_series: usize) -> Self {
            Self {
                table: FlowTable::new(max_remotes, max_series, 0),
                totals: HashMap::new(),
            }
        }

        fn apply(&mut self, deltas: &[FlowDelta]) -> Applied {
            self.apply_at(deltas, 1_000)
        }

        fn apply_at(&mut self, deltas: &[FlowDelta], now: u64) -> Applied {
            let applied = self.table.apply(deltas, now);
            for (key, traffic) in &applied.increments {
                self.totals.entry(key.clone()).or_default().add(traffic);
            }
            for key in &applied.expired {
                self.totals.remove(key);
            }
            assert_eq!(self.table.len(), self.totals.len());
            applied
        }

        fn restore(&mut self, key: SeriesKey) {
            self.table.restore(&key, 1_000);
            self.totals.entry(key).or_default();
        }

        fn series(&self) -> &HashMap<SeriesKey, Traffic> {
            &self.totals
        }
    }

    fn total_for(table: &Counted, process: &str, remote: &str) -> Traffic {
        let mut sum = Traffic::default();
        for (key, traffic) in table.series() {
            if key.process == process && key.remote == remote {
                sum.add(traffic);
            }
        }
        sum
    }

    #[test]
    fn deltas_of_the_same_series_accumulate() {
        let mut table = Counted::new(10, 100);
        // Two sockets of one process to one pool: one series.
        table.apply(&[
            delta("xmrig", "10.0.0.1", Some(3333), 6, 100),
            delta("xmrig", "10.0.0.1", Some(3333), 6, 50),
        ]);
        table.apply(&[delta("xmrig", "10.0.0.1", Some(3333), 6, 10)]);
        assert_eq!(table.series().len(), 1);
        let traffic = total_for(&table, "xmrig", "10.0.0.1");
        assert_eq!(traffic.sent_bytes, 160);
        assert_eq!(traffic.received_bytes, 50 + 25 + 5);
        assert_eq!(traffic.sent_packets, 3);
    }

    #[test]
    fn top_n_admits_the_biggest_remotes_and_folds_the_rest() {
        let mut table = Counted::new(2, 100);
        let applied = table.apply(&[
            delta("a", "10.0.0.1", Some(80), 6, 10),
            delta("a", "10.0.0.2", Some(80), 6, 1000),
            delta("a", "10.0.0.3", Some(80), 6, 500),
        ]);
        assert_eq!(applied.folded, 1);
        assert_eq!(total_for(&table, "a", "10.0.0.2").sent_bytes, 1000);
        assert_eq!(total_for(&table, "a", "10.0.0.3").sent_bytes, 500);
        assert_eq!(total_for(&table, "a", OTHER_REMOTE).sent_bytes, 10);
        assert_eq!(total_for(&table, "a", "10.0.0.1"), Traffic::default());
    }

    #[test]
    fn membership_is_sticky_so_counters_never_decrease() {
        let mut table = Counted::new(1, 100);
        table.apply(&[delta("a", "10.0.0.1", Some(80), 6, 10)]);
        // A much bigger newcomer does not evict the admitted remote: it is folded.
        table.apply(&[delta("a", "10.0.0.9", Some(80), 6, 1_000_000)]);
        table.apply(&[delta("a", "10.0.0.1", Some(80), 6, 5)]);
        assert_eq!(total_for(&table, "a", "10.0.0.1").sent_bytes, 15);
        assert_eq!(total_for(&table, "a", OTHER_REMOTE).sent_bytes, 1_000_000);
    }

    #[test]
    fn series_cap_folds_new_series_and_drops_their_port() {
        let mut table = Counted::new(100, 2);
        let applied = table.apply(&[
            delta("scan", "10.0.0.1", Some(1), 6, 10),
            delta("scan", "10.0.0.1", Some(2), 6, 10),
            delta("scan", "10.0.0.1", Some(3), 6, 10),
            delta("scan", "10.0.0.1", Some(4), 6, 10),
        ]);
        assert_eq!(applied.folded, 2);
        let other: Vec<_> = table
            .series()
            .keys()
            .filter(|key| key.remote == OTHER_REMOTE)
            .collect();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].port, "");
        assert_eq!(total_for(&table, "scan", OTHER_REMOTE).sent_bytes, 20);
        // Existing series keep counting after the cap is reached.
        table.apply(&[delta("scan", "10.0.0.1", Some(1), 6, 7)]);
        assert_eq!(
            table.series()[&SeriesKey {
                process: "scan".into(),
                remote: "10.0.0.1".into(),
                port: "1".into(),
                protocol: "tcp".into(),
                app: "unknown".into(),
            }]
                .sent_bytes,
            17
        );
    }

    #[test]
    fn restored_series_count_toward_the_limits() {
        let mut table = Counted::new(10, 2);
        for port in ["1", "2"] {
            table.restore(SeriesKey {
                process: "miner".into(),
                remote: "10.0.0.1".into(),
                port: port.into(),
                protocol: "tcp".into(),
                app: "unknown".into(),
            });
        }
        assert_eq!(table.table.len(), 2);
        // A restored series keeps counting under its own labels (the IPv4-mapped form of its
        // address, as the kernel reports it, is the same remote)...
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let applied = table.apply(&[FlowDelta {
            remote: mapped,
            ..delta("miner", "10.0.0.1", Some(1), 6, 5)
        }]);
        assert_eq!(applied.folded, 0);
        assert_eq!(applied.increments[0].0.remote, "10.0.0.1");
        // ...and the cap is reached: a new series folds.
        let applied = table.apply(&[delta("miner", "10.0.0.1", Some(3), 6, 5)]);
        assert_eq!(applied.folded, 1);
        assert_eq!(applied.increments[0].0.remote, OTHER_REMOTE);
    }

    #[test]
    fn increments_report_exactly_what_was_added() {
        let mut table = Counted::new(10, 10);
        let applied = table.apply(&[
            delta("a", "::1", None, 58, 8),
            delta("a", "::1", None, 58, 2),
            FlowDelta {
                app: crate::naming::App::Unknown,
                name: None,
                traffic: Traffic::default(),
                ..delta("b", "::1", None, 58, 0)
            },
        ]);
        assert_eq!(applied.increments.len(), 1);
        assert_eq!(applied.increments[0].0.port, "");
        assert_eq!(applied.increments[0].0.protocol, "icmpv6");
        assert_eq!(applied.increments[0].1.sent_bytes, 10);
    }

    #[test]
    fn idle_series_are_dropped_and_start_again_from_zero() {
        let mut table = Counted::new(2, 100);
        table.table = FlowTable::new(2, 100, 60);
        table.apply_at(&[delta("a", "10.0.0.1", Some(80), 6, 10)], 1_000);
        table.apply_at(&[delta("a", "10.0.0.2", Some(80), 6, 10)], 1_030);
        // Both remotes have their series: a third one folds.
        let applied = table.apply_at(&[delta("a", "10.0.0.3", Some(80), 6, 10)], 1_050);
        assert_eq!(applied.folded, 1);
        assert!(applied.expired.is_empty());
        // 60 s after its last traffic the first series goes, with its remote's room.
        let applied = table.apply_at(&[delta("a", "10.0.0.2", Some(80), 6, 5)], 1_060);
        assert_eq!(applied.expired.len(), 1);
        assert_eq!(applied.expired[0].remote, "10.0.0.1");
        assert_eq!(total_for(&table, "a", "10.0.0.1"), Traffic::default());
        // The folded newcomer gets the room; the active series was kept and goes on counting.
        table.apply_at(&[delta("a", "10.0.0.3", Some(80), 6, 7)], 1_070);
        assert_eq!(total_for(&table, "a", "10.0.0.3").sent_bytes, 7);
        assert_eq!(total_for(&table, "a", "10.0.0.2").sent_bytes, 15);
        // The `other` series expires like any other once nothing folds into it.
        let applied = table.apply_at(&[delta("a", "10.0.0.2", Some(80), 6, 1)], 1_111);
        assert_eq!(applied.expired.len(), 1);
        assert_eq!(applied.expired[0].remote, OTHER_REMOTE);
        assert_eq!(table.table.len(), 2);
    }

    #[test]
    fn a_restored_series_keeps_its_idle_time() {
        let mut table = FlowTable::new(10, 10, 60);
        let key = SeriesKey::of(&ClassKey::of(&delta("a", "10.0.0.1", Some(80), 6, 1)));
        table.restore(&key, 1_000);
        assert!(table.apply(&[], 1_059).expired.is_empty());
        assert_eq!(table.apply(&[], 1_060).expired, vec![key]);
        assert!(table.is_empty());
        assert_eq!(table.remotes_with_own_series().count(), 0);
    }
}
