//! How much a departure from the baseline matters: each gets a [`Reason`] (why it is not
//! expected, from what the baseline knows) and, through the configurable [`Grades`], a [`Risk`].
//! High-risk departures page; the rest are listed for review (`risk.page`).
//!
//! The reasons of unexpected traffic, from the most to the least alarming by default:
//! a program the baseline does not know (`new-process`), one impersonating a known one
//! (`impostor`), a known flow paying another account (`payout-changed`), a known program
//! talking to a network no rule comes near (`new-network`), traffic no process owns
//! (`no-process`: RSTs and TIME_WAIT ACKs the kernel sends), a known program to a new host in a
//! network the baseline knows (`new-destination`), to a destination the baseline expects for
//! another program (`shared-destination`: the resolver, the NTP server) or to a host it already
//! talks to on another port (`new-port`). The other signals (a changed executable, a moved
//! name, a DNS tunnel, a new name asked, a packet socket) have reasons too, for the departure
//! count; their alerts are their own.
//!
//! Pure: rules and a flow in, a reason out.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::matching::{LiveFlow, NameNetworks, RemoteMatcher};
use super::model::Rule;

/// How much a departure matters. Ordered: `Low < Medium < High`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    #[default]
    Medium,
    High,
}

impl Risk {
    pub const ALL: [Risk; 3] = [Risk::High, Risk::Medium, Risk::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something departs from the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No rule names this program (its name, executable and cgroup).
    NewProcess,
    /// A rule's traffic, from another executable or cgroup than the rule's.
    Impostor,
    /// A rule's traffic, logged in with another account than the rule's.
    PayoutChanged,
    /// A known program to an address outside every network the baseline comes near.
    NewNetwork,
    /// Traffic no process owns (packets the kernel sends itself).
    NoProcess,
    /// A known program to a new host in a network the baseline knows.
    NewDestination,
    /// A known program to a destination the baseline expects for another program.
    SharedDestination,
    /// A known program to a host it already talks to, on another port, protocol or app.
    NewPort,
    /// A known program runs an executable whose content changed.
    ExecutableChanged,
    /// A name a rule expects, answered outside its networks.
    NameMoved,
    /// Many distinct names under one domain in a minute.
    DnsTunnel,
    /// A name its process's DNS rule does not list.
    NewName,
    /// A packet or raw socket no `[[packet_socket]]` expects (it sees and sends around the
    /// counting).
    PacketSocket,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::NewProcess,
        Reason::Impostor,
        Reason::PayoutChanged,
        Reason::NewNetwork,
        Reason::NoProcess,
        Reason::NewDestination,
        Reason::SharedDestination,
        Reason::NewPort,
        Reason::ExecutableChanged,
        Reason::NameMoved,
        Reason::DnsTunnel,
        Reason::NewName,
        Reason::PacketSocket,
    ];

    /// The label value (as in the config file).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NewProcess => "new-process",
            Reason::Impostor => "impostor",
            Reason::PayoutChanged => "payout-changed",
            Reason::NewNetwork => "new-network",
            Reason::NoProcess => "no-process",
            Reason::NewDestination => "new-destination",
            Reason::SharedDestination => "shared-destination",
            Reason::NewPort => "new-port",
            Reason::ExecutableChanged => "executable-changed",
            Reason::NameMoved => "name-moved",
            Reason::DnsTunnel => "dns-tunnel",
            Reason::NewName => "new-name",
            Reason::PacketSocket => "packet-socket",
        }
    }

    /// What it means, for people.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::NewProcess => "a program the baseline does not know",
            Reason::Impostor => "another program under the name of an expected one",
            Reason::PayoutChanged => "expected traffic logged in with another account",
            Reason::NewNetwork => "a known program to a network the baseline never comes near",
            Reason::NoProcess => "traffic no process owns (sent by the kernel)",
            Reason::NewDestination => "a known program to a new host in a known network",
            Reason::SharedDestination => {
                "a known program to a destination the baseline expects for another program"
            }
            Reason::NewPort => "a known program to a host it talks to, on another port",
            Reason::ExecutableChanged => "an expected program's executable changed",
            Reason::NameMoved => "a name the baseline expects moved to another network",
            Reason::DnsTunnel => "many random names under one domain (data through DNS)",
            Reason::NewName => "a name its program never asked for while learning",
            Reason::PacketSocket => "a packet or raw socket the baseline does not expect",
        }
    }

    /// The grade unless `risk.grades` says otherwise.
    pub fn default_risk(self) -> Risk {
        match self {
            Reason::NewProcess
            | Reason::Impostor
            | Reason::PayoutChanged
            | Reason::NewNetwork
            | Reason::ExecutableChanged
            | Reason::NameMoved
            | Reason::DnsTunnel
            | Reason::PacketSocket => Risk::High,
            Reason::NoProcess | Reason::NewDestination => Risk::Medium,
            Reason::SharedDestination | Reason::NewPort | Reason::NewName => Risk::Low,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The risk of each reason (`risk.grades`); reasons not listed keep their default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grades(BTreeMap<Reason, Risk>);

impl Grades {
    pub fn new(overrides: BTreeMap<Reason, Risk>) -> Self {
        Self(overrides)
    }

    pub fn of(&self, reason: Reason) -> Risk {
        self.0
            .get(&reason)
            .copied()
            .unwrap_or_else(|| reason.default_risk())
    }
}

/// What is known of an unexpected flow besides the rules: whether it impersonates a rule's
/// process, or is a rule's traffic with another account.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence {
    pub impostor: bool,
    pub payout_changed: bool,
}

/// The process name of traffic no process owns.
const NO_PROCESS: &str = "unknown";

/// Why `flow`, which no rule matches, departs from the baseline `rules` (`remotes`: their
/// parsed remotes, `None` for an invalid one).
pub fn reason_of(
    rules: &[Rule],
    remotes: &[Option<RemoteMatcher>],
    flow: &LiveFlow<'_>,
    evidence: Evidence,
    networks: NameNetworks,
) -> Reason {
    if evidence.payout_changed {
        return Reason::PayoutChanged;
    }
    if evidence.impostor {
        return Reason::Impostor;
    }
    if flow.process == NO_PROCESS {
        return Reason::NoProcess;
    }
    let parsed = || {
        rules
            .iter()
            .zip(remotes)
            .filter_map(|(rule, remote)| Some((rule, remote.as_ref()?)))
    };
    if !rules.iter().any(|rule| rule.same_holder(flow)) {
        return Reason::NewProcess;
    }
    if parsed()
        .any(|(rule, remote)| rule.same_holder(flow) && remote.matches(flow.remote, flow.name))
    {
        return Reason::NewPort;
    }
    if parsed().any(|(rule, remote)| rule.matches_traffic(remote, flow)) {
        return Reason::SharedDestination;
    }
    if parsed().any(|(rule, remote)| near(rule, remote, flow, networks)) {
        return Reason::NewDestination;
    }
    Reason::NewNetwork
}

/// Whether the flow's address lies in a network the rule knows: the network of its address
/// (as wide as a name's, see [`NameNetworks`]), its own network, or the networks its name had
/// while learning. Names a flow claims (SNI, Host) do not count: a program chooses those.
fn near(rule: &Rule, remote: &RemoteMatcher, flow: &LiveFlow<'_>, networks: NameNetworks) -> bool {
    match remote {
        RemoteMatcher::Address(address) => networks.of(*address) == networks.of(flow.remote),
        RemoteMatcher::Network { .. } => remote.matches(flow.remote, None),
        RemoteMatcher::Name(_) => rule.prefixes.is_some() && rule.prefixes_cover(flow.remote),
        RemoteMatcher::Any => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::App;

    fn flow<'a>(process: &'a str, remote: &str, port: u16, name: Option<&'a str>) -> LiveFlow<'a> {
        LiveFlow {
            process,
            exe: Some("/usr/bin/x"),
            cgroup: None,
            remote: remote.parse().unwrap(),
            name,
            port: Some(port),
            protocol: 17,
            app: App::Dns,
        }
    }

    fn assess(rules: &[Rule], flow: &LiveFlow<'_>, evidence: Evidence) -> Reason {
        let remotes: Vec<Option<RemoteMatcher>> = rules
            .iter()
            .map(|rule| rule.remote_matcher().ok())
            .collect();
        reason_of(rules, &remotes, flow, evidence, NameNetworks::default())
    }

    fn rig() -> Vec<Rule> {
        let mut pool = Rule::new("xmrig", "pool.example.org", Some(3333), "tcp");
        pool.prefixes = Some(vec!["203.0.113.0/24".into()]);
        vec![
            Rule::new("resolved", "10.0.0.53", Some(53), "udp"),
            pool,
            Rule::new("chronyd", "192.0.2.0/28", Some(123), "udp"),
        ]
    }

    #[test]
    fn each_reason_and_its_default_grade() {
        let rules = rig();
        let none = Evidence::default();
        // A program no rule names: high.
        let reason = assess(&rules, &flow("backdoor", "198.51.100.7", 4444, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::NewProcess, Risk::High)
        );
        // The miner asking the resolver another program is expected to ask: low.
        let reason = assess(&rules, &flow("xmrig", "10.0.0.53", 53, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::SharedDestination, Risk::Low)
        );
        // The resolver on another port of its server: low.
        let reason = assess(&rules, &flow("resolved", "10.0.0.53", 853, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::NewPort, Risk::Low)
        );
        // The miner to another host of its pool's network: medium.
        let reason = assess(&rules, &flow("xmrig", "203.0.113.99", 4444, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::NewDestination, Risk::Medium)
        );
        // Next to an address rule (same /24), inside a network rule: medium.
        for near in ["10.0.0.99", "192.0.2.9"] {
            let reason = assess(&rules, &flow("xmrig", near, 8080, None), none);
            assert_eq!(reason, Reason::NewDestination, "{near}");
        }
        // The miner to a network nothing comes near: high.
        let reason = assess(&rules, &flow("xmrig", "198.51.100.7", 3333, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::NewNetwork, Risk::High)
        );
        // Kernel-sent packets: medium.
        let reason = assess(&rules, &flow("unknown", "198.51.100.7", 3333, None), none);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::NoProcess, Risk::Medium)
        );
        // What the monitor found out first wins.
        let payout = Evidence {
            payout_changed: true,
            impostor: false,
        };
        let reason = assess(&rules, &flow("xmrig", "203.0.113.7", 3333, None), payout);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::PayoutChanged, Risk::High)
        );
        let impostor = Evidence {
            impostor: true,
            payout_changed: false,
        };
        let reason = assess(&rules, &flow("xmrig", "203.0.113.7", 3333, None), impostor);
        assert_eq!(
            (reason, reason.default_risk()),
            (Reason::Impostor, Risk::High)
        );
    }

    #[test]
    fn an_attacker_cannot_talk_its_way_down() {
        let mut rules = rig();
        rules[1].exe = Some("/usr/bin/xmrig".into());
        // A program renamed after the miner, from another executable, is not "known".
        let renamed = flow("xmrig", "10.0.0.53", 53, None);
        assert_eq!(
            assess(&rules, &renamed, Evidence::default()),
            Reason::NewProcess
        );
        // A claimed name (SNI) near the pool's does not make a far address near: only the
        // address counts.
        let mut miner = flow("xmrig", "198.51.100.7", 443, Some("eu.pool.example.org"));
        miner.exe = Some("/usr/bin/xmrig");
        assert_eq!(
            assess(&rules, &miner, Evidence::default()),
            Reason::NewNetwork
        );
        // The resolver's address on another protocol is not the resolver's traffic.
        let mut tunnel = flow("xmrig", "10.0.0.53", 53, None);
        tunnel.exe = Some("/usr/bin/xmrig");
        tunnel.protocol = 6;
        assert_eq!(
            assess(&rules, &tunnel, Evidence::default()),
            Reason::NewDestination
        );
    }

    #[test]
    fn grades_can_be_changed_per_reason() {
        let grades = Grades::new(BTreeMap::from([
            (Reason::NewDestination, Risk::High),
            (Reason::NewProcess, Risk::Low),
        ]));
        assert_eq!(grades.of(Reason::NewDestination), Risk::High);
        assert_eq!(grades.of(Reason::NewProcess), Risk::Low);
        assert_eq!(grades.of(Reason::Impostor), Risk::High, "the default");
        assert!(Risk::Low < Risk::Medium && Risk::Medium < Risk::High);
        for reason in Reason::ALL {
            let text = format!("\"{reason}\"");
            assert_eq!(serde_json::from_str::<Reason>(&text).unwrap(), reason);
        }
    }
}
