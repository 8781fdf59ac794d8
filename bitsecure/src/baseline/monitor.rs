//! Comparing live traffic with a baseline, one poll (step) at a time.
//!
//! Every observation is matched against the rules (first match wins), with the name its remote
//! is known by and its application. Unmatched traffic is *unexpected* and kept in a bounded list
//! (keyed by address and application) with who made it, when, and the latest name of the
//! remote. Each rule keeps a short window of its recent traffic to tell its current rate
//! (→ deviation), when it last saw traffic (→ silence), when its bursts started (→ observed
//! cadence), and where in its recorded cycle "now" falls (→ the reference rate to draw beside
//! live traffic).
//!
//! A rule expects a program, not just a name: traffic that a rule would take but for its
//! executable or cgroup is listed as the work of an *impostor* of the rule's process, and a
//! matching process whose executable no longer has the rule's SHA-256 is a *changed
//! executable* (its traffic stays the rule's: an update is one accept away).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::{
    ClassKey,
    dns_watch::{DnsWatch, NewName, Tunnel},
    matching::{LiveFlow, NameNetworks, RemoteMatcher},
    model::{Baseline, Normal, Rule, RuleIdentity},
    risk::{self, Evidence, Grades, Reason, Risk},
    stats,
};
use crate::{
    flow::{
        AskedName, FlowDelta, PacketSocketClass, SeriesKey, Traffic, port_label, protocol_label,
        remote_label,
    },
    naming::{App, Source},
};

/// Distinct names under one domain in a minute above which a process is taken to tunnel data
/// through DNS (`baseline.dns_tunnel_names_per_minute`).
pub const DEFAULT_TUNNEL_NAMES_PER_MINUTE: u64 = 100;

/// A rule not seen for this long is stale (`baseline.stale_seconds`): 7 days.
pub const DEFAULT_STALE_SECONDS: f64 = 7.0 * 86_400.0;

/// Burst onsets remembered per rule for the observed cadence.
const MAX_ONSETS: usize = 16;

/// One entry of the unexpected list (served as JSON by the agent).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Unexpected {
    pub process: String,
    pub exe: Option<String>,
    /// SHA-256 of the executable, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// cgroup v2 path the sockets were created in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The process the baseline expects under this name, when this is another program (or
    /// runs elsewhere) that took its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impostor_of: Option<Holder>,
    /// The account (wallet, worker) the traffic's Stratum login used, when seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The account the baseline expects on this traffic, when the login used another one: the
    /// payout identity changed (the entry is otherwise expected traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_account: Option<String>,
    pub remote: String,
    pub port: Option<u16>,
    pub protocol: String,
    /// The latest name the remote was known by, when any (lowercase, no trailing dot).
    #[serde(default)]
    pub name: Option<String>,
    /// Where that name was learnt: `dns`, `sni` or `http`.
    #[serde(default)]
    pub name_source: Option<Source>,
    /// Application protocol of the traffic.
    #[serde(default = "unknown_app")]
    pub app: App,
    /// How much it matters, and why it is not expected (see [`risk`](super::risk)).
    #[serde(default)]
    pub risk: Risk,
    #[serde(default = "unknown_reason")]
    pub reason: Reason,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
    /// The same two instants as Unix time (exported as gauges, used for sorting).
    #[serde(skip)]
    pub first_seen_unix: f64,
    #[serde(skip)]
    pub last_seen_unix: f64,
}

impl Unexpected {
    /// The labels of this entry's traffic series (without its risk and reason).
    pub fn series(&self) -> SeriesKey {
        SeriesKey {
            process: self.process.clone(),
            remote: self.remote.clone(),
            port: port_label(self.port),
            protocol: self.protocol.clone(),
            app: self.app.as_str().to_owned(),
        }
    }

    /// The rule that makes this entry expected: for the remote's name when known (unless
    /// `by_address`), with the entry's program, app and account.
    pub fn rule(&self, by_address: bool, note: Option<&str>) -> Rule {
        Rule {
            process: self.process.clone(),
            exe: self.exe.clone(),
            sha256: self.sha256.clone(),
            cgroup: self.cgroup.clone(),
            remote: match &self.name {
                Some(name) if !by_address => name.clone(),
                _ => self.remote.clone(),
            },
            port: self.port,
            protocol: self.protocol.clone(),
            app: Some(self.app.as_str().to_owned()),
            account: self.account.clone(),
            note: note.map(str::to_owned),
            ..Rule::new(String::new(), String::new(), None, String::new())
        }
    }
}

/// A process as a rule expects it: a name, and where the rule says, an executable and a
/// cgroup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Holder {
    pub process: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Holder {
    fn of(rule: &Rule) -> Self {
        Self {
            process: rule.process.clone(),
            exe: rule.exe.clone(),
            cgroup: rule.cgroup.clone(),
        }
    }
}

/// A process whose traffic a rule expects, started from an executable whose content is no
/// longer what the rule recorded (served as JSON; exported as `bitsecure_executable_changed`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChangedExecutable {
    pub process: String,
    /// The executable's path (empty when unknown).
    pub exe: String,
    /// The SHA-256 the baseline expects.
    pub expected_sha256: String,
    /// The SHA-256 of what runs now; `None` when it could not be read.
    pub sha256: Option<String>,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
}

/// A name a rule expects, seen at an address outside the networks it had while learning
/// (served as JSON; exported as `bitsecure_name_moved`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MovedName {
    pub name: String,
    /// The address it now has.
    pub remote: String,
    /// Its network as `prefixes` would write it (what accepting the move adds).
    pub prefix: String,
    /// The networks the rule knows.
    pub known: Vec<String>,
    pub process: String,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
}

/// The application of an entry from an agent that did not report one.
fn unknown_app() -> App {
    App::Unknown
}

/// The reason of an entry from an agent that did not report one: the least it can be.
fn unknown_reason() -> Reason {
    Reason::NewPort
}

/// An entry of the unexpected list: its class, and the executable and cgroup of its process.
type UnexpectedKey = (ClassKey, Option<String>, Option<String>);

/// Live state of one rule.
#[derive(Debug, Clone)]
struct RuleState {
    window_steps: usize,
    sent: VecDeque<u64>,
    received: VecDeque<u64>,
    /// When it last had traffic, or monitoring started (the silence clock).
    last_traffic_unix: f64,
    /// When it last had traffic; `None` before the first since monitoring started.
    last_seen_unix: Option<f64>,
    /// Flow observations (a flow with traffic in a poll) it matched since monitoring started.
    hits: u64,
    /// Of those, the ones of the latest step (for the counters).
    step_hits: u64,
    was_active: bool,
    onsets: VecDeque<f64>,
}

/// What the monitor says about one rule now. Rates are bytes per second.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleStatus {
    /// The rule as written (its remote may be a name or a network; `app` is empty for any).
    pub labels: SeriesKey,
    pub sent_rate: f64,
    pub received_rate: f64,
    /// Current rate over the rule's window ÷ its normal p95 (None without recorded stats).
    pub sent_deviation: Option<f64>,
    pub received_deviation: Option<f64>,
    pub silence_seconds: f64,
    /// Silence ÷ the normal gap between bursts (> 1: quieter than normal).
    pub silence_ratio: f64,
    pub expected_cadence: Option<f64>,
    pub observed_cadence: Option<f64>,
    /// Expected rate at this moment of the recorded cycle (or the mean rate).
    pub reference_sent: Option<f64>,
    pub reference_received: Option<f64>,
    /// Flow observations it matched since monitoring started, and in the latest step.
    pub hits: u64,
    pub step_hits: u64,
    /// Bytes it matched in the latest step, each way (for the byte counters).
    pub step_sent_bytes: u64,
    pub step_received_bytes: u64,
    /// Since when it has been silent (Unix time): its last traffic, or when monitoring started.
    pub silent_since_unix: f64,
    /// When it last had traffic (Unix time); `None` not since monitoring started.
    pub last_seen_unix: Option<f64>,
    /// Not seen for `baseline.stale_seconds` (or since monitoring started that long ago): a
    /// rule to review, perhaps no longer needed.
    pub stale: bool,
}

/// A rule by address whose traffic the same process resolved from a name: the name rule it
/// could be (`baseline accept --upgrade`), keeping the address's network as evidence for the
/// moved-name check.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Upgrade {
    pub process: String,
    /// The rule's remote as written (an address).
    pub remote: String,
    pub port: Option<u16>,
    pub protocol: String,
    /// The name the address was resolved from (DNS).
    pub name: String,
    /// The address's network, the name rule's `prefixes`.
    pub prefix: String,
    /// RFC 3339, UTC.
    pub first_seen: String,
}

/// Unexpected traffic of one poll, for the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct UnexpectedIncrement {
    pub key: ClassKey,
    /// False when the list was full: the traffic is counted, folded under remote="other".
    pub listed: bool,
    pub traffic: Traffic,
    /// The traffic is an impostor's (see [`Holder`]): its executable and cgroup (empty when
    /// unknown).
    pub impostor: Option<(String, String)>,
    /// The traffic is a rule's, but its login used this other account.
    pub changed_account: Option<String>,
    pub risk: Risk,
    pub reason: Reason,
}

pub struct Monitor {
    baseline: Baseline,
    /// The parsed remote of each rule (`None`: invalid, matches nothing), parsed once per load.
    remotes: Vec<Option<RemoteMatcher>>,
    step_seconds: f64,
    rules: Vec<RuleState>,
    recording_start_unix: Option<f64>,
    /// By class and program: two programs under one name are two entries (each accepted, or
    /// not, on its own).
    unexpected: HashMap<UnexpectedKey, Unexpected>,
    max_unexpected: usize,
    /// By process and executable path.
    changed_executables: BTreeMap<(String, String), ChangedExecutable>,
    /// The names processes ask for: new ones, and bursts of them (tunnels).
    dns: DnsWatch,
    /// By (name, address, process).
    moved_names: BTreeMap<(String, String, String), MovedName>,
    /// How wide the network is that accepting a moved name adds (and that a new
    /// destination counts as near a known one in).
    name_networks: NameNetworks,
    /// The risk of each reason.
    grades: Grades,
    /// Departures first seen since the last [`Monitor::take_departures`].
    departures: Vec<(Risk, Reason)>,
    /// Rules by address that could be by name, by (process, remote, port, protocol).
    upgrades: BTreeMap<(String, String, Option<u16>, String), Upgrade>,
    /// A rule not seen this long is stale.
    stale_seconds: f64,
}

impl Monitor {
    pub fn new(
        baseline: Baseline,
        step_seconds: f64,
        max_unexpected: usize,
        now_unix: f64,
    ) -> Self {
        let mut monitor = Self {
            baseline: Baseline {
                format_version: baseline.format_version,
                recording: None,
                rules: Vec::new(),
                packet_sockets: Vec::new(),
            },
            remotes: Vec::new(),
            step_seconds,
            rules: Vec::new(),
            recording_start_unix: None,
            unexpected: HashMap::new(),
            max_unexpected,
            changed_executables: BTreeMap::new(),
            dns: DnsWatch::new(DEFAULT_TUNNEL_NAMES_PER_MINUTE, max_unexpected),
            moved_names: BTreeMap::new(),
            name_networks: NameNetworks::default(),
            grades: Grades::default(),
            departures: Vec::new(),
            upgrades: BTreeMap::new(),
            stale_seconds: DEFAULT_STALE_SECONDS,
        };
        monitor.replace_baseline(baseline, now_unix);
        monitor
    }

    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// Moved names are offered with their address's network this wide.
    pub fn with_name_networks(mut self, name_networks: NameNetworks) -> Self {
        self.name_networks = name_networks;
        self
    }

    /// A rule not seen this long is stale (`baseline.stale_seconds`).
    pub fn with_stale_after(mut self, seconds: f64) -> Self {
        self.stale_seconds = seconds;
        self
    }

    /// The risk of each reason (`risk.grades`).
    pub fn with_grades(mut self, grades: Grades) -> Self {
        self.grades = grades;
        self
    }

    /// The departures first seen since the last call, with their risk: the noise a user
    /// would get (`bitsecure_alertable_departures_total`).
    pub fn take_departures(&mut self) -> Vec<(Risk, Reason)> {
        std::mem::take(&mut self.departures)
    }

    fn depart(&mut self, reason: Reason) {
        self.departures.push((self.grades.of(reason), reason));
    }

    /// Distinct names under one domain per minute above which a process is tunnelling.
    pub fn with_tunnel_threshold(mut self, names_per_minute: u64) -> Self {
        self.dns = DnsWatch::new(names_per_minute, self.max_unexpected);
        self
    }

    /// The DNS questions of one poll: names their DNS rule does not list, and bursts.
    pub fn observe_asked(&mut self, asked: &[AskedName], now_unix: f64) {
        let now_text = timestamp_text(now_unix);
        let (names_before, tunnels_before) = self.dns.counts();
        for question in asked {
            let flow = LiveFlow {
                process: &question.process,
                exe: question.exe.as_deref(),
                cgroup: question.cgroup.as_deref(),
                remote: question.server,
                name: question.server_name.as_deref(),
                port: Some(question.port),
                protocol: question.protocol,
                app: App::Dns,
            };
            let expected = find_rule(&self.baseline.rules, &self.remotes, &flow)
                .and_then(|index| self.baseline.rules[index].asks.as_deref());
            self.dns.observe(
                &question.process,
                question.exe.as_deref(),
                &remote_label(question.server),
                &question.name,
                expected,
                now_unix,
                &now_text,
            );
        }
        // Observing only adds to the lists; expiry (below) drops tunnels that ended.
        let (names, tunnels) = self.dns.counts();
        for _ in names_before..names {
            self.depart(Reason::NewName);
        }
        for _ in tunnels_before..tunnels {
            self.depart(Reason::DnsTunnel);
        }
        self.dns.expire(now_unix);
    }

    /// Names asked that their process's DNS rule does not list.
    pub fn new_names(&self) -> Vec<NewName> {
        self.dns.new_names()
    }

    /// Processes asking for many distinct names under one domain now.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.dns.tunnels()
    }

    /// Switches to a new baseline (a reload). Rules that stay keep their live state; unexpected
    /// entries that the new baseline covers leave the list.
    pub fn replace_baseline(&mut self, baseline: Baseline, now_unix: f64) {
        let mut old: HashMap<RuleIdentity, RuleState> = self
            .baseline
            .rules
            .iter()
            .zip(self.rules.drain(..))
            .map(|(rule, state)| (rule.identity(), state))
            .collect();
        self.rules = baseline
            .rules
            .iter()
            .map(|rule| {
                old.remove(&rule.identity()).unwrap_or_else(|| RuleState {
                    window_steps: window_steps(rule, self.step_seconds),
                    sent: VecDeque::new(),
                    received: VecDeque::new(),
                    // A rule starts its silence clock when monitoring starts.
                    last_traffic_unix: now_unix,
                    last_seen_unix: None,
                    hits: 0,
                    step_hits: 0,
                    was_active: false,
                    onsets: VecDeque::new(),
                })
            })
            .collect();
        self.recording_start_unix = baseline
            .recording
            .as_ref()
            .and_then(|recording| recording.started_at.parse::<jiff::Timestamp>().ok())
            .map(|start| start.as_millisecond() as f64 / 1000.0);
        self.remotes = baseline
            .rules
            .iter()
            .map(|rule| rule.remote_matcher().ok())
            .collect();
        self.baseline = baseline;
        let (rules, remotes) = (&self.baseline.rules, &self.remotes);
        self.unexpected.retain(|(key, _, _), entry| {
            let flow = key.flow(
                entry.name.as_deref(),
                entry.exe.as_deref(),
                entry.cgroup.as_deref(),
            );
            match find_rule(rules, remotes, &flow) {
                None => true,
                // Still another payee than the rule's.
                Some(index) => matches!(
                    (&rules[index].account, &entry.account),
                    (Some(expected), Some(seen)) if expected != seen
                ),
            }
        });
        // An upgrade stays offered while its rule is still by address.
        self.upgrades
            .retain(|(process, remote, port, protocol), _| {
                rules.iter().any(|rule| {
                    rule.process == *process
                        && rule.remote == *remote
                        && rule.port == *port
                        && rule.protocol == *protocol
                })
            });
        // A moved name stays listed while a rule for the name has networks that miss it.
        self.moved_names.retain(|(name, remote, _), _| {
            let Ok(address) = remote.parse::<std::net::IpAddr>() else {
                return false;
            };
            rules.iter().any(|rule| {
                rule.remote_matcher()
                    .is_ok_and(|matcher| matcher.matches(address, Some(name)))
                    && !rule.prefixes_cover(address)
            })
        });
        // A new name stays listed unless a DNS rule of its process now lists it.
        self.dns.retain_new(|entry| {
            !rules.iter().any(|rule| {
                rule.process == entry.process
                    && rule
                        .exe
                        .as_ref()
                        .is_none_or(|exe| Some(exe) == entry.exe.as_ref())
                    && rule.asks.as_ref().is_some_and(|asks| {
                        asks.iter()
                            .any(|pattern| crate::naming::name_matches(pattern, &entry.name))
                    })
            })
        });
        // A changed executable stays listed while a rule for it still expects another hash.
        self.changed_executables.retain(|(process, exe), changed| {
            rules.iter().any(|rule| {
                rule.process == *process
                    && rule.exe.as_ref().is_none_or(|rule_exe| rule_exe == exe)
                    && rule
                        .sha256
                        .as_ref()
                        .is_some_and(|expected| Some(expected) != changed.sha256.as_ref())
            })
        });
    }

    /// Adds one poll's traffic. Returns the unexpected part, for the counters.
    pub fn observe_step(
        &mut self,
        deltas: &[FlowDelta],
        now_unix: f64,
    ) -> Vec<UnexpectedIncrement> {
        let mut step_sent = vec![0u64; self.rules.len()];
        let mut step_hits = vec![0u64; self.rules.len()];
        let mut step_received = vec![0u64; self.rules.len()];
        // Rules whose traffic came, though listed elsewhere (a changed payout).
        let mut step_alive = vec![false; self.rules.len()];
        let mut increments = Vec::new();
        for delta in deltas {
            let key = ClassKey::of(delta);
            let name = delta.name.as_ref();
            let flow = key.flow(
                name.map(|name| name.name.as_str()),
                delta.exe.as_deref(),
                delta.cgroup.as_deref(),
            );
            let matched = find_rule(&self.baseline.rules, &self.remotes, &flow);
            let mut expected_account = None;
            if let Some(index) = matched {
                self.check_executable(index, delta, now_unix);
                self.check_moved(index, delta, now_unix);
                self.check_upgrade(index, delta, now_unix);
                step_hits[index] += 1;
                let rule = &self.baseline.rules[index];
                match (&rule.account, &delta.account) {
                    (Some(expected), Some(seen)) if expected != seen => {
                        // Another payee on the rule's own traffic: listed, not the rule's. The
                        // miner still talks to its pool, so the rule does not fall silent.
                        step_alive[index] = true;
                        expected_account = Some(expected.clone());
                    }
                    _ => {
                        step_sent[index] += delta.traffic.sent_bytes;
                        step_received[index] += delta.traffic.received_bytes;
                        continue;
                    }
                }
            }
            let changed_account = expected_account.as_ref().and(delta.account.clone());
            let impostor_of = if matched.is_some() {
                None
            } else {
                find_impersonated(&self.baseline.rules, &self.remotes, &flow)
                    .map(|index| Holder::of(&self.baseline.rules[index]))
            };
            let impostor = impostor_of.as_ref().map(|_| {
                (
                    delta.exe.clone().unwrap_or_default(),
                    delta.cgroup.clone().unwrap_or_default(),
                )
            });
            let listed_key = (key.clone(), delta.exe.clone(), delta.cgroup.clone());
            let listed = self.unexpected.get(&listed_key);
            // An entry keeps the grade it was first given: its series keep their labels.
            let reason = listed.map_or_else(
                || {
                    let evidence = Evidence {
                        impostor: impostor.is_some(),
                        payout_changed: changed_account.is_some(),
                    };
                    risk::reason_of(
                        &self.baseline.rules,
                        &self.remotes,
                        &flow,
                        evidence,
                        self.name_networks,
                    )
                },
                |entry| entry.reason,
            );
            let risk = listed.map_or_else(|| self.grades.of(reason), |entry| entry.risk);
            if listed.is_none() && self.unexpected.len() >= self.max_unexpected {
                increments.push(UnexpectedIncrement {
                    key,
                    listed: false,
                    traffic: delta.traffic,
                    impostor,
                    changed_account,
                    risk,
                    reason,
                });
                continue;
            }
            if listed.is_none() {
                self.departures.push((risk, reason));
            }
            let now_text = timestamp_text(now_unix);
            let entry = self
                .unexpected
                .entry(listed_key)
                .or_insert_with(|| Unexpected {
                    process: key.process.clone(),
                    exe: delta.exe.clone(),
                    sha256: delta.exe_sha256.clone(),
                    cgroup: delta.cgroup.clone(),
                    impostor_of: None,
                    account: None,
                    expected_account: None,
                    remote: remote_label(key.remote),
                    port: key.port,
                    protocol: protocol_label(key.protocol),
                    name: None,
                    name_source: None,
                    app: key.app,
                    risk,
                    reason,
                    sent_bytes: 0,
                    received_bytes: 0,
                    first_seen: now_text.clone(),
                    last_seen: now_text.clone(),
                    first_seen_unix: now_unix,
                    last_seen_unix: now_unix,
                });
            if entry.impostor_of.is_none() {
                entry.impostor_of = impostor_of;
            }
            if delta.account.is_some() {
                entry.account.clone_from(&delta.account);
            }
            if expected_account.is_some() {
                entry.expected_account = expected_account;
            }
            // The latest name wins: names change with DNS answers; an unknown name keeps the last.
            if let Some(name) = name {
                entry.name = Some(name.name.clone());
                entry.name_source = Some(name.source);
            }
            entry.sent_bytes += delta.traffic.sent_bytes;
            entry.received_bytes += delta.traffic.received_bytes;
            entry.last_seen = now_text;
            entry.last_seen_unix = now_unix;
            increments.push(UnexpectedIncrement {
                key,
                listed: true,
                traffic: delta.traffic,
                impostor,
                changed_account,
                risk,
                reason,
            });
        }
        for (index, state) in self.rules.iter_mut().enumerate() {
            let (sent, received) = (step_sent[index], step_received[index]);
            state.sent.push_back(sent);
            state.received.push_back(received);
            while state.sent.len() > state.window_steps {
                state.sent.pop_front();
                state.received.pop_front();
            }
            let active = sent + received > 0 || step_alive[index];
            state.step_hits = step_hits[index];
            state.hits += step_hits[index];
            if active {
                state.last_traffic_unix = now_unix;
                state.last_seen_unix = Some(now_unix);
                if !state.was_active {
                    state.onsets.push_back(now_unix);
                    if state.onsets.len() > MAX_ONSETS {
                        state.onsets.pop_front();
                    }
                }
            }
            state.was_active = active;
        }
        increments
    }

    /// Notes a process matching rule `index` whose executable is not the one the rule
    /// recorded (by content).
    fn check_executable(&mut self, index: usize, delta: &FlowDelta, now_unix: f64) {
        let Some(expected) = self.baseline.rules[index].sha256.clone() else {
            return;
        };
        // A process gone before its executable could be read or hashed: nothing to compare
        // (a short job exiting at once is not a changed binary). Every readable executable
        // has a hash, however large (see poller::executables).
        let (Some(exe), Some(_)) = (delta.exe.clone(), &delta.exe_sha256) else {
            return;
        };
        if delta.exe_sha256.as_ref() == Some(&expected) {
            // The expected content is back (reinstalled): nothing to report any more.
            self.changed_executables
                .remove(&(delta.process.clone(), exe));
            return;
        }
        let now_text = timestamp_text(now_unix);
        let key = (delta.process.clone(), exe.clone());
        if !self.changed_executables.contains_key(&key) {
            self.depart(Reason::ExecutableChanged);
        }
        let entry = self
            .changed_executables
            .entry(key)
            .or_insert_with(|| ChangedExecutable {
                process: delta.process.clone(),
                exe,
                expected_sha256: expected,
                sha256: delta.exe_sha256.clone(),
                first_seen: now_text.clone(),
                last_seen: now_text.clone(),
            });
        entry.sha256.clone_from(&delta.exe_sha256);
        entry.last_seen = now_text;
    }

    /// Notes a name rule's traffic at an address outside the networks the rule recorded.
    fn check_moved(&mut self, index: usize, delta: &FlowDelta, now_unix: f64) {
        let rule = &self.baseline.rules[index];
        let (Some(known), Some(name)) = (&rule.prefixes, &delta.name) else {
            return;
        };
        if rule.prefixes_cover(delta.remote) || self.moved_names.len() >= self.max_unexpected {
            return;
        }
        let known = known.clone();
        let now_text = timestamp_text(now_unix);
        let remote = remote_label(delta.remote);
        let key = (name.name.clone(), remote.clone(), delta.process.clone());
        if !self.moved_names.contains_key(&key) {
            self.depart(Reason::NameMoved);
        }
        let entry = self.moved_names.entry(key).or_insert_with(|| MovedName {
            name: name.name.clone(),
            prefix: self.name_networks.of(delta.remote),
            remote,
            known,
            process: delta.process.clone(),
            first_seen: now_text.clone(),
            last_seen: now_text.clone(),
        });
        entry.last_seen = now_text;
    }

    /// Notes a rule by address whose traffic its process resolved from a name (DNS).
    fn check_upgrade(&mut self, index: usize, delta: &FlowDelta, now_unix: f64) {
        let (Some(Some(RemoteMatcher::Address(_))), Some(name)) =
            (self.remotes.get(index), &delta.name)
        else {
            return;
        };
        if name.source != Source::Dns || self.upgrades.len() >= self.max_unexpected {
            return;
        }
        let rule = &self.baseline.rules[index];
        let key = (
            rule.process.clone(),
            rule.remote.clone(),
            rule.port,
            rule.protocol.clone(),
        );
        if self.upgrades.contains_key(&key) {
            return;
        }
        let upgrade = Upgrade {
            process: rule.process.clone(),
            remote: rule.remote.clone(),
            port: rule.port,
            protocol: rule.protocol.clone(),
            name: name.name.clone(),
            prefix: self.name_networks.of(delta.remote),
            first_seen: timestamp_text(now_unix),
        };
        self.upgrades.insert(key, upgrade);
    }

    /// Rules by address that could be by name.
    pub fn upgrades(&self) -> Vec<Upgrade> {
        self.upgrades.values().cloned().collect()
    }

    /// Names rules expect, seen at addresses outside the networks they recorded.
    pub fn moved_names(&self) -> Vec<MovedName> {
        self.moved_names.values().cloned().collect()
    }

    /// The processes running an executable other than the one their rule recorded.
    pub fn changed_executables(&self) -> Vec<ChangedExecutable> {
        self.changed_executables.values().cloned().collect()
    }

    /// The state of every rule at `now_unix`.
    pub fn statuses(&self, now_unix: f64) -> Vec<RuleStatus> {
        self.baseline
            .rules
            .iter()
            .zip(&self.rules)
            .map(|(rule, state)| {
                let window = state.sent.len().max(1) as f64 * self.step_seconds;
                let sent_rate = state.sent.iter().sum::<u64>() as f64 / window;
                let received_rate = state.received.iter().sum::<u64>() as f64 / window;
                let normal = rule.normal.as_ref();
                let cadence = normal.and_then(|normal| normal.cadence_seconds);
                let silence_seconds = (now_unix - state.last_traffic_unix).max(0.0);
                let onsets: Vec<f64> = state.onsets.iter().copied().collect();
                let (reference_sent, reference_received) = self.reference(rule, now_unix);
                RuleStatus {
                    labels: SeriesKey {
                        process: rule.process.clone(),
                        remote: rule.remote.clone(),
                        port: port_label(rule.port),
                        protocol: rule.protocol.clone(),
                        app: rule.app.clone().unwrap_or_default(),
                    },
                    sent_rate,
                    received_rate,
                    sent_deviation: normal.map(|normal| {
                        stats::deviation_ratio(sent_rate, &normal.sent_bytes_per_second)
                    }),
                    received_deviation: normal.map(|normal| {
                        stats::deviation_ratio(received_rate, &normal.received_bytes_per_second)
                    }),
                    silence_seconds,
                    silence_ratio: stats::silence_ratio(
                        silence_seconds,
                        &normal.map_or_else(stats::Rhythm::default, Normal::rhythm),
                        self.step_seconds,
                    ),
                    expected_cadence: cadence,
                    observed_cadence: stats::observed_cadence(&onsets),
                    reference_sent,
                    reference_received,
                    hits: state.hits,
                    step_hits: state.step_hits,
                    step_sent_bytes: state.sent.back().copied().unwrap_or(0),
                    step_received_bytes: state.received.back().copied().unwrap_or(0),
                    silent_since_unix: state.last_traffic_unix,
                    last_seen_unix: state.last_seen_unix,
                    stale: silence_seconds >= self.stale_seconds,
                }
            })
            .collect()
    }

    /// Expected rates now: the recorded profile at this phase of the cycle (phase 0 = the
    /// recording's start), else the recorded mean.
    fn reference(&self, rule: &Rule, now_unix: f64) -> (Option<f64>, Option<f64>) {
        if let (Some(profile), Some(start)) = (&rule.profile, self.recording_start_unix) {
            let bins = profile.sent.len().min(profile.received.len());
            if bins > 0 && profile.step_seconds > 0.0 {
                let cycle = bins as f64 * profile.step_seconds;
                let phase = (now_unix - start).rem_euclid(cycle);
                let bin = ((phase / profile.step_seconds) as usize).min(bins - 1);
                return (Some(profile.sent[bin]), Some(profile.received[bin]));
            }
        }
        match &rule.normal {
            Some(normal) => (
                Some(normal.sent_bytes_per_second.mean),
                Some(normal.received_bytes_per_second.mean),
            ),
            None => (None, None),
        }
    }

    /// The unexpected list, most recent first, then biggest.
    /// The packet and raw sockets held now that no `[[packet_socket]]` of the baseline expects.
    pub fn unexpected_packet_sockets<'a>(
        &self,
        held: impl IntoIterator<Item = &'a PacketSocketClass>,
    ) -> Vec<PacketSocketClass> {
        held.into_iter()
            .filter(|class| {
                !self
                    .baseline
                    .packet_sockets
                    .iter()
                    .any(|rule| rule.matches(class))
            })
            .cloned()
            .collect()
    }

    pub fn unexpected(&self) -> Vec<Unexpected> {
        let mut list: Vec<Unexpected> = self.unexpected.values().cloned().collect();
        list.sort_by(|a, b| {
            b.last_seen_unix
                .total_cmp(&a.last_seen_unix)
                .then((b.sent_bytes + b.received_bytes).cmp(&(a.sent_bytes + a.received_bytes)))
        });
        list
    }
}

/// The first rule matching `flow`; `remotes` holds the rules' parsed remotes.
fn find_rule(
    rules: &[Rule],
    remotes: &[Option<RemoteMatcher>],
    flow: &LiveFlow<'_>,
) -> Option<usize> {
    rules.iter().zip(remotes).position(|(rule, remote)| {
        remote
            .as_ref()
            .is_some_and(|remote| rule.matches_with(remote, flow))
    })
}

/// The first rule whose process name and traffic `flow` has, though not its executable or
/// cgroup: the rule whose process `flow`'s process impersonates.
fn find_impersonated(
    rules: &[Rule],
    remotes: &[Option<RemoteMatcher>],
    flow: &LiveFlow<'_>,
) -> Option<usize> {
    rules.iter().zip(remotes).position(|(rule, remote)| {
        rule.process == flow.process
            && !rule.same_holder(flow)
            && remote
                .as_ref()
                .is_some_and(|remote| rule.matches_traffic(remote, flow))
    })
}

fn window_steps(rule: &Rule, step_seconds: f64) -> usize {
    let cadence = rule
        .normal
        .as_ref()
        .and_then(|normal| normal.cadence_seconds);
    let seconds = stats::window_seconds(cadence, step_seconds);
    ((seconds / step_seconds).ceil() as usize).max(1)
}

fn timestamp_text(unix: f64) -> String {
    jiff::Timestamp::from_millisecond((unix * 1000.0) as i64)
        .map(|timestamp| timestamp.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{
        model::{FORMAT_VERSION, Normal, Profile, Recording},
        stats::RateStats,
    };

    const START: f64 = 1_800_000_000.0;
    const STEP: f64 = 5.0;

    fn pool_rule() -> Rule {
        Rule {
            process: "xmrig".into(),
            exe: None,
            sha256: None,
            cgroup: None,
            remote: "10.0.0.0/24".into(),
            port: Some(3333),
            protocol: "tcp".into(),
            app: None,
            account: None,
            prefixes: None,
            asks: None,
            note: None,
            learnt_late: None,
            normal: Some(Normal {
                sent_bytes_per_second: RateStats {
                    mean: 10.0,
                    p95: 100.0,
                    max: 200.0,
                },
                received_bytes_per_second: RateStats {
                    mean: 20.0,
                    p95: 200.0,
                    max: 400.0,
                },
                active_fraction: 0.1,
                connections_per_hour: 0.0,
                cadence_seconds: Some(60.0),
                bursts: None,
                longest_gap_seconds: None,
            }),
            profile: Some(Profile {
                step_seconds: 30.0,
                sent: vec![50.0, 0.0],
                received: vec![100.0, 0.0],
            }),
        }
    }

    fn baseline(rules: Vec<Rule>) -> Baseline {
        Baseline {
            format_version: FORMAT_VERSION,
            recording: Some(Recording {
                started_at: "2027-01-15T08:00:00Z".into(),
                duration_seconds: 1800.0,
                step_seconds: STEP,
                host: "rig".into(),
            }),
            rules,
            packet_sockets: Vec::new(),
        }
    }

    fn delta(process: &str, remote: &str, port: u16, sent: u64, received: u64) -> FlowDelta {
        FlowDelta {
            process: process.into(),
            exe: Some(format!("/usr/bin/{process}")),
            exe_sha256: None,
            cgroup: None,
            new_flow: false,
            remote: remote.parse().unwrap(),
            port: Some(port),
            protocol: 6,
            app: crate::naming::App::Unknown,
            name: None,
            account: None,
            traffic: Traffic {
                sent_bytes: sent,
                received_bytes: received,
                sent_packets: 1,
                received_packets: 1,
            },
        }
    }

    #[test]
    fn matched_traffic_is_expected_and_the_rest_is_listed() {
        let mut monitor = Monitor::new(baseline(vec![pool_rule()]), STEP, 10, START);
        let increments = monitor.observe_step(
            &[
                delta("xmrig", "10.0.0.7", 3333, 100, 200),
                delta("xmrig", "10.0.1.7", 3333, 5, 6),
                delta("curl", "10.0.0.7", 3333, 7, 8),
            ],
            START + STEP,
        );
        assert_eq!(increments.len(), 2);
        let list = monitor.unexpected();
        let keys: Vec<(&str, &str)> = list
            .iter()
            .map(|entry| (entry.process.as_str(), entry.remote.as_str()))
            .collect();
        assert!(keys.contains(&("xmrig", "10.0.1.7")), "{keys:?}");
        assert!(keys.contains(&("curl", "10.0.0.7")), "{keys:?}");
        let curl = list.iter().find(|entry| entry.process == "curl").unwrap();
        assert_eq!((curl.sent_bytes, curl.received_bytes), (7, 8));
        assert_eq!(curl.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(curl.port, Some(3333));
        assert_eq!(curl.protocol, "tcp");
    }

    #[test]
    fn unexpected_traffic_is_graded_once_and_counted_as_a_departure() {
        let resolver = Rule::new("resolved", "10.0.5.53", Some(53), "tcp");
        let rules = vec![pool_rule(), resolver];
        let mut monitor = Monitor::new(baseline(rules.clone()), STEP, 10, START);
        let step = [
            // The miner asking the resolver's server: low.
            delta("xmrig", "10.0.5.53", 53, 60, 120),
            // The miner to a host nothing comes near: high.
            delta("xmrig", "198.51.100.7", 4444, 5, 6),
            // A new program: high.
            delta("curl", "10.0.0.7", 3333, 7, 8),
        ];
        let increments = monitor.observe_step(&step, START + STEP);
        let graded: Vec<(&str, Risk, Reason)> = increments
            .iter()
            .map(|i| (i.key.process.as_str(), i.risk, i.reason))
            .collect();
        assert_eq!(
            graded,
            [
                ("xmrig", Risk::Low, Reason::SharedDestination),
                ("xmrig", Risk::High, Reason::NewNetwork),
                ("curl", Risk::High, Reason::NewProcess),
            ]
        );
        let list = monitor.unexpected();
        assert!(list.iter().all(|entry| {
            increments
                .iter()
                .any(|i| (i.risk, i.reason) == (entry.risk, entry.reason))
        }));
        let mut departures = monitor.take_departures();
        departures.sort();
        assert_eq!(
            departures,
            [
                (Risk::Low, Reason::SharedDestination),
                (Risk::High, Reason::NewProcess),
                (Risk::High, Reason::NewNetwork),
            ]
        );
        // Seen again: the same entries, no new departures.
        monitor.observe_step(&step, START + 2.0 * STEP);
        assert!(monitor.take_departures().is_empty());

        // Configured grades apply.
        let grades = Grades::new([(Reason::SharedDestination, Risk::High)].into());
        let mut strict = Monitor::new(baseline(rules), STEP, 10, START).with_grades(grades);
        let increments = strict.observe_step(&step[..1], START + STEP);
        assert_eq!(increments[0].risk, Risk::High);
        assert_eq!(strict.unexpected()[0].risk, Risk::High);
    }

    #[test]
    fn rules_count_their_hits_go_stale_and_offer_their_name() {
        let by_address = Rule::new("xmrig", "10.0.0.7", Some(3333), "tcp");
        let idle = Rule::new("chronyd", "10.0.0.123", Some(123), "udp");
        let mut monitor = Monitor::new(baseline(vec![by_address, idle]), STEP, 10, START)
            .with_stale_after(3600.0);
        let named = |source| FlowDelta {
            name: Some(crate::flow::RemoteName {
                name: "pool.example.org".into(),
                source,
            }),
            ..delta("xmrig", "10.0.0.7", 3333, 100, 200)
        };
        // A name the client claims (SNI) is no evidence; what its process resolved is.
        monitor.observe_step(&[named(Source::Sni), named(Source::Sni)], START + STEP);
        assert!(monitor.upgrades().is_empty());
        monitor.observe_step(&[named(Source::Dns)], START + 2.0 * STEP);
        let upgrades = monitor.upgrades();
        assert_eq!(upgrades.len(), 1);
        assert_eq!(
            (upgrades[0].name.as_str(), upgrades[0].prefix.as_str()),
            ("pool.example.org", "10.0.0.0/24")
        );
        let statuses = monitor.statuses(START + 2.0 * STEP);
        assert_eq!((statuses[0].hits, statuses[0].step_hits), (3, 1));
        // The latest step's bytes (one flow of 100 sent, 200 received), for the counters.
        assert_eq!(
            (statuses[0].step_sent_bytes, statuses[0].step_received_bytes),
            (100, 200)
        );
        assert_eq!(statuses[0].last_seen_unix, Some(START + 2.0 * STEP));
        assert_eq!(statuses[0].silent_since_unix, START + 2.0 * STEP);
        // Never seen: silent since monitoring started.
        assert_eq!(statuses[1].silent_since_unix, START);
        assert_eq!((statuses[1].hits, statuses[1].last_seen_unix), (0, None));
        assert!(!statuses[1].stale);
        // An hour without traffic: stale; the busy rule is not.
        monitor.observe_step(&[named(Source::Dns)], START + 3600.0);
        let statuses = monitor.statuses(START + 3600.0);
        assert!(statuses[1].stale && !statuses[0].stale);
        // Once the rule is by name, nothing is offered any more.
        let mut pool = Rule::new("xmrig", "pool.example.org", Some(3333), "tcp");
        pool.prefixes = Some(vec!["10.0.0.0/24".into()]);
        monitor.replace_baseline(baseline(vec![pool]), START + 3605.0);
        assert!(monitor.upgrades().is_empty());
    }

    #[test]
    fn an_impostor_of_an_expected_process_is_listed_as_such() {
        let rule = Rule {
            exe: Some("/usr/bin/xmrig".into()),
            cgroup: Some("/system.slice/xmrig.service".into()),
            ..pool_rule()
        };
        let mut monitor = Monitor::new(baseline(vec![rule]), STEP, 10, START);
        let miner = FlowDelta {
            cgroup: Some("/system.slice/xmrig.service".into()),
            ..delta("xmrig", "10.0.0.7", 3333, 100, 200)
        };
        let copy = FlowDelta {
            exe: Some("/tmp/.x/xmrig".into()),
            ..miner.clone()
        };
        let elsewhere = FlowDelta {
            cgroup: Some("/user.slice/user-1000.slice/session-4.scope".into()),
            ..miner.clone()
        };
        let other_port = FlowDelta {
            exe: Some("/tmp/.x/xmrig".into()),
            ..delta("xmrig", "10.0.9.9", 4444, 1, 1)
        };
        let increments = monitor.observe_step(&[miner, copy, elsewhere, other_port], START + STEP);
        // The real miner is expected; the copy and the one run elsewhere are listed apart, as
        // impostors; other traffic of the copy is unexpected but impersonates no rule.
        assert_eq!(increments.len(), 3);
        let list = monitor.unexpected();
        assert_eq!(list.len(), 3, "{list:?}");
        let expected = Some(Holder {
            process: "xmrig".into(),
            exe: Some("/usr/bin/xmrig".into()),
            cgroup: Some("/system.slice/xmrig.service".into()),
        });
        let impostors: Vec<(Option<&str>, Option<&str>)> = list
            .iter()
            .filter(|entry| entry.port == Some(3333))
            .map(|entry| {
                assert_eq!(entry.impostor_of, expected);
                assert_eq!((entry.sent_bytes, entry.received_bytes), (100, 200));
                (entry.exe.as_deref(), entry.cgroup.as_deref())
            })
            .collect();
        assert_eq!(impostors.len(), 2);
        assert!(impostors.contains(&(Some("/tmp/.x/xmrig"), Some("/system.slice/xmrig.service"))));
        assert!(impostors.contains(&(
            Some("/usr/bin/xmrig"),
            Some("/user.slice/user-1000.slice/session-4.scope")
        )));
        let unrelated = list.iter().find(|entry| entry.port == Some(4444)).unwrap();
        assert_eq!(unrelated.impostor_of, None);
    }

    #[test]
    fn another_payout_account_on_the_rules_traffic_is_listed_with_both_accounts() {
        let rule = Rule {
            account: Some("wallet-a.rig01".into()),
            ..pool_rule()
        };
        let mut monitor = Monitor::new(baseline(vec![rule.clone()]), STEP, 10, START);
        let login = |account: Option<&str>| FlowDelta {
            account: account.map(str::to_owned),
            ..delta("xmrig", "10.0.0.7", 3333, 100, 200)
        };
        // The usual account, and a flow whose login was not seen: the rule's.
        let increments =
            monitor.observe_step(&[login(Some("wallet-a.rig01")), login(None)], START + STEP);
        assert!(increments.is_empty());
        // Another account on the same pool: listed with both, counted, the rule not silent.
        let increments = monitor.observe_step(&[login(Some("wallet-x.rig01"))], START + 400.0);
        assert_eq!(increments.len(), 1);
        assert_eq!(
            increments[0].changed_account.as_deref(),
            Some("wallet-x.rig01")
        );
        let list = monitor.unexpected();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].account.as_deref(), Some("wallet-x.rig01"));
        assert_eq!(list[0].expected_account.as_deref(), Some("wallet-a.rig01"));
        let status = &monitor.statuses(START + 400.0)[0];
        assert_eq!(status.silence_seconds, 0.0);
        assert_eq!(
            (list[0].sent_bytes, list[0].received_bytes),
            (100, 200),
            "its bytes are listed"
        );
        // A reload that still expects the old account keeps the entry; accepting drops it.
        monitor.replace_baseline(baseline(vec![rule.clone()]), START + 405.0);
        assert_eq!(monitor.unexpected().len(), 1);
        let accepted = Rule {
            account: Some("wallet-x.rig01".into()),
            ..rule
        };
        monitor.replace_baseline(baseline(vec![accepted]), START + 410.0);
        assert!(monitor.unexpected().is_empty());
    }

    #[test]
    fn a_name_seen_outside_its_networks_is_reported_until_accepted() {
        let rule = Rule {
            remote: "pool.example.org".into(),
            prefixes: Some(vec!["10.0.0.0/24".into()]),
            ..pool_rule()
        };
        let mut monitor = Monitor::new(baseline(vec![rule.clone()]), STEP, 10, START);
        let named = |remote: &str| FlowDelta {
            name: Some(crate::flow::RemoteName {
                name: "pool.example.org".into(),
                source: Source::Dns,
            }),
            ..delta("xmrig", remote, 3333, 100, 200)
        };
        let increments =
            monitor.observe_step(&[named("10.0.0.7"), named("203.0.113.7")], START + STEP);
        // Both are the rule's traffic; only the second is a move.
        assert!(increments.is_empty());
        let moved = monitor.moved_names();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].remote, "203.0.113.7");
        assert_eq!(moved[0].prefix, "203.0.113.0/24");
        assert_eq!(moved[0].known, ["10.0.0.0/24"]);
        monitor.replace_baseline(baseline(vec![rule.clone()]), START + 2.0 * STEP);
        assert_eq!(monitor.moved_names().len(), 1);
        let accepted = Rule {
            prefixes: Some(vec!["10.0.0.0/24".into(), "203.0.113.0/24".into()]),
            ..rule
        };
        monitor.replace_baseline(baseline(vec![accepted]), START + 3.0 * STEP);
        assert!(monitor.moved_names().is_empty());
    }

    #[test]
    fn a_changed_executable_is_reported_until_accepted() {
        let hash = |byte: &str| byte.repeat(64);
        let rule = Rule {
            exe: Some("/usr/bin/xmrig".into()),
            sha256: Some(hash("a")),
            ..pool_rule()
        };
        let mut monitor = Monitor::new(baseline(vec![rule.clone()]), STEP, 10, START);
        let with_hash = |sha256: Option<String>| FlowDelta {
            exe_sha256: sha256,
            ..delta("xmrig", "10.0.0.7", 3333, 100, 200)
        };
        monitor.observe_step(&[with_hash(Some(hash("a")))], START + STEP);
        assert!(monitor.changed_executables().is_empty());
        // A short job gone before its executable was hashed: nothing to compare, no report
        // (the quiet day's hourly upload once raised a false executable-changed here).
        monitor.observe_step(&[with_hash(None)], START + STEP);
        assert!(monitor.changed_executables().is_empty());
        // Patched: still the rule's traffic, but reported.
        let increments = monitor.observe_step(&[with_hash(Some(hash("b")))], START + 2.0 * STEP);
        assert!(increments.is_empty());
        let changed = monitor.changed_executables();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].exe, "/usr/bin/xmrig");
        assert_eq!(changed[0].expected_sha256, hash("a"));
        assert_eq!(changed[0].sha256, Some(hash("b")));
        // Unhashed in between: the report keeps what was seen.
        monitor.observe_step(&[with_hash(None)], START + 3.0 * STEP);
        assert_eq!(monitor.changed_executables()[0].sha256, Some(hash("b")));
        monitor.observe_step(&[with_hash(Some(hash("b")))], START + 4.0 * STEP);
        // A reload that still expects the old hash keeps it; one that took the new clears it.
        monitor.replace_baseline(baseline(vec![rule.clone()]), START + 5.0 * STEP);
        assert_eq!(monitor.changed_executables().len(), 1);
        let accepted = Rule {
            sha256: Some(hash("b")),
            ..rule
        };
        monitor.replace_baseline(baseline(vec![accepted]), START + 6.0 * STEP);
        assert!(monitor.changed_executables().is_empty());
    }

    #[test]
    fn the_unexpected_list_is_bounded_and_overflow_is_reported() {
        let mut monitor = Monitor::new(baseline(vec![]), STEP, 2, START);
        let increments = monitor.observe_step(
            &[
                delta("a", "10.0.0.1", 1, 1, 1),
                delta("b", "10.0.0.2", 1, 1, 1),
                delta("c", "10.0.0.3", 1, 1, 1),
            ],
            START + STEP,
        );
        assert_eq!(monitor.unexpected().len(), 2);
        assert_eq!(
            increments
                .iter()
                .filter(|increment| !increment.listed)
                .count(),
            1
        );
    }

    #[test]
    fn deviation_silence_and_cadence_follow_the_traffic() {
        let mut monitor = Monitor::new(baseline(vec![pool_rule()]), STEP, 10, START);
        // A job every 60 s (12 steps): normal traffic.
        let mut now = START;
        for step in 0..48 {
            now += STEP;
            let deltas = if step % 12 == 0 {
                vec![delta("xmrig", "10.0.0.7", 3333, 600, 1200)]
            } else {
                vec![]
            };
            monitor.observe_step(&deltas, now);
        }
        let status = &monitor.statuses(now)[0];
        // Window = one cadence (60 s = 12 steps) holding one 600-byte job: 10 B/s = the mean.
        assert!((status.sent_rate - 10.0).abs() < 1e-9, "{status:?}");
        assert!(status.sent_deviation.unwrap() < 1.0);
        assert_eq!(status.observed_cadence, Some(60.0));
        assert_eq!(status.expected_cadence, Some(60.0));
        assert!(status.silence_ratio < 1.0);

        // A burst: 60 kB in one step → 1000 B/s over the window, 10× p95.
        now += STEP;
        monitor.observe_step(&[delta("xmrig", "10.0.0.7", 3333, 60_000, 0)], now);
        let status = &monitor.statuses(now)[0];
        assert!(status.sent_deviation.unwrap() > 9.0, "{status:?}");

        // Then the miner dies: silence grows past the cadence.
        for _ in 0..30 {
            now += STEP;
            monitor.observe_step(&[], now);
        }
        let status = &monitor.statuses(now)[0];
        assert_eq!(status.silence_seconds, 150.0);
        assert!(status.silence_ratio > 2.0, "{status:?}");
    }

    #[test]
    fn reference_follows_the_recorded_cycle() {
        let monitor = Monitor::new(baseline(vec![pool_rule()]), STEP, 10, START);
        let start: jiff::Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        let t0 = start.as_second() as f64;
        // Cycle of 60 s: first 30 s bin holds the traffic.
        let at = |offset: f64| monitor.statuses(t0 + offset)[0].reference_sent;
        assert_eq!(at(10.0), Some(50.0));
        assert_eq!(at(40.0), Some(0.0));
        assert_eq!(at(3600.0 + 10.0), Some(50.0));
    }

    #[test]
    fn reload_keeps_state_of_kept_rules_and_drops_newly_expected_entries() {
        let mut monitor = Monitor::new(baseline(vec![pool_rule()]), STEP, 10, START);
        monitor.observe_step(
            &[
                delta("xmrig", "10.0.0.7", 3333, 100, 0),
                delta("curl", "10.9.9.9", 443, 1, 1),
            ],
            START + STEP,
        );
        assert_eq!(monitor.unexpected().len(), 1);
        let mut accepted = Rule {
            process: "curl".into(),
            remote: "10.9.9.9".into(),
            port: Some(443),
            normal: None,
            profile: None,
            ..pool_rule()
        };
        accepted.note = Some("update check".into());
        monitor.replace_baseline(baseline(vec![pool_rule(), accepted]), START + 2.0 * STEP);
        assert!(monitor.unexpected().is_empty());
        let statuses = monitor.statuses(START + 2.0 * STEP);
        // The pool rule kept its last traffic time (one step ago), not the reload time.
        assert_eq!(statuses[0].silence_seconds, STEP);
        // A rule without recorded stats has no deviation.
        assert_eq!(statuses[1].sent_deviation, None);
    }

    /// `delta` with an application and, when `name` is given, a name learnt from `source`.
    fn speaking(mut delta: FlowDelta, app: App, name: Option<(&str, Source)>) -> FlowDelta {
        delta.app = app;
        delta.name = name.map(|(name, source)| crate::flow::RemoteName {
            name: name.into(),
            source,
        });
        delta
    }

    fn stratum_pool_rule() -> Rule {
        Rule {
            remote: "pool.example.org".into(),
            app: Some("stratum".into()),
            ..pool_rule()
        }
    }

    #[test]
    fn a_miner_speaking_http_to_its_pool_is_unexpected() {
        let mut monitor = Monitor::new(baseline(vec![stratum_pool_rule()]), STEP, 10, START);
        let pool = Some(("pool.example.org", Source::Dns));
        let increments = monitor.observe_step(
            &[
                speaking(
                    delta("xmrig", "10.0.0.7", 3333, 100, 200),
                    App::Stratum,
                    pool,
                ),
                speaking(delta("xmrig", "10.0.0.7", 3333, 5, 6), App::Http, pool),
            ],
            START + STEP,
        );
        // The stratum traffic counted for the rule, the HTTP traffic did not.
        assert_eq!(monitor.statuses(START + STEP)[0].silence_seconds, 0.0);
        assert_eq!(increments.len(), 1);
        assert_eq!(increments[0].key.app, App::Http);
        let list = monitor.unexpected();
        assert_eq!(list.len(), 1);
        let entry = &list[0];
        assert_eq!(entry.app, App::Http);
        assert_eq!(entry.remote, "10.0.0.7");
        assert_eq!(entry.name.as_deref(), Some("pool.example.org"));
        assert_eq!(entry.name_source, Some(Source::Dns));
        assert_eq!((entry.sent_bytes, entry.received_bytes), (5, 6));
        assert_eq!(monitor.statuses(START + STEP)[0].labels.app, "stratum");
    }

    #[test]
    fn name_rules_follow_the_name_across_addresses_but_not_unnamed_traffic() {
        let mut monitor = Monitor::new(baseline(vec![stratum_pool_rule()]), STEP, 10, START);
        let pool = Some(("pool.example.org", Source::Dns));
        monitor.observe_step(
            &[
                speaking(delta("xmrig", "10.0.0.7", 3333, 1, 1), App::Stratum, pool),
                speaking(delta("xmrig", "192.0.2.9", 3333, 1, 1), App::Stratum, pool),
                speaking(delta("xmrig", "10.0.0.8", 3333, 1, 1), App::Stratum, None),
                speaking(
                    delta("xmrig", "10.0.0.9", 3333, 1, 1),
                    App::Stratum,
                    Some(("pool.example.net", Source::Sni)),
                ),
            ],
            START + STEP,
        );
        let mut remotes: Vec<String> = monitor
            .unexpected()
            .into_iter()
            .map(|entry| entry.remote)
            .collect();
        remotes.sort();
        assert_eq!(remotes, ["10.0.0.8", "10.0.0.9"]);
    }

    #[test]
    fn an_entry_keeps_the_latest_name_of_its_remote() {
        let mut monitor = Monitor::new(baseline(vec![]), STEP, 10, START);
        let steps = [
            Some(("a.example.org", Source::Dns)),
            Some(("b.example.org", Source::Sni)),
            None,
        ];
        for (step, name) in steps.into_iter().enumerate() {
            monitor.observe_step(
                &[speaking(
                    delta("curl", "10.9.9.9", 443, 1, 1),
                    App::Tls,
                    name,
                )],
                START + STEP * (step as f64 + 1.0),
            );
        }
        let list = monitor.unexpected();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name.as_deref(), Some("b.example.org"));
        assert_eq!(list[0].name_source, Some(Source::Sni));
        assert_eq!((list[0].sent_bytes, list[0].received_bytes), (3, 3));
    }

    #[test]
    fn reload_drops_entries_a_new_name_rule_covers() {
        let mut monitor = Monitor::new(baseline(vec![]), STEP, 10, START);
        monitor.observe_step(
            &[
                speaking(
                    delta("xmrig", "10.0.0.7", 3333, 1, 1),
                    App::Stratum,
                    Some(("pool.example.org", Source::Dns)),
                ),
                speaking(delta("xmrig", "10.0.0.8", 3333, 1, 1), App::Stratum, None),
                speaking(
                    delta("xmrig", "10.0.0.7", 3333, 1, 1),
                    App::Http,
                    Some(("pool.example.org", Source::Dns)),
                ),
            ],
            START + STEP,
        );
        assert_eq!(monitor.unexpected().len(), 3);
        monitor.replace_baseline(baseline(vec![stratum_pool_rule()]), START + 2.0 * STEP);
        let mut left: Vec<(String, App)> = monitor
            .unexpected()
            .into_iter()
            .map(|entry| (entry.remote, entry.app))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("10.0.0.7".to_owned(), App::Http),
                ("10.0.0.8".to_owned(), App::Stratum)
            ]
        );
    }

    #[test]
    fn unexpected_json_has_name_source_and_app() {
        let entry = Unexpected {
            process: "xmrig".into(),
            exe: None,
            sha256: None,
            cgroup: None,
            impostor_of: None,
            account: None,
            expected_account: None,
            remote: "10.0.0.7".into(),
            port: Some(3333),
            protocol: "tcp".into(),
            name: Some("pool.example.org".into()),
            name_source: Some(Source::Sni),
            app: App::Http,
            risk: Risk::Low,
            reason: Reason::NewPort,
            sent_bytes: 1,
            received_bytes: 2,
            first_seen: "2027-01-15T08:00:00Z".into(),
            last_seen: "2027-01-15T08:00:05Z".into(),
            first_seen_unix: 0.0,
            last_seen_unix: 0.0,
        };
        let json: serde_json::Value = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["name"], "pool.example.org");
        assert_eq!(json["name_source"], "sni");
        assert_eq!(json["app"], "http");
        let unnamed = Unexpected {
            name: None,
            name_source: None,
            ..entry.clone()
        };
        let json = serde_json::to_value(&unnamed).unwrap();
        assert!(
            json["name"].is_null() && json["name_source"].is_null(),
            "{json}"
        );

        // An agent from before names and apps: read with none.
        let old = r#"[{"process":"curl","exe":null,"remote":"10.9.9.9","port":443,
            "protocol":"tcp","sent_bytes":1,"received_bytes":2,
            "first_seen":"2027-01-15T08:00:00Z","last_seen":"2027-01-15T08:00:05Z"}]"#;
        let list: Vec<Unexpected> = serde_json::from_str(old).unwrap();
        assert_eq!(list[0].app, App::Unknown);
        assert_eq!((list[0].name.as_deref(), list[0].name_source), (None, None));
    }
}
