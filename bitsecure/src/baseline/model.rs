//! The baseline's data model: a [`Baseline`], its [`Recording`], its [`Rule`]s with what normal
//! looked like ([`Normal`], [`Profile`]), a rule's [`RuleIdentity`], and the serde shape the
//! file reads into.
//!
//! Plain data: no I/O and no TOML text (reading, checking and writing the file are in
//! [`file`](super::file)), no matching of live traffic and no normalizing of remotes
//! ([`matching`](super::matching)). Of what a rule's text means, only what naming it needs is
//! here: [`Rule::describe`] and `protocol_number`.

use std::fmt;

use bitsecure_common::protocol;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{MapAccess, Visitor},
};

use super::stats::RateStats;

/// The newest format version this BitSecure reads, and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// A whole baseline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Format of the file; [`FORMAT_VERSION`] for a file this BitSecure writes.
    pub format_version: u32,
    /// When and where the baseline was recorded; `None` for a hand-written file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    /// The expected traffic classes, in file order (`[[rule]]` tables).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// The processes expected to hold a packet or raw socket (`[[packet_socket]]` tables):
    /// what those send passes below (packet) or beside (raw) the traffic rules.
    #[serde(
        default,
        rename = "packet_socket",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub packet_sockets: Vec<PacketSocketRule>,
}

/// A process expected to hold a packet socket (AF_PACKET, e.g. a DHCP client) or a raw IP
/// socket (e.g. ping) of one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSocketRule {
    /// Process name, compared exactly with the live process name.
    pub process: String,
    /// Executable path; when given, only a process started from this file matches. `None` =
    /// any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// `packet` or `raw`.
    pub kind: String,
    /// The socket's protocol as `bitsecure_packet_sockets` labels it: an EtherType name
    /// (`all`, `ipv4`, `arp`, ...) or number for a packet socket, an IP protocol for a raw one;
    /// `*` matches any.
    pub protocol: String,
    /// Free text for the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PacketSocketRule {
    /// Whether a live holder is this rule's: same process (and executable, if the rule
    /// names one), kind and protocol.
    pub fn matches(&self, held: &crate::flow::PacketSocketClass) -> bool {
        self.process == held.process
            && self.exe.as_ref().is_none_or(|exe| *exe == held.exe)
            && self.kind == held.kind.as_str()
            && (self.protocol == "*" || self.protocol == held.protocol)
    }

    /// E.g. `dhclient holds a packet socket (ipv4)`.
    pub fn describe(&self) -> String {
        format!(
            "{} holds a {} socket ({})",
            printable(&self.process),
            printable(&self.kind),
            printable(&self.protocol)
        )
    }
}

/// When and where a baseline was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Start of the recording, RFC 3339 in UTC, e.g. `2026-11-24T12:00:00Z`. The file may
    /// write it as a string or as a TOML date-time (without quotes); it is written back as a
    /// string.
    #[serde(deserialize_with = "string_or_datetime")]
    pub started_at: String,
    /// Length of the recording in seconds (≥ 0).
    pub duration_seconds: f64,
    /// Sampling step in seconds (> 0).
    pub step_seconds: f64,
    /// Host name of the machine recorded.
    pub host: String,
}

/// One expected traffic class and what normal looked like for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Process name, compared exactly with the live process name (as in `/proc/PID/comm`).
    /// Any program can take any name: `exe` and `cgroup` say which program it must be.
    pub process: String,
    /// Executable path; when given, only a process started from this file matches (one whose
    /// executable is unknown never does). `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// SHA-256 of the executable's content (64 hex digits). Not part of matching: a process
    /// whose executable hashes otherwise is reported as a changed executable (an update, or a
    /// patched binary), its traffic still this rule's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// cgroup v2 path the process's sockets are created in (`/system.slice/xmrig.service`),
    /// as the kernel records it; when given, only sockets created there match. `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Remote endpoint: an IP address, a CIDR network (`10.0.0.0/24`, `fd00::/64`), a host
    /// name (`pool.example.org`), a wildcard (`*.example.org`) or `*`.
    /// See [`Rule::remote_matcher`].
    pub remote: String,
    /// Remote port; `None` matches any port (and traffic without ports, such as ICMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or an IP protocol number `0`..=`255` as text.
    pub protocol: String,
    /// Application protocol ([`App::as_str`](crate::naming::App::as_str): `stratum`, `tls`,
    /// ...); `None` matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The account (wallet, worker) a Stratum flow of this rule logs in with; a login with
    /// another account is a changed payout identity, not this rule's traffic. `None` = any
    /// (and a flow whose login was not seen, e.g. TLS stratum, is not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// For a rule by name: the networks (IPv4 /24, IPv6 /48) its addresses were in while
    /// learning; the name resolving outside them is reported as moved (a DNS or BGP hijack of
    /// the pool, or a pool that moved), its traffic still the rule's. `None` = anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<String>>,
    /// For a DNS rule (the process's queries to a resolver): the names it asks for, or `*`
    /// patterns (`*.example.org`); a name it never asked before is listed as new. `None` = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asks: Option<Vec<String>>,
    /// Free text for the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the agent added this rule by itself while the baseline settled (RFC 3339): a
    /// low-risk class first seen after learning, for the user to review. `None` = learnt or
    /// accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learnt_late: Option<String>,
    /// What normal looked like; `None` for a rule accepted by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal: Option<Normal>,
    /// Expected rate over one cycle of periodic traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// A string, or a TOML date-time as its text (`started_at = 2026-11-24T12:00:00Z` is natural
/// to write by hand).
fn string_or_datetime<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a date-time like \"2026-11-24T12:00:00Z\"")
        }

        fn visit_str<E>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
            // The TOML deserializer hands a date-time over as a map only `Datetime` reads.
            let datetime = toml::value::Datetime::deserialize(
                serde::de::value::MapAccessDeserializer::new(map),
            )?;
            Ok(datetime.to_string())
        }
    }

    deserializer.deserialize_any(TextVisitor)
}

/// What normal looked like for a rule during the recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normal {
    /// Rate sent to the remote, in bytes per second.
    pub sent_bytes_per_second: RateStats,
    /// Rate received from the remote, in bytes per second.
    pub received_bytes_per_second: RateStats,
    /// Share of the recording's steps with any traffic, `0.0..=1.0`.
    pub active_fraction: f64,
    /// New connections per hour.
    pub connections_per_hour: f64,
    /// Period of the traffic in seconds, for periodic traffic only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cadence_seconds: Option<f64>,
    /// Bursts (runs of polls with traffic) while learning; absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bursts: Option<u64>,
    /// The longest quiet spell between two bursts while learning, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_gap_seconds: Option<f64>,
}

/// The expected rate over one cycle, in bins of `step_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Width of a bin in seconds (> 0).
    pub step_seconds: f64,
    /// Bytes per second sent, one value per bin.
    pub sent: Vec<f64>,
    /// Bytes per second received, one value per bin (as many as `sent`).
    pub received: Vec<f64>,
}

/// The identity of a rule, normalized: two rules with the same identity describe the same
/// traffic class, so a baseline holds at most one of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleIdentity {
    /// Process name, as written.
    pub process: String,
    /// Executable path, as written; `None` = any.
    pub exe: Option<String>,
    /// cgroup path, as written; `None` = any.
    pub cgroup: Option<String>,
    /// The remote in canonical form (`10.0.0.2/32` → `10.0.0.2`, `::ffff:10.0.0.2` →
    /// `10.0.0.2`, `Pool.Example.org.` → `pool.example.org`); as written when it does not
    /// parse.
    pub remote: String,
    /// Remote port; `None` = any.
    pub port: Option<u16>,
    /// Protocol in canonical form (`6` → `tcp`, `TCP` → `tcp`, `47` → `47`); as written
    /// (lowercased) when unknown.
    pub protocol: String,
    /// Application protocol as written; `None` = any.
    pub app: Option<String>,
}

impl Baseline {
    /// A baseline in the current format.
    pub fn new(recording: Option<Recording>, rules: Vec<Rule>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            recording,
            rules,
            packet_sockets: Vec::new(),
        }
    }
}

impl Rule {
    /// A rule accepted by hand: no exe, hash, cgroup, note, normal values or profile.
    pub fn new(
        process: impl Into<String>,
        remote: impl Into<String>,
        port: Option<u16>,
        protocol: impl Into<String>,
    ) -> Self {
        Self {
            process: process.into(),
            exe: None,
            sha256: None,
            cgroup: None,
            remote: remote.into(),
            port,
            protocol: protocol.into(),
            app: None,
            account: None,
            prefixes: None,
            asks: None,
            note: None,
            learnt_late: None,
            normal: None,
            profile: None,
        }
    }

    /// One line naming the rule, e.g. `xmrig → 10.0.0.2:3333/tcp`, `sshd → *:22/tcp`,
    /// `chronyd → [fd00::1]:*/udp` (any port), `ping → 10.0.0.1/icmp` (no ports),
    /// `xmrig → pool.example.org:3333/tcp (stratum)` (with an application). Control
    /// characters are escaped, so it is safe to print.
    pub fn describe(&self) -> String {
        let port = match self.port {
            Some(port) => format!(":{port}"),
            None if is_portless(&self.protocol) => String::new(),
            None => ":*".to_owned(),
        };
        let remote = printable(&self.remote);
        let remote = if !port.is_empty() && remote.contains(':') {
            format!("[{remote}]")
        } else {
            remote
        };
        let process = if self.process.is_empty() {
            "\"\"".to_owned()
        } else {
            printable(&self.process)
        };
        let app = match &self.app {
            Some(app) => format!(" ({})", printable(app)),
            None => String::new(),
        };
        format!(
            "{process} → {remote}{port}/{}{app}",
            printable(&self.protocol)
        )
    }
}

impl fmt::Display for RuleIdentity {
    /// The same form as [`Rule::describe`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = Rule {
            app: self.app.clone(),
            ..Rule::new(&*self.process, &*self.remote, self.port, &*self.protocol)
        };
        f.write_str(&rule.describe())
    }
}

/// The IP protocol number of a protocol as a rule writes it: `tcp`, `udp`, `icmp`, `icmpv6`,
/// `sctp` (in any case) or a number `0`..=`255`.
pub(super) fn protocol_number(text: &str) -> Option<u8> {
    if let Some(number) = protocol::number(text) {
        return Some(number);
    }
    if !text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    None
}

/// ICMP has no ports: a rule for it describes without `:*`.
fn is_portless(protocol: &str) -> bool {
    matches!(
        protocol_number(protocol),
        Some(protocol::ICMP | protocol::ICMPV6)
    )
}

/// The text with control and bidirectional-override characters escaped, safe for a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::test_support::{chronyd_rule, xmrig_rule};

    #[test]
    fn describe_shows_names_and_apps() {
        let rule = Rule {
            app: Some("stratum".to_owned()),
            ..Rule::new("xmrig", "pool.example.org", Some(3333), "tcp")
        };
        assert_eq!(
            rule.describe(),
            "xmrig → pool.example.org:3333/tcp (stratum)"
        );
        assert_eq!(
            rule.identity().to_string(),
            "xmrig → pool.example.org:3333/tcp (stratum)"
        );
        assert_eq!(
            Rule::new("curl", "*.Example.org", None, "tcp")
                .identity()
                .to_string(),
            "curl → *.example.org:*/tcp"
        );
        let odd = Rule {
            app: Some("http\u{1b}[2J".to_owned()),
            ..Rule::new("curl", "*", None, "tcp")
        };
        assert_eq!(odd.describe(), "curl → *:*/tcp (http\\u{1b}[2J)");
    }

    #[test]
    fn describe_names_rules_on_one_line() {
        assert_eq!(xmrig_rule().describe(), "xmrig → 10.0.0.2:3333/tcp");
        assert_eq!(chronyd_rule().describe(), "chronyd → [fd00::/64]:*/udp");
        assert_eq!(
            Rule::new("sshd", "*", Some(22), "tcp").describe(),
            "sshd → *:22/tcp"
        );
        assert_eq!(
            Rule::new("ping", "fd00::1", None, "icmpv6").describe(),
            "ping → fd00::1/icmpv6"
        );
        assert_eq!(
            Rule::new("evil\u{1b}[31m", "*", None, "tcp").describe(),
            "evil\\u{1b}[31m → *:*/tcp"
        );
    }
}
