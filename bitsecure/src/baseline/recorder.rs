//! Learning a baseline: every poll adds one step to a time series per traffic class
//! (process × remote × port × protocol × application); at the end each class becomes a rule
//! with its rate distribution, active fraction, connection rate, cadence and one-cycle profile.
//!
//! The remote of a class is the name the traffic's remote was known by when there was one (so a
//! pool whose name rotates over many addresses becomes one rule for the name), else its address.
//! When an address was seen both with and without a name, its unnamed traffic joins the named
//! class: the name is what the rule should say, and the unnamed traffic was most likely the same
//! remote before this host saw its DNS answer. (In monitoring, traffic to it before its name is
//! known is then unexpected, by address.)

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    matching::NameNetworks,
    model::{Baseline, FORMAT_VERSION, Normal, PacketSocketRule, Profile, Recording, Rule},
    stats,
};
use crate::{
    flow::{
        AskedName, FlowDelta, PacketSocketClass, PacketSocketKind, protocol_label, remote_label,
    },
    naming::App,
};

/// Most profile bins kept per rule (a 1-hour cycle at 5 s steps).
const MAX_PROFILE_BINS: usize = 720;

/// Most names a DNS rule lists; a process that asks for more (a browser, a crawler) gets a
/// rule that checks no names.
pub const MAX_ASKS_PER_RULE: usize = 256;

/// Addresses remembered per named class to fold their unnamed traffic in; a name spread over
/// more addresses than this just leaves the rest's unnamed traffic as address rules.
const MAX_ADDRESSES_PER_NAME: usize = 1024;

/// The remote of a recorded class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum RecordedRemote {
    /// The name the remote was known by (lowercase, no trailing dot).
    Name(String),
    /// Canonical address (IPv4-mapped IPv6 as IPv4), for traffic without a name.
    Address(IpAddr),
}

/// A traffic class being recorded: one rule at the end. Two programs that share a name (or
/// one program run from two cgroups) are two classes: each rule says which program it expects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RecordedClass {
    process: String,
    exe: Option<String>,
    cgroup: Option<String>,
    remote: RecordedRemote,
    port: Option<u16>,
    /// IP protocol number.
    protocol: u8,
    app: App,
}

impl RecordedClass {
    fn of(delta: &FlowDelta) -> Self {
        let remote = match &delta.name {
            Some(name) => RecordedRemote::Name(name.name.clone()),
            None => RecordedRemote::Address(delta.remote.to_canonical()),
        };
        Self {
            process: delta.process.clone(),
            exe: delta.exe.clone(),
            cgroup: delta.cgroup.clone(),
            remote,
            port: delta.port,
            protocol: delta.protocol,
            app: delta.app,
        }
    }
}

/// Per-step samples of one traffic class.
#[derive(Debug, Default)]
struct ClassSeries {
    /// SHA-256 of the executable (the first one read).
    sha256: Option<String>,
    /// The Stratum account the class's flows logged in with (the first one seen).
    account: Option<String>,
    /// Index of the step this class first appeared in; earlier steps were zero.
    first_step: usize,
    sent: Vec<u64>,
    received: Vec<u64>,
    connections: Vec<u32>,
    /// For a named class: the addresses its traffic went to.
    addresses: HashSet<IpAddr>,
}

/// A class's samples over the whole recording.
#[derive(Debug)]
struct FullSeries {
    sha256: Option<String>,
    account: Option<String>,
    sent: Vec<u64>,
    received: Vec<u64>,
    connections: u64,
    addresses: HashSet<IpAddr>,
}

impl ClassSeries {
    fn full(self, total_steps: usize) -> FullSeries {
        let padded = |samples: &[u64]| -> Vec<u64> {
            let mut full = vec![0; self.first_step];
            full.extend_from_slice(samples);
            full.resize(total_steps, 0);
            full
        };
        FullSeries {
            sent: padded(&self.sent),
            received: padded(&self.received),
            connections: self.connections.iter().map(|&c| u64::from(c)).sum(),
            sha256: self.sha256,
            account: self.account,
            addresses: self.addresses,
        }
    }
}

impl FullSeries {
    fn total_bytes(&self) -> u64 {
        self.sent.iter().chain(&self.received).sum()
    }

    /// Adds another class's traffic, step by step (both cover the whole recording).
    fn absorb(&mut self, other: FullSeries) {
        if self.sha256.is_none() {
            self.sha256 = other.sha256;
        }
        if self.account.is_none() {
            self.account = other.account;
        }
        for (mine, theirs) in [
            (&mut self.sent, &other.sent),
            (&mut self.received, &other.received),
        ] {
            for (mine, theirs) in mine.iter_mut().zip(theirs) {
                *mine += theirs;
            }
        }
        self.connections += other.connections;
    }
}

pub struct Recorder {
    step_seconds: f64,
    started_at: jiff::Timestamp,
    steps: usize,
    classes: HashMap<RecordedClass, ClassSeries>,
    max_classes: usize,
    /// Observations of classes beyond `max_classes`, left out of the baseline.
    pub dropped_observations: u64,
    /// Packet and raw sockets held during the recording, with the holder's executable.
    packet_sockets: BTreeMap<(String, PacketSocketKind, String), Option<String>>,
    /// The names each DNS class (a process's queries to one server) asked for; `None` once
    /// past [`MAX_ASKS_PER_RULE`] (a process resolving everything: its rule checks no names).
    asks: HashMap<RecordedClass, Option<BTreeSet<String>>>,
    /// How wide the networks are that rules by name remember.
    name_networks: NameNetworks,
}

impl Recorder {
    pub fn new(step_seconds: f64, started_at: jiff::Timestamp, max_classes: usize) -> Self {
        Self {
            step_seconds,
            started_at,
            steps: 0,
            classes: HashMap::new(),
            max_classes,
            dropped_observations: 0,
            packet_sockets: BTreeMap::new(),
            asks: HashMap::new(),
            name_networks: NameNetworks::default(),
        }
    }

    /// Rules by name remember their addresses' networks this wide.
    pub fn with_name_networks(mut self, name_networks: NameNetworks) -> Self {
        self.name_networks = name_networks;
        self
    }

    /// Notes the DNS questions of one poll, under the DNS class each was asked in.
    pub fn record_asked(&mut self, asked: &[AskedName]) {
        for question in asked {
            // The DNS class by the server's name when the traffic went under one (its address
            // unnamed traffic joins it too), else by address.
            let class = |remote| RecordedClass {
                process: question.process.clone(),
                exe: question.exe.clone(),
                cgroup: question.cgroup.clone(),
                remote,
                port: Some(question.port),
                protocol: question.protocol,
                app: App::Dns,
            };
            let named = question
                .server_name
                .clone()
                .map(|name| class(RecordedRemote::Name(name)))
                .filter(|named| self.classes.contains_key(named));
            let class = named
                .unwrap_or_else(|| class(RecordedRemote::Address(question.server.to_canonical())));
            if !self.asks.contains_key(&class) && self.asks.len() >= self.max_classes {
                self.dropped_observations += 1;
                continue;
            }
            let names = self
                .asks
                .entry(class)
                .or_insert_with(|| Some(BTreeSet::new()));
            if let Some(set) = names {
                if set.len() >= MAX_ASKS_PER_RULE && !set.contains(&question.name) {
                    *names = None;
                } else {
                    set.insert(question.name.clone());
                }
            }
        }
    }

    /// Notes the packet and raw sockets held at one poll.
    pub fn record_packet_sockets<'a>(
        &mut self,
        held: impl IntoIterator<Item = &'a PacketSocketClass>,
    ) {
        for class in held {
            // Bounded like the traffic classes: a process opening sockets of every protocol
            // must not grow the recording without end.
            let key = (class.process.clone(), class.kind, class.protocol.clone());
            if !self.packet_sockets.contains_key(&key)
                && self.packet_sockets.len() >= self.max_classes
            {
                self.dropped_observations += 1;
                continue;
            }
            let exe = (!class.exe.is_empty()).then(|| class.exe.clone());
            self.packet_sockets.entry(key).or_insert(exe);
        }
    }

    /// Adds one poll's traffic as the next step.
    pub fn record_step(&mut self, deltas: &[FlowDelta]) {
        let step = self.steps;
        self.steps += 1;
        for delta in deltas {
            let key = RecordedClass::of(delta);
            if !self.classes.contains_key(&key) && self.classes.len() >= self.max_classes {
                self.dropped_observations += 1;
                continue;
            }
            let named = matches!(key.remote, RecordedRemote::Name(_));
            let series = self.classes.entry(key).or_insert_with(|| ClassSeries {
                first_step: step,
                ..ClassSeries::default()
            });
            if series.sha256.is_none() {
                series.sha256.clone_from(&delta.exe_sha256);
            }
            if series.account.is_none() {
                series.account.clone_from(&delta.account);
            }
            if named && series.addresses.len() < MAX_ADDRESSES_PER_NAME {
                series.addresses.insert(delta.remote.to_canonical());
            }
            // Steps without traffic for this class stay implicit until it shows up again.
            let index = step - series.first_step;
            for samples in [&mut series.sent, &mut series.received] {
                samples.resize(index + 1, 0);
            }
            series.connections.resize(index + 1, 0);
            series.sent[index] += delta.traffic.sent_bytes;
            series.received[index] += delta.traffic.received_bytes;
            series.connections[index] += u32::from(delta.new_flow);
        }
    }

    pub fn elapsed_seconds(&self) -> f64 {
        self.steps as f64 * self.step_seconds
    }

    /// Distinct remotes seen so far: names, and addresses of traffic without a name (progress
    /// display).
    pub fn destinations(&self) -> usize {
        let remotes: HashSet<&RecordedRemote> =
            self.classes.keys().map(|class| &class.remote).collect();
        remotes.len()
    }

    pub fn classes(&self) -> usize {
        self.classes.len()
    }

    /// Turns the recording into a baseline.
    pub fn finish(self, host: &str) -> Baseline {
        let total_steps = self.steps;
        let step_seconds = self.step_seconds;
        let mut classes: HashMap<RecordedClass, FullSeries> = self
            .classes
            .into_iter()
            .map(|(class, series)| (class, series.full(total_steps)))
            .collect();
        fold_unnamed_into_names(&mut classes);
        let mut asks = self.asks;
        let mut rules: Vec<(u64, Rule)> = classes
            .into_iter()
            .map(|(class, series)| {
                let class_asks = asks
                    .remove(&class)
                    .flatten()
                    .map(|names| names.into_iter().collect());
                let FullSeries {
                    sha256,
                    account,
                    sent,
                    received,
                    connections,
                    addresses,
                } = series;
                // The networks a name's traffic went to, for its moves later.
                let prefixes = matches!(class.remote, RecordedRemote::Name(_))
                    .then(|| {
                        let networks: BTreeSet<String> = addresses
                            .iter()
                            .map(|&address| self.name_networks.of(address))
                            .collect();
                        networks.into_iter().collect::<Vec<_>>()
                    })
                    .filter(|networks| !networks.is_empty());
                let both: Vec<u64> = sent.iter().zip(&received).map(|(s, r)| s + r).collect();
                let hours = (total_steps as f64 * step_seconds / 3600.0).max(f64::EPSILON);
                let cadence = stats::detect_cadence(&both, step_seconds);
                let (bursts, longest_gap) = stats::bursts_and_longest_gap(&both, step_seconds);
                let profile = cadence.as_ref().map(|cadence| {
                    let bins = ((cadence.period_seconds / step_seconds).round() as usize)
                        .clamp(1, MAX_PROFILE_BINS);
                    Profile {
                        step_seconds: cadence.period_seconds / bins as f64,
                        sent: stats::profile(&sent, step_seconds, cadence.period_seconds, bins),
                        received: stats::profile(
                            &received,
                            step_seconds,
                            cadence.period_seconds,
                            bins,
                        ),
                    }
                });
                let rule = Rule {
                    process: class.process,
                    exe: class.exe,
                    sha256,
                    cgroup: class.cgroup,
                    remote: match class.remote {
                        RecordedRemote::Name(name) => name,
                        RecordedRemote::Address(address) => remote_label(address),
                    },
                    port: class.port,
                    protocol: protocol_label(class.protocol),
                    app: Some(class.app.as_str().to_owned()),
                    account,
                    prefixes,
                    asks: class_asks,
                    note: None,
                    learnt_late: None,
                    normal: Some(Normal {
                        sent_bytes_per_second: stats::rate_stats(&sent, step_seconds),
                        received_bytes_per_second: stats::rate_stats(&received, step_seconds),
                        active_fraction: stats::active_fraction(&both),
                        connections_per_hour: connections as f64 / hours,
                        cadence_seconds: cadence.map(|cadence| cadence.period_seconds),
                        bursts: Some(bursts),
                        longest_gap_seconds: longest_gap,
                    }),
                    profile,
                };
                (both.iter().sum::<u64>(), rule)
            })
            .collect();
        // Grouped by process, biggest traffic first: the order a person reads it in.
        rules.sort_by(|a, b| a.1.process.cmp(&b.1.process).then(b.0.cmp(&a.0)));
        Baseline {
            format_version: FORMAT_VERSION,
            recording: Some(Recording {
                started_at: self.started_at.to_string(),
                duration_seconds: total_steps as f64 * step_seconds,
                step_seconds,
                host: host.to_owned(),
            }),
            rules: rules.into_iter().map(|(_, rule)| rule).collect(),
            packet_sockets: self
                .packet_sockets
                .into_iter()
                .map(|((process, kind, protocol), exe)| PacketSocketRule {
                    process,
                    exe,
                    kind: kind.as_str().to_owned(),
                    protocol,
                    note: None,
                })
                .collect(),
        }
    }
}

/// Moves the traffic of each class without a name into the named class (same process, port,
/// protocol and app) whose traffic went to that address; when several names shared the address,
/// into the one with the most traffic (then the first name in order, to be deterministic).
fn fold_unnamed_into_names(classes: &mut HashMap<RecordedClass, FullSeries>) {
    let mut owners: HashMap<RecordedClass, (u64, Reverse<RecordedClass>)> = HashMap::new();
    for (class, series) in classes.iter() {
        if !matches!(class.remote, RecordedRemote::Name(_)) {
            continue;
        }
        let candidate = (series.total_bytes(), Reverse(class.clone()));
        for &address in &series.addresses {
            let unnamed = RecordedClass {
                remote: RecordedRemote::Address(address),
                ..class.clone()
            };
            let owner = owners.entry(unnamed).or_insert_with(|| candidate.clone());
            if candidate > *owner {
                *owner = candidate.clone();
            }
        }
    }
    for (unnamed, (_, Reverse(named))) in owners {
        if let Some(series) = classes.remove(&unnamed)
            && let Some(owner) = classes.get_mut(&named)
        {
            owner.absorb(series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Traffic;

    fn delta(process: &str, remote: &str, port: u16, sent: u64, new_flow: bool) -> FlowDelta {
        FlowDelta {
            process: process.to_owned(),
            exe: Some(format!("/usr/bin/{process}")),
            exe_sha256: None,
            cgroup: None,
            new_flow,
            remote: remote.parse().unwrap(),
            port: Some(port),
            protocol: 6,
            app: crate::naming::App::Unknown,
            name: None,
            account: None,
            traffic: Traffic {
                sent_bytes: sent,
                received_bytes: sent * 2,
                sent_packets: 1,
                received_packets: 1,
            },
        }
    }

    #[test]
    fn rules_record_their_bursts_and_longest_quiet_spell() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut recorder = Recorder::new(5.0, start, 100);
        // A lookup at start-up and one 10 polls later; a connection busy all along.
        for step in 0..20 {
            let mut deltas = vec![delta("xmrig", "10.0.0.2", 3333, 100, step == 0)];
            if step == 2 || step == 12 {
                deltas.push(delta("xmrig", "10.0.0.53", 53, 40, true));
            }
            recorder.record_step(&deltas);
        }
        let baseline = recorder.finish("rig");
        let normal_of = |remote: &str| {
            let rule = baseline.rules.iter().find(|r| r.remote == remote).unwrap();
            rule.normal.clone().unwrap()
        };
        let lookup = normal_of("10.0.0.53");
        assert_eq!(
            (lookup.bursts, lookup.longest_gap_seconds),
            (Some(2), Some(45.0))
        );
        let pool = normal_of("10.0.0.2");
        assert_eq!((pool.bursts, pool.longest_gap_seconds), (Some(1), None));
        let text = crate::baseline::file::render(&baseline);
        assert!(text.contains("longest_gap_seconds = 45.0"), "{text}");
        let parsed = crate::baseline::file::parse(&text, "recorded").expect("valid");
        assert_eq!(parsed.rules, baseline.rules);
        let shown = crate::baseline::file::show(&parsed);
        assert!(shown.contains("rare: never reported silent"), "{shown}");
    }

    #[test]
    fn each_program_under_a_name_gets_its_own_rule_with_executable_hash_and_cgroup() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut recorder = Recorder::new(5.0, start, 100);
        let miner = FlowDelta {
            exe_sha256: Some("a".repeat(64)),
            cgroup: Some("/system.slice/xmrig.service".to_owned()),
            account: Some("wallet.rig01".to_owned()),
            ..delta("xmrig", "10.0.0.2", 3333, 100, true)
        };
        let other = FlowDelta {
            exe: Some("/opt/other/xmrig".to_owned()),
            exe_sha256: Some("b".repeat(64)),
            ..miner.clone()
        };
        recorder.record_step(&[miner.clone(), other]);
        recorder.record_step(&[miner]);
        let baseline = recorder.finish("rig");
        let mut holders: Vec<(Option<&str>, Option<&str>, Option<&str>)> = baseline
            .rules
            .iter()
            .map(|rule| {
                (
                    rule.exe.as_deref(),
                    rule.sha256.as_deref(),
                    rule.cgroup.as_deref(),
                )
            })
            .collect();
        holders.sort();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert_eq!(
            holders,
            [
                (
                    Some("/opt/other/xmrig"),
                    Some(b.as_str()),
                    Some("/system.slice/xmrig.service")
                ),
                (
                    Some("/usr/bin/xmrig"),
                    Some(a.as_str()),
                    Some("/system.slice/xmrig.service")
                ),
            ]
        );
        // Both are valid in one file: they differ in identity.
        let text = crate::baseline::file::render(&baseline);
        crate::baseline::file::parse(&text, "recorded").expect("valid");
        assert!(text.contains("sha256 = \"aaaa"), "{text}");
        assert!(text.contains("account = \"wallet.rig01\""), "{text}");
        assert!(
            baseline
                .rules
                .iter()
                .all(|rule| rule.account.as_deref() == Some("wallet.rig01"))
        );
        assert!(
            text.contains("cgroup = \"/system.slice/xmrig.service\""),
            "{text}"
        );
    }

    #[test]
    fn a_rule_by_name_records_the_networks_of_its_addresses() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut recorder = Recorder::new(5.0, start, 100);
        let named = |remote: &str| FlowDelta {
            name: Some(crate::flow::RemoteName {
                name: "pool.example.org".into(),
                source: crate::naming::Source::Dns,
            }),
            ..delta("xmrig", remote, 3333, 100, true)
        };
        recorder.record_step(&[named("10.0.0.7"), named("10.0.0.9"), named("fd00:1:2:3::9")]);
        recorder.record_step(&[delta("xmrig", "10.9.9.9", 4444, 10, true)]);
        let baseline = recorder.finish("rig");
        let by_name = baseline
            .rules
            .iter()
            .find(|rule| rule.remote == "pool.example.org")
            .unwrap();
        assert_eq!(
            by_name.prefixes,
            Some(vec!["10.0.0.0/24".to_owned(), "fd00:1:2::/48".to_owned()])
        );
        let by_address = baseline
            .rules
            .iter()
            .find(|rule| rule.remote == "10.9.9.9")
            .unwrap();
        assert_eq!(by_address.prefixes, None);
        let text = crate::baseline::file::render(&baseline);
        crate::baseline::file::parse(&text, "recorded").expect("valid");

        // Wider networks when configured (a pool behind a CDN).
        let mut recorder =
            Recorder::new(5.0, start, 100).with_name_networks(NameNetworks { v4: 16, v6: 32 });
        recorder.record_step(&[
            named("10.0.0.7"),
            named("10.0.200.9"),
            named("fd00:1:2:3::9"),
        ]);
        let baseline = recorder.finish("rig");
        assert_eq!(
            baseline.rules[0].prefixes,
            Some(vec!["10.0.0.0/16".to_owned(), "fd00:1::/32".to_owned()])
        );
    }

    #[test]
    fn a_dns_rule_lists_the_names_its_process_asked_up_to_a_bound() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let resolver: IpAddr = "10.0.0.53".parse().unwrap();
        let question = |process: &str, name: &str| AskedName {
            process: process.to_owned(),
            exe: Some(format!("/usr/bin/{process}")),
            cgroup: None,
            server: resolver,
            server_name: None,
            port: 53,
            protocol: 17,
            name: name.to_owned(),
        };
        let dns_delta = |process: &str| FlowDelta {
            app: App::Dns,
            protocol: 17,
            ..delta(process, "10.0.0.53", 53, 60, true)
        };
        let mut recorder = Recorder::new(5.0, start, 100);
        recorder.record_step(&[dns_delta("xmrig"), dns_delta("browser")]);
        recorder.record_asked(&[
            question("xmrig", "pool.example.org"),
            question("xmrig", "pool.example.org"),
            question("xmrig", "backup.example.org"),
        ]);
        let many: Vec<AskedName> = (0..=MAX_ASKS_PER_RULE)
            .map(|i| question("browser", &format!("site{i}.example")))
            .collect();
        recorder.record_asked(&many);
        let baseline = recorder.finish("rig");
        let asks = |process: &str| {
            baseline
                .rules
                .iter()
                .find(|rule| rule.process == process)
                .map(|rule| rule.asks.clone())
                .expect("a rule")
        };
        assert_eq!(
            asks("xmrig"),
            Some(vec![
                "backup.example.org".to_owned(),
                "pool.example.org".to_owned()
            ])
        );
        // Past the bound: no list, so no name is ever new for it.
        assert_eq!(asks("browser"), None);
        let text = crate::baseline::file::render(&baseline);
        assert!(
            text.contains("asks = [\"backup.example.org\", \"pool.example.org\"]"),
            "{text}"
        );
        crate::baseline::file::parse(&text, "recorded").expect("valid");
    }

    #[test]
    fn periodic_class_becomes_a_rule_with_cadence_and_profile() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut recorder = Recorder::new(5.0, start, 100);
        // 30 minutes at 5 s: a job every 300 s (one 10 kB step), a reporter that appears
        // later and talks every step.
        for step in 0..360 {
            let mut deltas = Vec::new();
            if step % 60 == 0 {
                deltas.push(delta("xmrig", "10.0.0.2", 3333, 10_000, step == 0));
            }
            if step >= 100 {
                deltas.push(delta("monitor", "10.0.0.9", 443, 100, step == 100));
            }
            recorder.record_step(&deltas);
        }
        assert_eq!(recorder.destinations(), 2);
        let baseline = recorder.finish("rig");
        assert_eq!(baseline.rules.len(), 2);
        let recording = baseline.recording.as_ref().unwrap();
        assert_eq!(recording.duration_seconds, 1800.0);
        assert_eq!(recording.started_at, "2026-11-24T12:00:00Z");

        let miner = baseline
            .rules
            .iter()
            .find(|rule| rule.process == "xmrig")
            .unwrap();
        assert_eq!(miner.remote, "10.0.0.2");
        assert_eq!(miner.port, Some(3333));
        assert_eq!(miner.protocol, "tcp");
        assert_eq!(miner.app.as_deref(), Some("unknown"));
        assert_eq!(miner.exe.as_deref(), Some("/usr/bin/xmrig"));
        let normal = miner.normal.as_ref().unwrap();
        // 6 jobs × 10 kB over 1800 s.
        assert!((normal.sent_bytes_per_second.mean - 60_000.0 / 1800.0).abs() < 1e-9);
        assert_eq!(normal.sent_bytes_per_second.max, 2000.0);
        assert!((normal.active_fraction - 6.0 / 360.0).abs() < 1e-9);
        assert!((normal.connections_per_hour - 2.0).abs() < 1e-9);
        let cadence = normal.cadence_seconds.expect("periodic");
        assert!((cadence - 300.0).abs() <= 15.0, "cadence {cadence}");
        let profile = miner.profile.as_ref().expect("profile of a periodic rule");
        assert_eq!(profile.sent.len(), profile.received.len());
        let peak = profile.sent.iter().cloned().fold(0.0, f64::max);
        assert!(peak > 0.0);

        // The reporter only existed for the last 260 steps: its mean counts the full recording.
        let reporter = baseline
            .rules
            .iter()
            .find(|rule| rule.process == "monitor")
            .unwrap();
        let normal = reporter.normal.as_ref().unwrap();
        assert!((normal.sent_bytes_per_second.mean - 260.0 * 100.0 / 1800.0).abs() < 1e-9);
        assert!((normal.active_fraction - 260.0 / 360.0).abs() < 1e-9);
    }

    fn held(process: &str, kind: PacketSocketKind, protocol: &str) -> PacketSocketClass {
        PacketSocketClass {
            process: process.to_owned(),
            exe: format!("/usr/sbin/{process}"),
            kind,
            protocol: protocol.to_owned(),
        }
    }

    #[test]
    fn packet_sockets_held_while_recording_are_expected_afterwards() {
        let start: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut recorder = Recorder::new(5.0, start, 2);
        let dhcp = held("dhclient", PacketSocketKind::Packet, "all");
        let ping = held("ping", PacketSocketKind::Raw, "icmp");
        recorder.record_packet_sockets([&dhcp]);
        recorder.record_packet_sockets([&dhcp, &ping]);
        // Beyond the limit: left out, counted.
        recorder.record_packet_sockets([&held("spray", PacketSocketKind::Packet, "ipv4")]);
        assert_eq!(recorder.dropped_observations, 1);
        let baseline = recorder.finish("rig");
        let recorded: Vec<(&str, Option<&str>, &str, &str)> = baseline
            .packet_sockets
            .iter()
            .map(|rule| {
                (
                    rule.process.as_str(),
                    rule.exe.as_deref(),
                    rule.kind.as_str(),
                    rule.protocol.as_str(),
                )
            })
            .collect();
        assert_eq!(
            recorded,
            [
                ("dhclient", Some("/usr/sbin/dhclient"), "packet", "all"),
                ("ping", Some("/usr/sbin/ping"), "raw", "icmp"),
            ]
        );
        assert!(baseline.packet_sockets[0].matches(&dhcp));
        assert!(!baseline.packet_sockets[0].matches(&held(
            "dhclient",
            PacketSocketKind::Packet,
            "ipv4"
        )));
        assert!(!baseline.packet_sockets[0].matches(&held(
            "dhclient",
            PacketSocketKind::Raw,
            "all"
        )));
        assert!(!baseline.packet_sockets[0].matches(&held(
            "dhclient2",
            PacketSocketKind::Packet,
            "all"
        )));
        // And it survives the file.
        let text = crate::baseline::file::render(&baseline);
        assert!(text.contains("[[packet_socket]]\nprocess = \"dhclient\"\nexe = \"/usr/sbin/dhclient\"\nkind = \"packet\"\nprotocol = \"all\"\n"));
        assert_eq!(
            crate::baseline::file::parse(&text, "rendered").unwrap(),
            baseline
        );
    }

    #[test]
    fn classes_beyond_the_limit_are_dropped_and_counted() {
        let mut recorder = Recorder::new(1.0, jiff::Timestamp::UNIX_EPOCH, 1);
        recorder.record_step(&[
            delta("a", "10.0.0.1", 1, 10, true),
            delta("b", "10.0.0.2", 1, 10, true),
        ]);
        assert_eq!(recorder.classes(), 1);
        assert_eq!(recorder.dropped_observations, 1);
    }

    /// `delta` speaking `app`, its remote known as `name` when given.
    fn speaking(mut delta: FlowDelta, app: App, name: Option<&str>) -> FlowDelta {
        delta.app = app;
        delta.name = name.map(|name| crate::flow::RemoteName {
            name: name.to_owned(),
            source: crate::naming::Source::Dns,
        });
        delta
    }

    fn rule<'a>(baseline: &'a Baseline, remote: &str, app: &str) -> &'a Rule {
        baseline
            .rules
            .iter()
            .find(|rule| rule.remote == remote && rule.app.as_deref() == Some(app))
            .unwrap_or_else(|| panic!("no rule for {remote} ({app}) in {:#?}", baseline.rules))
    }

    fn sent_total(rule: &Rule, seconds: f64) -> f64 {
        let mean = rule.normal.as_ref().unwrap().sent_bytes_per_second.mean;
        (mean * seconds).round()
    }

    #[test]
    fn a_name_rotating_over_addresses_becomes_one_rule() {
        let mut recorder = Recorder::new(1.0, jiff::Timestamp::UNIX_EPOCH, 100);
        let pool = Some("pool.example.org");
        for step in 0..10 {
            let address = ["10.0.0.2", "10.0.0.3", "::ffff:10.0.0.4"][step % 3];
            recorder.record_step(&[speaking(
                delta("xmrig", address, 3333, 100, step < 3),
                App::Stratum,
                pool,
            )]);
        }
        assert_eq!(recorder.classes(), 1);
        assert_eq!(recorder.destinations(), 1);
        let baseline = recorder.finish("rig");
        assert_eq!(baseline.rules.len(), 1);
        let pool = rule(&baseline, "pool.example.org", "stratum");
        assert_eq!(sent_total(pool, 10.0), 1000.0);
        let normal = pool.normal.as_ref().unwrap();
        assert!((normal.connections_per_hour - 3.0 * 360.0).abs() < 1e-9);
        assert_eq!(normal.active_fraction, 1.0);
        // The file says the name and the app.
        let text = crate::baseline::file::render(&baseline);
        assert!(
            text.contains("remote = \"pool.example.org\"\nport = 3333\nprotocol = \"tcp\"\napp = \"stratum\"\n"),
            "{text}"
        );
    }

    #[test]
    fn unnamed_traffic_to_a_named_address_joins_the_name() {
        let mut recorder = Recorder::new(1.0, jiff::Timestamp::UNIX_EPOCH, 100);
        // Before the DNS answer: by address; after: by name. Another address stays unnamed;
        // the same address speaking another app is another class.
        recorder.record_step(&[
            speaking(
                delta("xmrig", "10.0.0.2", 3333, 10, true),
                App::Stratum,
                None,
            ),
            speaking(
                delta("xmrig", "10.0.0.9", 3333, 7, true),
                App::Stratum,
                None,
            ),
            speaking(
                delta("xmrig", "10.0.0.2", 3333, 1000, true),
                App::Http,
                None,
            ),
        ]);
        for _ in 0..4 {
            recorder.record_step(&[speaking(
                delta("xmrig", "10.0.0.2", 3333, 100, false),
                App::Stratum,
                Some("pool.example.org"),
            )]);
        }
        assert_eq!(recorder.classes(), 4);
        let baseline = recorder.finish("rig");
        assert_eq!(baseline.rules.len(), 3, "{:#?}", baseline.rules);
        let named = rule(&baseline, "pool.example.org", "stratum");
        assert_eq!(sent_total(named, 5.0), 410.0);
        assert_eq!(named.normal.as_ref().unwrap().active_fraction, 1.0);
        assert_eq!(sent_total(rule(&baseline, "10.0.0.9", "stratum"), 5.0), 7.0);
        assert_eq!(sent_total(rule(&baseline, "10.0.0.2", "http"), 5.0), 1000.0);
    }

    #[test]
    fn unnamed_traffic_to_a_shared_address_joins_its_busiest_name() {
        let mut recorder = Recorder::new(1.0, jiff::Timestamp::UNIX_EPOCH, 100);
        recorder.record_step(&[
            speaking(
                delta("curl", "10.0.0.5", 443, 50, true),
                App::Tls,
                Some("a.cdn.example"),
            ),
            speaking(
                delta("curl", "10.0.0.5", 443, 80, true),
                App::Tls,
                Some("b.cdn.example"),
            ),
            speaking(delta("curl", "10.0.0.5", 443, 5, true), App::Tls, None),
        ]);
        assert_eq!(recorder.destinations(), 3);
        let baseline = recorder.finish("rig");
        assert_eq!(baseline.rules.len(), 2);
        assert_eq!(
            sent_total(rule(&baseline, "a.cdn.example", "tls"), 1.0),
            50.0
        );
        assert_eq!(
            sent_total(rule(&baseline, "b.cdn.example", "tls"), 1.0),
            85.0
        );
    }
}
