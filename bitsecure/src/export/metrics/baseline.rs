//! The baseline metrics: unexpected traffic, and the rate, deviation, silence and cadence of
//! every rule, from the baseline service's reports.

use std::collections::BTreeMap;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::register;
use crate::{
    baseline::{
        monitor::RuleStatus,
        risk::Risk,
        service::{BaselineReport, BaselineState},
        settle::Stage,
    },
    flow::{SeriesKey, port_label},
};

/// The comparison with the baseline: unexpected traffic and the state of every rule.
pub struct BaselineMetrics {
    pub rules: IntGauge,
    pub loaded_timestamp: prometheus::Gauge,
    pub reload_failures: IntCounter,
    pub learning: IntGauge,
    pub learning_remaining: prometheus::Gauge,
    pub unexpected_sent_bytes: IntCounterVec,
    pub unexpected_received_bytes: IntCounterVec,
    pub unexpected_flows: IntGauge,
    pub unexpected_packet_sockets: prometheus::IntGaugeVec,
    pub risk_pages: prometheus::IntGaugeVec,
    pub settling: IntGauge,
    pub quiet_seconds: prometheus::Gauge,
    pub learnt_late_rules: IntGauge,
    pub departures: IntCounterVec,
    pub impostor_bytes: IntCounterVec,
    pub payout_changed_bytes: IntCounterVec,
    pub executable_changed: prometheus::IntGaugeVec,
    pub dns_new_names: prometheus::IntGaugeVec,
    pub dns_tunnels: prometheus::IntGaugeVec,
    pub name_moved: prometheus::IntGaugeVec,
    pub unexpected_first_seen: prometheus::GaugeVec,
    pub unexpected_last_seen: prometheus::GaugeVec,
    pub rule_rate: prometheus::GaugeVec,
    pub rule_reference: prometheus::GaugeVec,
    pub rule_deviation: prometheus::GaugeVec,
    pub rule_silence_seconds: prometheus::GaugeVec,
    pub rule_silence_ratio: prometheus::GaugeVec,
    pub rule_expected_cadence: prometheus::GaugeVec,
    pub rule_observed_cadence: prometheus::GaugeVec,
    pub rule_hits: IntCounterVec,
    pub rule_bytes: IntCounterVec,
    pub rule_silent_since: prometheus::GaugeVec,
    pub rule_last_seen: prometheus::GaugeVec,
    pub rule_stale: prometheus::GaugeVec,
    pub rule_upgradable: prometheus::IntGaugeVec,
}

/// Labels of the unexpected-traffic series: the class, then how much it matters and why.
const UNEXPECTED_LABELS: [&str; 7] = [
    SeriesKey::LABEL_NAMES[0],
    SeriesKey::LABEL_NAMES[1],
    SeriesKey::LABEL_NAMES[2],
    SeriesKey::LABEL_NAMES[3],
    SeriesKey::LABEL_NAMES[4],
    "risk",
    "reason",
];

impl BaselineMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                prometheus::GaugeVec::new(Opts::new(name, help), labels)?,
            )
        };
        // A rule's labels are as written in the baseline file (`app` is empty for a rule that
        // matches any application).
        const RULE_LABELS: [&str; 5] = SeriesKey::LABEL_NAMES;
        let with_direction = [&RULE_LABELS[..], &["direction"]].concat();
        // `app` tells "the miner speaks HTTP to its pool" apart from its usual stratum; `risk`
        // and `reason` say how much it matters and why (what pages: bitsecure_risk_pages).
        let unexpected_labels = UNEXPECTED_LABELS;
        Ok(Self {
            rules: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_rules",
                    "Rules in the baseline in force.",
                )?,
            )?,
            loaded_timestamp: register(
                registry,
                prometheus::Gauge::new(
                    "bitsecure_baseline_loaded_timestamp_seconds",
                    "When the baseline in force was loaded (Unix time); 0 if none.",
                )?,
            )?,
            reload_failures: register(
                registry,
                IntCounter::new(
                    "bitsecure_baseline_reload_failures_total",
                    "Baseline loads that failed (bad file); the previous baseline stays in force.",
                )?,
            )?,
            learning: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_learning",
                    "1 while the agent learns a baseline (no baseline file yet), else 0.",
                )?,
            )?,
            learning_remaining: register(
                registry,
                prometheus::Gauge::new(
                    "bitsecure_baseline_learning_remaining_seconds",
                    "Seconds of learning left before the agent writes the baseline and monitors.",
                )?,
            )?,
            unexpected_sent_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_unexpected_sent_bytes_total",
                        "L3 bytes sent by traffic no baseline rule matches; remote=\"other\" when the list is full.",
                    ),
                    &unexpected_labels,
                )?,
            )?,
            unexpected_received_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_unexpected_received_bytes_total",
                        "L3 bytes received by traffic no baseline rule matches; remote=\"other\" when the list is full.",
                    ),
                    &unexpected_labels,
                )?,
            )?,
            settling: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_settling",
                    "1 while the baseline settles after learning (low-risk newcomers join it, \
                     marked learnt_late), 0 once stable or while not monitoring.",
                )?,
            )?,
            quiet_seconds: register(
                registry,
                prometheus::Gauge::new(
                    "bitsecure_baseline_quiet_seconds",
                    "Seconds since the last traffic class joined the baseline (learning's end \
                     or the latest rule learnt late): the evidence of a settled baseline.",
                )?,
            )?,
            learnt_late_rules: register(
                registry,
                IntGauge::new(
                    "bitsecure_baseline_learnt_late_rules",
                    "Rules the agent added while the baseline settled, not yet reviewed (their \
                     learnt_late line is still in the file).",
                )?,
            )?,
            risk_pages: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_risk_pages",
                        "1 for each risk whose unexpected traffic pages (risk.page: \
                         BitSecureUnexpectedDestination), 0 for the risks listed for review.",
                    ),
                    &["risk"],
                )?,
            )?,
            departures: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_alertable_departures_total",
                        "Departures from the baseline first seen (an unexpected traffic class, a \
                         changed executable, a moved name, a new name asked, a DNS tunnel, a \
                         packet socket), by risk and reason: how noisy this rig is.",
                    ),
                    &["risk", "reason"],
                )?,
            )?,
            unexpected_packet_sockets: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_unexpected_packet_sockets",
                        "Packet (AF_PACKET) and raw IP sockets held now by a process the \
                         baseline does not expect to hold one of that kind and protocol (no \
                         [[packet_socket]] for it), per holder: what a packet socket sends passes \
                         below every traffic rule. Only while monitoring.",
                    ),
                    &["process", "exe", "kind", "protocol"],
                )?,
            )?,
            impostor_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_impostor_bytes_total",
                        "L3 bytes (both directions) of traffic a rule expects from a process of \
                         this name, sent or received by a process of the name with another \
                         executable or cgroup: an impostor. Also counted as unexpected traffic.",
                    ),
                    &["process", "exe", "cgroup"],
                )?,
            )?,
            payout_changed_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_payout_changed_bytes_total",
                        "L3 bytes (both directions) of traffic a rule expects, whose Stratum \
                         login used another account than the rule's (account: the one used): \
                         the miner pays someone else. Also counted as unexpected traffic.",
                    ),
                    &["process", "remote", "port", "account"],
                )?,
            )?,
            dns_new_names: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_dns_new_names",
                        "Names a process asked for (DNS queries) that its DNS rule does not list \
                         (the names it asked while learning), listed in /api/baseline. Only \
                         while monitoring.",
                    ),
                    &["process"],
                )?,
            )?,
            dns_tunnels: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_dns_tunnel_names_per_minute",
                        "Distinct names a process asked for under one domain within a minute, \
                         while above baseline.dns_tunnel_names_per_minute (data tunnelled \
                         through DNS queries); gone a minute after. Only while monitoring.",
                    ),
                    &["process", "domain"],
                )?,
            )?,
            name_moved: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_name_moved",
                        "1 while a name a rule of a process expects was seen at an address \
                         (remote) outside the networks it had while learning: a DNS or BGP \
                         hijack, or a pool that moved. Only while monitoring.",
                    ),
                    &["process", "name", "remote"],
                )?,
            )?,
            executable_changed: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_executable_changed",
                        "1 while a process whose traffic a rule expects runs an executable \
                         whose SHA-256 is not the rule's: an update, or a patched binary. Only \
                         while monitoring.",
                    ),
                    &["process", "exe"],
                )?,
            )?,
            unexpected_flows: register(
                registry,
                IntGauge::new(
                    "bitsecure_unexpected_flows",
                    "Traffic classes (process, remote, port, protocol, app) in the unexpected list.",
                )?,
            )?,
            unexpected_first_seen: gauge_vec(
                "bitsecure_unexpected_first_seen_timestamp_seconds",
                "When a class in the unexpected list was first seen (Unix time).",
                &unexpected_labels,
            )?,
            unexpected_last_seen: gauge_vec(
                "bitsecure_unexpected_last_seen_timestamp_seconds",
                "When a class in the unexpected list last had traffic (Unix time).",
                &unexpected_labels,
            )?,
            rule_rate: gauge_vec(
                "bitsecure_rule_rate_bytes_per_second",
                "Deprecated (removed in the next release): use rate(bitsecure_rule_bytes_total[...]). Current rate of a rule's traffic, averaged over one cadence (or 30 s).",
                &with_direction,
            )?,
            rule_reference: gauge_vec(
                "bitsecure_rule_reference_bytes_per_second",
                "Expected rate of a rule now, from the recorded cycle profile (or the recorded mean).",
                &with_direction,
            )?,
            rule_deviation: gauge_vec(
                "bitsecure_rule_deviation_ratio",
                "Current rate of a rule divided by its recorded p95 rate (1 = top of normal).",
                &with_direction,
            )?,
            rule_silence_seconds: gauge_vec(
                "bitsecure_rule_silence_seconds",
                "Deprecated (removed in the next release): use time() - bitsecure_rule_silent_since_timestamp_seconds. Seconds since a rule last saw traffic.",
                &RULE_LABELS,
            )?,
            rule_silence_ratio: gauge_vec(
                "bitsecure_rule_silence_ratio",
                "Silence divided by the rule's normal gap (its cadence, else twice its longest quiet spell while learning, at least 60 s): above 1 means quieter than normal. 0 for rare rules (fewer than 3 bursts while learning).",
                &RULE_LABELS,
            )?,
            rule_expected_cadence: gauge_vec(
                "bitsecure_rule_expected_cadence_seconds",
                "Recorded period of a periodic rule.",
                &RULE_LABELS,
            )?,
            rule_observed_cadence: gauge_vec(
                "bitsecure_rule_observed_cadence_seconds",
                "Median interval between the rule's recent bursts.",
                &RULE_LABELS,
            )?,
            rule_hits: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_rule_hits_total",
                        "Flow observations (a flow with traffic in a poll) the rule matched; \
                         starts afresh when the baseline is reloaded.",
                    ),
                    &RULE_LABELS,
                )?,
            )?,
            rule_bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bitsecure_rule_bytes_total",
                        "L3 bytes of the traffic a rule matched, per direction; starts afresh \
                         when the baseline is reloaded.",
                    ),
                    &with_direction,
                )?,
            )?,
            rule_silent_since: gauge_vec(
                "bitsecure_rule_silent_since_timestamp_seconds",
                "Since when a rule has had no traffic (Unix time): its last traffic, or when \
                 monitoring started.",
                &RULE_LABELS,
            )?,
            rule_last_seen: gauge_vec(
                "bitsecure_rule_last_seen_timestamp_seconds",
                "When the rule last matched traffic (Unix time); absent until it did since the \
                 agent started monitoring.",
                &RULE_LABELS,
            )?,
            rule_stale: gauge_vec(
                "bitsecure_rule_stale",
                "1 when the rule saw no traffic for baseline.stale_seconds (or not since \
                 monitoring started that long ago): perhaps no longer needed, review it.",
                &RULE_LABELS,
            )?,
            rule_upgradable: register(
                registry,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "bitsecure_rule_upgradable",
                        "1 for a rule by address whose traffic its process resolved from a \
                         name: it could be the name rule (bitsecure baseline accept --upgrade).",
                    ),
                    &["process", "remote", "port", "protocol", "name"],
                )?,
            )?,
        })
    }

    /// Which risks page (`risk.page`), as `bitsecure_risk_pages`.
    pub fn set_paging(&self, pages: impl Fn(Risk) -> bool) {
        for risk in Risk::ALL {
            self.risk_pages
                .with_label_values(&[risk.as_str()])
                .set(i64::from(pages(risk)));
        }
    }

    /// A report of the baseline service: counters of this step's unexpected traffic, then the
    /// gauges of where it stands.
    pub(super) fn publish(&self, report: &BaselineReport) {
        if let Some(loaded_at) = report.loaded_at {
            self.reset_rules();
            self.loaded_timestamp.set(loaded_at);
        }
        self.reload_failures.inc_by(report.reload_failures);
        // The sockets held at this step: holders gone since the last poll disappear.
        if report.unexpected_packet_sockets.is_some() {
            self.unexpected_packet_sockets.reset();
        }
        for class in report.unexpected_packet_sockets.iter().flatten() {
            self.unexpected_packet_sockets
                .with_label_values(&[
                    class.process.as_str(),
                    class.exe.as_str(),
                    class.kind.as_str(),
                    class.protocol.as_str(),
                ])
                .inc();
        }
        for (risk, reason) in &report.departures {
            self.departures
                .with_label_values(&[risk.as_str(), reason.as_str()])
                .inc();
        }
        for increment in &report.unexpected_traffic {
            let mut series = SeriesKey::of(&increment.key);
            if !increment.listed {
                // The list is full: keep the process and app, fold remote and port.
                series = series.folded();
            }
            let [process, remote, port, protocol, app] = series.labels();
            let labels = [
                process,
                remote,
                port,
                protocol,
                app,
                increment.risk.as_str(),
                increment.reason.as_str(),
            ];
            self.unexpected_sent_bytes
                .with_label_values(&labels)
                .inc_by(increment.traffic.sent_bytes);
            self.unexpected_received_bytes
                .with_label_values(&labels)
                .inc_by(increment.traffic.received_bytes);
            if let Some(account) = &increment.changed_account {
                self.payout_changed_bytes
                    .with_label_values(&[
                        increment.key.process.as_str(),
                        &crate::flow::remote_label(increment.key.remote),
                        &port_label(increment.key.port),
                        account,
                    ])
                    .inc_by(increment.traffic.total_bytes());
            }
            if let Some((exe, cgroup)) = &increment.impostor {
                self.impostor_bytes
                    .with_label_values(&[increment.key.process.as_str(), exe, cgroup])
                    .inc_by(increment.traffic.total_bytes());
            }
        }
        match &report.state {
            BaselineState::Off => {
                self.learning.set(0);
                self.rules.set(0);
                self.settling.set(0);
            }
            BaselineState::Learning { remaining_seconds } => {
                self.learning.set(1);
                self.learning_remaining.set(*remaining_seconds);
            }
            BaselineState::Monitoring {
                rules,
                unexpected,
                changed_executables,
                new_names,
                tunnels,
                moved_names,
                statuses,
                maturity,
                upgrades,
            } => {
                self.settling
                    .set(i64::from(maturity.stage == Stage::Settling));
                self.quiet_seconds
                    .set(maturity.quiet_seconds.unwrap_or(0.0));
                self.learnt_late_rules
                    .set(i64::try_from(maturity.learnt_late).unwrap_or(i64::MAX));
                self.name_moved.reset();
                for moved in moved_names {
                    self.name_moved
                        .with_label_values(&[
                            moved.process.as_str(),
                            moved.name.as_str(),
                            moved.remote.as_str(),
                        ])
                        .set(1);
                }
                self.dns_new_names.reset();
                for name in new_names {
                    self.dns_new_names
                        .with_label_values(&[name.process.as_str()])
                        .inc();
                }
                self.dns_tunnels.reset();
                for tunnel in tunnels {
                    self.dns_tunnels
                        .with_label_values(&[tunnel.process.as_str(), tunnel.domain.as_str()])
                        .set(i64::try_from(tunnel.names_per_minute).unwrap_or(i64::MAX));
                }
                self.executable_changed.reset();
                for changed in changed_executables {
                    self.executable_changed
                        .with_label_values(&[changed.process.as_str(), changed.exe.as_str()])
                        .set(1);
                }
                self.learning.set(0);
                self.learning_remaining.set(0.0);
                self.rules.set(*rules as i64);
                self.unexpected_flows.set(unexpected.len() as i64);
                // Rebuilt from the list, so accepted entries disappear from the gauges.
                self.unexpected_first_seen.reset();
                self.unexpected_last_seen.reset();
                // Two programs under one name may share a series: the earliest first and the
                // latest last sighting.
                let mut seen: BTreeMap<[String; 7], (f64, f64)> = BTreeMap::new();
                for entry in unexpected {
                    let labels = [
                        entry.process.clone(),
                        entry.remote.clone(),
                        port_label(entry.port),
                        entry.protocol.clone(),
                        entry.app.as_str().to_owned(),
                        entry.risk.as_str().to_owned(),
                        entry.reason.as_str().to_owned(),
                    ];
                    let (first, last) = seen
                        .entry(labels)
                        .or_insert((entry.first_seen_unix, entry.last_seen_unix));
                    *first = first.min(entry.first_seen_unix);
                    *last = last.max(entry.last_seen_unix);
                }
                for (labels, (first, last)) in &seen {
                    let labels = labels.each_ref().map(String::as_str);
                    self.unexpected_first_seen
                        .with_label_values(&labels)
                        .set(*first);
                    self.unexpected_last_seen
                        .with_label_values(&labels)
                        .set(*last);
                }
                let step = report.unexpected_packet_sockets.is_some();
                for status in statuses {
                    self.publish_rule(status, step);
                }
                self.rule_upgradable.reset();
                for upgrade in upgrades.iter() {
                    self.rule_upgradable
                        .with_label_values(&[
                            upgrade.process.as_str(),
                            upgrade.remote.as_str(),
                            &port_label(upgrade.port),
                            upgrade.protocol.as_str(),
                            upgrade.name.as_str(),
                        ])
                        .set(1);
                }
            }
        }
    }

    /// One rule's gauges; its hit counter too when the report is of a step (`step`), so a
    /// reload does not count the last step twice.
    fn publish_rule(&self, status: &RuleStatus, step: bool) {
        let rule = status.labels.labels();
        let with =
            |direction: &'static str| [rule[0], rule[1], rule[2], rule[3], rule[4], direction];
        if step {
            self.rule_hits
                .with_label_values(&rule)
                .inc_by(status.step_hits);
            for (direction, bytes) in [
                ("sent", status.step_sent_bytes),
                ("received", status.step_received_bytes),
            ] {
                self.rule_bytes
                    .with_label_values(&with(direction))
                    .inc_by(bytes);
            }
        }
        self.rule_silent_since
            .with_label_values(&rule)
            .set(status.silent_since_unix);
        if let Some(seen) = status.last_seen_unix {
            self.rule_last_seen.with_label_values(&rule).set(seen);
        }
        self.rule_stale
            .with_label_values(&rule)
            .set(f64::from(u8::from(status.stale)));
        for (direction, rate, reference, deviation) in [
            (
                "sent",
                status.sent_rate,
                status.reference_sent,
                status.sent_deviation,
            ),
            (
                "received",
                status.received_rate,
                status.reference_received,
                status.received_deviation,
            ),
        ] {
            self.rule_rate.with_label_values(&with(direction)).set(rate);
            if let Some(reference) = reference {
                self.rule_reference
                    .with_label_values(&with(direction))
                    .set(reference);
            }
            if let Some(deviation) = deviation {
                self.rule_deviation
                    .with_label_values(&with(direction))
                    .set(deviation);
            }
        }
        self.rule_silence_seconds
            .with_label_values(&rule)
            .set(status.silence_seconds);
        self.rule_silence_ratio
            .with_label_values(&rule)
            .set(status.silence_ratio);
        if let Some(cadence) = status.expected_cadence {
            self.rule_expected_cadence
                .with_label_values(&rule)
                .set(cadence);
        }
        if let Some(cadence) = status.observed_cadence {
            self.rule_observed_cadence
                .with_label_values(&rule)
                .set(cadence);
        }
    }

    /// Forgets every per-rule series (after a reload, rules may be gone).
    fn reset_rules(&self) {
        for gauge in [
            &self.rule_rate,
            &self.rule_reference,
            &self.rule_deviation,
            &self.rule_silence_seconds,
            &self.rule_silence_ratio,
            &self.rule_expected_cadence,
            &self.rule_observed_cadence,
            &self.rule_last_seen,
            &self.rule_stale,
            &self.rule_silent_since,
        ] {
            gauge.reset();
        }
        self.rule_hits.reset();
        self.rule_bytes.reset();
    }
}
