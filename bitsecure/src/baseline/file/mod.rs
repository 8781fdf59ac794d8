//! The baseline file: what normal traffic looks like on this machine, as TOML a person can read,
//! diff and edit.
//!
//! A baseline declares its format version, optionally when and where it was recorded, and one
//! `[[rule]]` per expected traffic class. A rule's identity is (process, remote, port,
//! protocol, app); what normal looked like for it is in `[rule.normal]` (absent for a rule
//! accepted by hand) and, for periodic traffic, the expected rate over one cycle in
//! `[rule.profile]`.
//!
//! A remote is an address, a network, `*`, or a host name: `pool.example.org` matches traffic to
//! whatever address this host learnt that name for (from a DNS answer it received, a TLS SNI or
//! an HTTP Host), `*.example.org` any name below `example.org`. A name rule never matches
//! traffic whose remote has no known name.
//!
//! ```toml
//! # BitSecure baseline: what normal traffic looks like on this machine.
//! format_version = 1
//!
//! [recording]                          # optional: absent in a hand-written file
//! started_at = "2026-11-24T12:00:00Z"  # RFC 3339, UTC
//! duration_seconds = 1800.0
//! step_seconds = 5.0                   # one sample every step
//! host = "rig-01"
//!
//! [[rule]]
//! process = "xmrig"                    # process name (as in /proc/PID/comm)
//! exe = "/usr/bin/xmrig"               # optional: executable path, for the reader
//! remote = "pool.example.org"          # IP address, CIDR ("10.0.0.0/24", "fd00::/64"), host
//!                                      # name, wildcard ("*.example.org") or "*"
//! port = 3333                          # optional: absent = any port
//! protocol = "tcp"                     # tcp, udp, icmp, icmpv6, sctp or a number 0..=255
//! app = "stratum"                      # optional: stratum, tls, http, ssh, dns or unknown;
//!                                      # absent = any application
//! note = "pool"                        # optional
//!   [rule.normal]                      # optional: absent for rules accepted by hand
//!   sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }
//!   received_bytes_per_second = { mean = 10.0, p95 = 80.0, max = 240.0 }
//!   active_fraction = 0.12             # share of steps with traffic, 0..=1
//!   connections_per_hour = 2.0
//!   cadence_seconds = 300.0            # optional: only for periodic traffic
//!   [rule.profile]                     # optional: expected rate over one cycle
//!   step_seconds = 5.0                 # width of a bin
//!   sent = [0.0, 1500.0, 0.0]          # bytes/s per bin
//!   received = [0.0, 200.0, 0.0]       # as many bins as `sent`
//!
//! [[rule]]
//! process = "sshd"
//! remote = "*"
//! port = 22
//! protocol = "tcp"
//! note = "administration, accepted by hand"
//! ```
//!
//! Reading is strict, and every error names the file and, where it can, the line: corrupt TOML,
//! unknown keys and wrong types (from the TOML parser), then the format version (checked
//! first, so a file from a newer BitSecure says so instead of complaining about new keys),
//! then the meaning of each value (a remote that is neither an address nor a name, an unknown
//! app, a negative rate, a profile whose `sent` and `received` differ in length...), naming the
//! rule by its position in the file (1 = the first `[[rule]]`) and by [`Rule::describe`]. Two
//! rules with the same identity are an error too.
//!
//! Writing: [`render`] makes a fresh file (for a new recording); [`append_rules`] adds rules to
//! an existing file's text and keeps everything already there byte for byte, comments
//! included; [`write_atomically`] replaces the file on disk (temporary file, fsync, rename)
//! after keeping the previous version as `<file>.bak`.
//!
//! ```
//! use bitsecure::baseline::file::{self, LiveFlow};
//! use bitsecure::naming::App;
//!
//! let text = r#"
//! format_version = 1
//! [[rule]]
//! process = "xmrig"
//! remote = "*.example.org"
//! port = 3333
//! protocol = "tcp"
//! app = "stratum"
//! "#;
//! let baseline = file::parse(text, "example.toml").expect("valid");
//! let flow = LiveFlow {
//!     process: "xmrig",
//!     remote: "10.0.0.2".parse().expect("an address"),
//!     name: Some("eu.pool.example.org"),
//!     port: Some(3333),
//!     protocol: 6,
//!     app: App::Stratum,
//! };
//! assert!(baseline.rules[0].matches(&flow));
//! assert!(!baseline.rules[0].matches(&LiveFlow { app: App::Http, ..flow }));
//! assert!(!baseline.rules[0].matches(&LiveFlow { name: None, ..flow }));
//! assert_eq!(baseline.rules[0].describe(), "xmrig → *.example.org:3333/tcp (stratum)");
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use bitsecure_common::protocol;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{MapAccess, SeqAccess, Visitor},
};
use toml::Spanned;

use super::stats::RateStats;
use crate::{
    fsutil::{self, Backup, ReadError},
    human,
    naming::{App, name_matches, parse::host_name},
};

/// The newest format version this BitSecure reads, and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest baseline file [`load`] accepts, in bytes: a bigger one is surely a mistake.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Relative change of a normal value (0.25 = 25 %) beyond which [`diff`] reports it.
pub const DIFF_RELATIVE_THRESHOLD: f64 = 0.25;

/// The comment at the top of a file written by [`render`].
const HEADER: &str = "\
# BitSecure baseline: what normal traffic looks like on this machine.
#
# Each [[rule]] is one expected traffic class: a process talking to a remote (an IP address,
# a CIDR network, a host name, a wildcard like \"*.example.org\" or \"*\") on a port (no
# `port` = any port) over a protocol, speaking an application protocol (`app`: stratum, tls,
# http, ssh, dns or unknown; no `app` = any). A name matches the addresses this machine learnt
# it for (DNS answers, TLS SNI, HTTP Host). [rule.normal] is what normal looked like during the
# recording (rates in bytes per second); a rule without it was accepted by hand.
# [rule.profile] is the expected rate over one cycle of periodic traffic.
# You may edit this file; when BitSecure rewrites it, it keeps the previous version as .bak.
";

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
    pub process: String,
    /// Executable path where known: shown to the reader, not used for matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Remote endpoint: an IP address, a CIDR network (`10.0.0.0/24`, `fd00::/64`), a host
    /// name (`pool.example.org`), a wildcard (`*.example.org`) or `*`.
    /// See [`Rule::remote_matcher`].
    pub remote: String,
    /// Remote port; `None` matches any port (and traffic without ports, such as ICMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or an IP protocol number `0`..=`255` as text.
    pub protocol: String,
    /// Application protocol ([`App::as_str`]: `stratum`, `tls`, ...); `None` matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Free text for the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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

/// What live traffic is matched against: the parsed form of a rule's `remote`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteMatcher {
    /// `*`: any remote.
    Any,
    /// One address.
    Address(IpAddr),
    /// A CIDR network; `base` has no bits set beyond `prefix`.
    Network {
        /// First address of the network.
        base: IpAddr,
        /// Length of the network prefix in bits (≤ 32 for IPv4, ≤ 128 for IPv6).
        prefix: u8,
    },
    /// A host name (`pool.example.org`) or a wildcard for every name below a domain
    /// (`*.example.org`), lowercase, without a trailing dot: matched against the name this host
    /// learnt for the remote (see [`name_matches`]).
    Name(String),
}

/// Live traffic as rules see it (see [`Rule::matches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveFlow<'a> {
    /// Process name.
    pub process: &'a str,
    /// Remote address.
    pub remote: IpAddr,
    /// What this host knows the remote as (lowercase, no trailing dot), if anything.
    pub name: Option<&'a str>,
    /// Remote port; `None` for protocols without ports.
    pub port: Option<u16>,
    /// IP protocol number.
    pub protocol: u8,
    /// Application protocol of the flow.
    pub app: App,
}

/// Why a rule's `remote` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The text is empty.
    #[error(
        "`remote` is empty: use an IP address, a CIDR network, a host name or \"*\" for any \
         remote"
    )]
    Empty,
    /// Neither an address, nor a network, nor a name, nor `*`.
    #[error(
        "remote {text:?} is not an IP address, a CIDR network (like 10.0.0.0/24 or fd00::/64), \
         a host name (like pool.example.org or *.example.org) or \"*\""
    )]
    NotAnAddress {
        /// The text of the remote.
        text: String,
    },
    /// Looks like a host name, but is not a valid one.
    #[error("remote {text:?} is not a valid host name: {problem}")]
    BadName {
        /// The text of the remote.
        text: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A `*` that is not the whole first label of a name (`*example.org`, `a.*.org`, `*.`).
    #[error(
        "remote {text:?}: a wildcard is \"*.\" followed by a domain, like \"*.example.org\" \
         (it matches every name below that domain); \"*\" alone matches any remote"
    )]
    BadWildcard {
        /// The text of the remote.
        text: String,
    },
    /// The part after `/` is not a number.
    #[error("remote {text:?}: the prefix length after '/' must be a number of bits")]
    BadPrefix {
        /// The text of the remote.
        text: String,
    },
    /// The prefix is longer than the address.
    #[error(
        "remote {text:?}: prefix /{prefix} is longer than the {bits} bits of an {family} address"
    )]
    PrefixTooLong {
        /// The text of the remote.
        text: String,
        /// The prefix length written.
        prefix: u32,
        /// Bits in an address of the family (32 or 128).
        bits: u8,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// The address has bits set beyond the prefix (`10.0.0.5/24`): probably a typo.
    #[error("remote {text:?} has bits set beyond the /{prefix} prefix: did you mean {suggestion}?")]
    HostBitsSet {
        /// The text of the remote.
        text: String,
        /// The prefix length written.
        prefix: u8,
        /// The network the text probably meant.
        suggestion: String,
    },
}

/// The identity of a rule, normalized: two rules with the same identity describe the same
/// traffic class, so a baseline holds at most one of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleIdentity {
    /// Process name, as written.
    pub process: String,
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

/// Errors reading, validating and writing baseline files. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file cannot be read.
    #[error("{origin}: cannot read the baseline file: {error}")]
    Read {
        /// The file.
        origin: String,
        /// What the system said.
        error: io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error(
        "{origin}: the file is {size} bytes, more than the {limit} bytes a baseline file may \
         have: is it the right file?"
    )]
    TooLarge {
        /// The file.
        origin: String,
        /// Its size (at least), in bytes.
        size: u64,
        /// [`MAX_FILE_BYTES`].
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{origin}, line {line}: not UTF-8 text (invalid byte at offset {offset}); a baseline \
         file must be UTF-8 TOML"
    )]
    NotUtf8 {
        /// The file.
        origin: String,
        /// Line of the first invalid byte (1-based).
        line: usize,
        /// Offset of the first invalid byte in the file.
        offset: usize,
    },
    /// Corrupt TOML, an unknown key, a missing key or a value of the wrong type.
    #[error("{origin}{}: {message}", at(.line, .column))]
    Toml {
        /// The file.
        origin: String,
        /// Line of the problem (1-based), when known.
        line: Option<usize>,
        /// Column of the problem (1-based, in characters), when known.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The file was written by a newer BitSecure.
    #[error(
        "{origin}: written by a newer BitSecure (format {found}, this one reads up to \
         {supported}): upgrade BitSecure to use this baseline"
    )]
    NewerFormat {
        /// The file.
        origin: String,
        /// Its `format_version`.
        found: i64,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// `format_version` is missing or not a valid version.
    #[error("{origin}{}: {problem}", at(.line, &None))]
    Version {
        /// The file.
        origin: String,
        /// Line of `format_version`, when present.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A value of `[recording]` is invalid.
    #[error("{origin}{}: [recording]: {problem}", at(.line, &None))]
    Recording {
        /// The file.
        origin: String,
        /// Line of the value, when known.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A value of a rule is invalid.
    #[error("{origin}{}: rule {index} ({rule}): {problem}", at(.line, &None))]
    Rule {
        /// The file.
        origin: String,
        /// Line of the value (or of the rule), when known.
        line: Option<usize>,
        /// Position of the rule in the file, 1 = the first `[[rule]]`.
        index: usize,
        /// [`Rule::describe`].
        rule: String,
        /// What is wrong.
        problem: String,
    },
    /// Two rules of a file have the same identity.
    #[error(
        "{origin}{}: rule {index} ({rule}) has the same process, remote, port, protocol and app \
         as rule {first}: merge them",
        at(.line, &None)
    )]
    DuplicateRule {
        /// The file.
        origin: String,
        /// Line of the second rule, when known.
        line: Option<usize>,
        /// Position of the second rule (1-based).
        index: usize,
        /// Position of the first rule (1-based).
        first: usize,
        /// [`Rule::describe`] of the second rule.
        rule: String,
    },
    /// [`append_rules`] was asked to add a rule whose identity is already in the file.
    #[error(
        "{origin}: rule {rule} is already in the baseline (rule {existing}): not adding it twice"
    )]
    AlreadyPresent {
        /// The file.
        origin: String,
        /// [`Rule::describe`] of the rule to add.
        rule: String,
        /// Position of the rule already there (1-based; counting the rules being added).
        existing: usize,
    },
    /// [`append_rules`] cannot edit the file.
    #[error("{origin}: cannot add rules: {problem}")]
    Edit {
        /// The file.
        origin: String,
        /// Why.
        problem: String,
    },
    /// [`append_rules`] would have produced an invalid file (a bug): nothing was changed.
    #[error(
        "{origin}: refusing to add the rules, the result would not be a valid baseline: {error}"
    )]
    EditInvalid {
        /// The file.
        origin: String,
        /// What is wrong with the result.
        error: Box<BaselineError>,
    },
    /// Writing failed; the previous version of the file is intact.
    #[error("{}: cannot {action}: {error}", .path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The step that failed.
        action: String,
        /// What the system said.
        error: io::Error,
    },
}

/// `, line L, column C` (or less when unknown), for error messages.
fn at(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(", line {line}, column {column}"),
        (Some(line), None) => format!(", line {line}"),
        (None, _) => String::new(),
    }
}

impl Baseline {
    /// A baseline in the current format.
    pub fn new(recording: Option<Recording>, rules: Vec<Rule>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            recording,
            rules,
        }
    }

    /// Checks what [`parse`] checks after reading the TOML (without line numbers), e.g. before
    /// writing a baseline built in memory.
    pub fn validate(&self, origin: &str) -> Result<(), BaselineError> {
        check_version_number(i64::from(self.format_version), origin, None)?;
        validate(self).map_err(|invalid| invalid.into_error(self, origin, None))
    }

    /// The position (0-based) of the rule with this identity.
    pub fn position_of(&self, identity: &RuleIdentity) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.identity() == *identity)
    }

    /// The rules matching live traffic, with their positions (0-based), in file order.
    pub fn matching_rules<'a>(
        &'a self,
        flow: LiveFlow<'a>,
    ) -> impl Iterator<Item = (usize, &'a Rule)> + 'a {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, rule)| rule.matches(&flow))
    }
}

impl Rule {
    /// A rule accepted by hand: no exe, note, normal values or profile.
    pub fn new(
        process: impl Into<String>,
        remote: impl Into<String>,
        port: Option<u16>,
        protocol: impl Into<String>,
    ) -> Self {
        Self {
            process: process.into(),
            exe: None,
            remote: remote.into(),
            port,
            protocol: protocol.into(),
            app: None,
            note: None,
            normal: None,
            profile: None,
        }
    }

    /// The parsed `remote`.
    pub fn remote_matcher(&self) -> Result<RemoteMatcher, RemoteError> {
        RemoteMatcher::parse(&self.remote)
    }

    /// Whether live traffic belongs to this rule: same process name, remote within `remote`
    /// (by address, or by the flow's name for a name rule), same port unless the rule has
    /// none, same protocol (by number: `6` = `tcp`), same application unless the rule has
    /// none. A rule with an invalid remote, protocol or app matches nothing. For many checks,
    /// parse the remote once with [`Rule::remote_matcher`] and use [`Rule::matches_with`].
    pub fn matches(&self, flow: &LiveFlow<'_>) -> bool {
        self.remote_matcher()
            .is_ok_and(|remote| self.matches_with(&remote, flow))
    }

    /// [`Rule::matches`] with the rule's remote already parsed.
    pub fn matches_with(&self, remote: &RemoteMatcher, flow: &LiveFlow<'_>) -> bool {
        self.process == flow.process
            && self.port.is_none_or(|wanted| flow.port == Some(wanted))
            && protocol_number(&self.protocol) == Some(flow.protocol)
            && self
                .app
                .as_deref()
                .is_none_or(|app| App::parse(app) == Some(flow.app))
            && remote.matches(flow.remote, flow.name)
    }

    /// The identity of the rule, normalized (see [`RuleIdentity`]).
    pub fn identity(&self) -> RuleIdentity {
        let remote = match self.remote_matcher() {
            Ok(matcher) => matcher.canonical().to_string(),
            Err(_) => self.remote.clone(),
        };
        let protocol = match protocol_number(&self.protocol) {
            Some(number) => crate::flow::protocol_label(number),
            None => self.protocol.to_ascii_lowercase(),
        };
        RuleIdentity {
            process: self.process.clone(),
            remote,
            port: self.port,
            protocol,
            app: self.app.clone(),
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

impl RemoteMatcher {
    /// Parses `*`, an IP address, a CIDR network, a host name or a wildcard (`*.example.org`).
    /// A network's address must have no bits set beyond the prefix (`10.0.0.5/24` is refused
    /// as a probable typo for `10.0.0.0/24`). A name is stored lowercase without a trailing
    /// dot; it needs at least two labels, and its last label must not be a number (both are
    /// likely typos: `"any"` for `"*"`, `10.0.0.256` for an address).
    pub fn parse(text: &str) -> Result<Self, RemoteError> {
        if text == "*" {
            return Ok(Self::Any);
        }
        if text.is_empty() {
            return Err(RemoteError::Empty);
        }
        if text.starts_with('*') {
            return parse_wildcard(text);
        }
        let not_an_address = || RemoteError::NotAnAddress {
            text: text.to_owned(),
        };
        let Some((base, prefix)) = text.split_once('/') else {
            if let Ok(address) = text.parse() {
                return Ok(Self::Address(address));
            }
            // Only digits and dots, or IPv6 punctuation: a mistyped address, not a name.
            let address_like = text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                || text.contains([':', '[', ']']);
            if address_like {
                return Err(not_an_address());
            }
            return parse_host_name(text, text, true).map(Self::Name);
        };
        let base: IpAddr = base.parse().map_err(|_| not_an_address())?;
        let digits_only = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix: u32 = match prefix.parse() {
            Ok(prefix) if digits_only => prefix,
            // Only digits, yet too big for u32: surely too long.
            Err(_) if digits_only => u32::MAX,
            _ => {
                return Err(RemoteError::BadPrefix {
                    text: text.to_owned(),
                });
            }
        };
        let (bits, family) = match base {
            IpAddr::V4(_) => (32, "IPv4"),
            IpAddr::V6(_) => (128, "IPv6"),
        };
        let Some(prefix) = u8::try_from(prefix).ok().filter(|p| *p <= bits) else {
            return Err(RemoteError::PrefixTooLong {
                text: text.to_owned(),
                prefix,
                bits,
                family,
            });
        };
        let network = mask(base, prefix);
        if network != base {
            return Err(RemoteError::HostBitsSet {
                text: text.to_owned(),
                prefix,
                suggestion: format!("{network}/{prefix}"),
            });
        }
        Ok(Self::Network { base, prefix })
    }

    /// Whether a live remote is covered: by its address for `*`, address and network
    /// matchers, by the name this host knows it as for a name matcher (never when it knows
    /// none). IPv4-mapped IPv6 addresses (`::ffff:10.0.0.2`, as seen on dual-stack sockets)
    /// count as the IPv4 address, on either side; otherwise an IPv4 address never matches an
    /// IPv6 rule and vice versa (`::/0` does not match IPv4 traffic).
    pub fn matches(&self, remote: IpAddr, name: Option<&str>) -> bool {
        let remote = canonical_address(remote);
        match self {
            Self::Any => true,
            Self::Address(address) => canonical_address(*address) == remote,
            Self::Network { base, prefix } => {
                let (base, prefix) = canonical_network(*base, *prefix);
                base.is_ipv4() == remote.is_ipv4() && mask(remote, prefix) == base
            }
            Self::Name(pattern) => name.is_some_and(|name| name_matches(pattern, name)),
        }
    }

    /// The same set of remotes in canonical form: IPv4-mapped addresses and networks as
    /// IPv4, a network of one address as that address (names are canonical when parsed).
    pub fn canonical(&self) -> Self {
        match self {
            Self::Any => Self::Any,
            Self::Address(address) => Self::Address(canonical_address(*address)),
            Self::Network { base, prefix } => {
                let (base, prefix) = canonical_network(*base, *prefix);
                let full = if base.is_ipv4() { 32 } else { 128 };
                if prefix >= full {
                    Self::Address(base)
                } else {
                    Self::Network { base, prefix }
                }
            }
            Self::Name(name) => Self::Name(name.clone()),
        }
    }
}

/// A wildcard remote, `*.` and a domain, as a [`RemoteMatcher::Name`].
fn parse_wildcard(text: &str) -> Result<RemoteMatcher, RemoteError> {
    let domain = text
        .strip_prefix("*.")
        .filter(|domain| !domain.is_empty() && *domain != ".")
        .ok_or_else(|| RemoteError::BadWildcard {
            text: text.to_owned(),
        })?;
    // `*.lan` is a fair wildcard: one label is enough below the star.
    let domain = parse_host_name(text, domain, false)?;
    Ok(RemoteMatcher::Name(format!("*.{domain}")))
}

/// `name` (part of the remote `text`) checked and made canonical (lowercase, no trailing dot).
fn parse_host_name(text: &str, name: &str, need_two_labels: bool) -> Result<String, RemoteError> {
    let bad = |problem| RemoteError::BadName {
        text: text.to_owned(),
        problem,
    };
    let name = host_name(name.as_bytes()).ok_or_else(|| {
        bad(
            "use labels of 1 to 63 letters, digits, '-' or '_' separated by single dots, 253 \
             characters at most (like pool.example.org)",
        )
    })?;
    if need_two_labels && !name.contains('.') {
        return Err(bad(
            "a single word names no remote: write the full name (like pool.example.org), or \"*\" \
             for any remote",
        ));
    }
    let last_label = name.rsplit('.').next().unwrap_or_default();
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "its last label is a number, which no host name has: a mistyped IP address?",
        ));
    }
    Ok(name)
}

impl FromStr for RemoteMatcher {
    type Err = RemoteError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for RemoteMatcher {
    /// The form [`RemoteMatcher::parse`] reads: `*`, `10.0.0.2`, `10.0.0.0/24`,
    /// `pool.example.org` or `*.example.org`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Address(address) => write!(f, "{address}"),
            Self::Network { base, prefix } => write!(f, "{base}/{prefix}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4; others unchanged.
fn canonical_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// A network within the IPv4-mapped range (`::ffff:10.0.0.0/120`) as the IPv4 network.
fn canonical_network(base: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match base {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (base, prefix),
        },
        _ => (base, prefix),
    }
}

/// The address with the bits beyond `prefix` cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let shift = 32u32.saturating_sub(u32::from(prefix));
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let shift = 128u32.saturating_sub(u32::from(prefix));
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// The IP protocol number of a protocol as a rule writes it: `tcp`, `udp`, `icmp`, `icmpv6`,
/// `sctp` (in any case) or a number `0`..=`255`.
pub fn protocol_number(text: &str) -> Option<u8> {
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
fn printable(text: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Reading

/// Parses and validates a baseline. `origin` (usually the path) names the text in errors.
pub fn parse(text: &str, origin: &str) -> Result<Baseline, BaselineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_version(text, origin)?;
    let baseline: Baseline = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    validate(&baseline).map_err(|invalid| invalid.into_error(&baseline, origin, Some(text)))?;
    Ok(baseline)
}

/// Reads the text of a baseline file: at most [`MAX_FILE_BYTES`], UTF-8.
pub fn read_text(path: &Path) -> Result<String, BaselineError> {
    let origin = path.display().to_string();
    fsutil::read_text(path, MAX_FILE_BYTES).map_err(|error| match error {
        ReadError::Io(error) => BaselineError::Read { origin, error },
        ReadError::TooLarge { size, limit } => BaselineError::TooLarge {
            origin,
            size,
            limit,
        },
        ReadError::NotUtf8 { line, offset } => BaselineError::NotUtf8 {
            origin,
            line,
            offset,
        },
    })
}

/// Reads, parses and validates a baseline file.
pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
    let text = read_text(path)?;
    parse(&text, &path.display().to_string())
}

/// Only `format_version`, read before the rest so that a file from a newer BitSecure gives a
/// version message, not complaints about keys this one does not know.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: Option<Spanned<toml::Value>>,
}

fn check_version(text: &str, origin: &str) -> Result<(), BaselineError> {
    let probe: VersionProbe = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    let Some(version) = probe.format_version else {
        return Err(BaselineError::Version {
            origin: origin.to_owned(),
            line: None,
            problem: format!(
                "`format_version` is missing: a baseline file starts with `format_version = \
                 {FORMAT_VERSION}`"
            ),
        });
    };
    let line = Some(line_column(text, version.span().start).0);
    match version.get_ref() {
        toml::Value::Integer(number) => check_version_number(*number, origin, line),
        other => Err(BaselineError::Version {
            origin: origin.to_owned(),
            line,
            problem: format!(
                "`format_version` must be a whole number like {FORMAT_VERSION}, not {} {}",
                article(other.type_str()),
                other.type_str()
            ),
        }),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn check_version_number(
    number: i64,
    origin: &str,
    line: Option<usize>,
) -> Result<(), BaselineError> {
    if number > i64::from(FORMAT_VERSION) {
        Err(BaselineError::NewerFormat {
            origin: origin.to_owned(),
            found: number,
            supported: FORMAT_VERSION,
        })
    } else if number < 1 {
        Err(BaselineError::Version {
            origin: origin.to_owned(),
            line,
            problem: format!(
                "`format_version = {number}` is not a format version: versions start at 1 \
                 (this BitSecure writes {FORMAT_VERSION})"
            ),
        })
    } else {
        Ok(())
    }
}

fn toml_error(text: &str, origin: &str, error: &toml::de::Error) -> BaselineError {
    match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            BaselineError::Toml {
                origin: origin.to_owned(),
                line: Some(line),
                column: Some(column),
                message: error.message().trim_end().to_owned(),
            }
        }
        // Without a span, the full text is the best there is (it names the line if known).
        None => BaselineError::Toml {
            origin: origin.to_owned(),
            line: None,
            column: None,
            message: error.to_string().trim_end().to_owned(),
        },
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// Validation

/// A semantic problem, located by a dotted path from the root (`rule.2.normal.p95`, with
/// 0-based rule positions) so the line can be found in the text.
struct Invalid {
    path: String,
    kind: InvalidKind,
}

enum InvalidKind {
    Recording(String),
    Rule { index: usize, problem: String },
    Duplicate { index: usize, first: usize },
}

/// A problem with one field of a rule, by its dotted path within the rule.
struct FieldProblem {
    field: String,
    problem: String,
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        problem: problem.into(),
    }
}

impl Invalid {
    fn into_error(self, baseline: &Baseline, origin: &str, text: Option<&str>) -> BaselineError {
        let line = text
            .and_then(|text| locate(text, &self.path).map(|offset| line_column(text, offset).0));
        let describe = |index: usize| {
            baseline
                .rules
                .get(index)
                .map_or_else(String::new, Rule::describe)
        };
        let origin = origin.to_owned();
        match self.kind {
            InvalidKind::Recording(problem) => BaselineError::Recording {
                origin,
                line,
                problem,
            },
            InvalidKind::Rule { index, problem } => BaselineError::Rule {
                origin,
                line,
                index: index + 1,
                rule: describe(index),
                problem,
            },
            InvalidKind::Duplicate { index, first } => BaselineError::DuplicateRule {
                origin,
                line,
                index: index + 1,
                first: first + 1,
                rule: describe(index),
            },
        }
    }
}

fn validate(baseline: &Baseline) -> Result<(), Invalid> {
    if let Some(recording) = &baseline.recording {
        validate_recording(recording).map_err(|p| Invalid {
            path: format!("recording.{}", p.field),
            kind: InvalidKind::Recording(p.problem),
        })?;
    }
    let mut seen = HashMap::new();
    for (index, rule) in baseline.rules.iter().enumerate() {
        validate_rule(rule).map_err(|p| Invalid {
            path: format!("rule.{index}.{}", p.field),
            kind: InvalidKind::Rule {
                index,
                problem: p.problem,
            },
        })?;
        if let Some(&first) = seen.get(&rule.identity()) {
            return Err(Invalid {
                path: format!("rule.{index}"),
                kind: InvalidKind::Duplicate { index, first },
            });
        }
        seen.insert(rule.identity(), index);
    }
    Ok(())
}

fn validate_recording(recording: &Recording) -> Result<(), FieldProblem> {
    if !is_rfc3339_utc(&recording.started_at) {
        return Err(problem(
            "started_at",
            format!(
                "started_at {:?} is not an RFC 3339 time in UTC like \"2026-11-24T12:00:00Z\"",
                printable(&recording.started_at)
            ),
        ));
    }
    non_negative("duration_seconds", recording.duration_seconds)?;
    positive("step_seconds", recording.step_seconds)
}

fn validate_rule(rule: &Rule) -> Result<(), FieldProblem> {
    if rule.process.trim().is_empty() {
        return Err(problem(
            "process",
            "`process` is empty: name the process (as in /proc/PID/comm)",
        ));
    }
    if let Some(exe) = &rule.exe
        && !exe.starts_with('/')
    {
        return Err(problem(
            "exe",
            format!(
                "exe {:?} is not an absolute path like \"/usr/bin/xmrig\" (leave it out if unknown)",
                printable(exe)
            ),
        ));
    }
    rule.remote_matcher()
        .map_err(|e| problem("remote", e.to_string()))?;
    if rule.port == Some(0) {
        return Err(problem(
            "port",
            "port 0 is not a port: leave `port` out to match any port",
        ));
    }
    if protocol_number(&rule.protocol).is_none() {
        return Err(problem(
            "protocol",
            format!(
                "unknown protocol {:?}: use tcp, udp, icmp, icmpv6, sctp or an IP protocol \
                 number from 0 to 255",
                printable(&rule.protocol)
            ),
        ));
    }
    if let Some(app) = &rule.app
        && App::parse(app).is_none()
    {
        let known: Vec<&str> = App::ALL.iter().map(|app| app.as_str()).collect();
        return Err(problem(
            "app",
            format!(
                "unknown app {:?}: use one of {} (or leave `app` out to match any application)",
                printable(app),
                known.join(", ")
            ),
        ));
    }
    if let Some(normal) = &rule.normal {
        validate_normal(normal)?;
    }
    if let Some(profile) = &rule.profile {
        validate_profile(profile)?;
    }
    Ok(())
}

fn validate_normal(normal: &Normal) -> Result<(), FieldProblem> {
    for (name, stats) in [
        ("sent_bytes_per_second", &normal.sent_bytes_per_second),
        (
            "received_bytes_per_second",
            &normal.received_bytes_per_second,
        ),
    ] {
        for (stat, value) in [("mean", stats.mean), ("p95", stats.p95), ("max", stats.max)] {
            non_negative(&format!("normal.{name}.{stat}"), value)?;
        }
    }
    let fraction = normal.active_fraction;
    if !(0.0..=1.0).contains(&fraction) {
        return Err(problem(
            "normal.active_fraction",
            format!(
                "normal.active_fraction is {}: it is a share of the time, from 0 to 1",
                number_text(fraction)
            ),
        ));
    }
    non_negative("normal.connections_per_hour", normal.connections_per_hour)?;
    if let Some(cadence) = normal.cadence_seconds {
        positive("normal.cadence_seconds", cadence)?;
    }
    Ok(())
}

fn validate_profile(profile: &Profile) -> Result<(), FieldProblem> {
    positive("profile.step_seconds", profile.step_seconds)?;
    let (sent, received) = (profile.sent.len(), profile.received.len());
    if sent != received {
        return Err(problem(
            "profile.received",
            format!(
                "the profile has {sent} `sent` bins but {received} `received` bins: both cover \
                 the same cycle, so they must have as many"
            ),
        ));
    }
    if sent == 0 {
        return Err(problem(
            "profile",
            "the profile has no bins: leave [rule.profile] out instead",
        ));
    }
    for (name, values) in [("sent", &profile.sent), ("received", &profile.received)] {
        for (bin, value) in values.iter().enumerate() {
            non_negative(&format!("profile.{name}.{bin}"), *value).map_err(|_| {
                problem(
                    format!("profile.{name}.{bin}"),
                    format!(
                        "profile.{name}[{bin}] is {}: a rate must be a number ≥ 0",
                        number_text(*value)
                    ),
                )
            })?;
        }
    }
    Ok(())
}

fn non_negative(field: &str, value: f64) -> Result<(), FieldProblem> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(problem(
            field,
            format!("{field} is {}: it must be a number ≥ 0", number_text(value)),
        ))
    }
}

fn positive(field: &str, value: f64) -> Result<(), FieldProblem> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(problem(
            field,
            format!("{field} is {}: it must be a number > 0", number_text(value)),
        ))
    }
}

/// A number as TOML writes it (`nan`, `inf`, `-1.5`).
fn number_text(value: f64) -> String {
    toml_float(value)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with a valid date and time.
fn is_rfc3339_utc(text: &str) -> bool {
    let bytes = text.as_bytes();
    let number = |start: usize, len: usize| -> Option<u32> {
        let digits = bytes.get(start..start + len)?;
        digits.iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| bytes.get(i) != Some(&c))
        || !matches!(bytes.get(10), Some(b'T' | b't'))
    {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        number(0, 4),
        number(5, 2),
        number(8, 2),
        number(11, 2),
        number(14, 2),
        number(17, 2),
    ) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let rest = bytes.get(19..).unwrap_or_default();
    let rest = match rest.strip_prefix(b".") {
        Some(fraction) => {
            let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            fraction.get(digits..).unwrap_or_default()
        }
        None => rest,
    };
    matches!(rest, b"Z" | b"z")
}

/// A tree of the spans of a TOML document's values, to find the line of a semantic problem.
#[derive(Default)]
enum SpanTree {
    Table(BTreeMap<String, Spanned<SpanTree>>),
    Array(Vec<Spanned<SpanTree>>),
    #[default]
    Leaf,
}

impl<'de> Deserialize<'de> for SpanTree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SpanTreeVisitor)
    }
}

struct SpanTreeVisitor;

impl<'de> Visitor<'de> for SpanTreeVisitor {
    type Value = SpanTree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<SpanTree, E> {
        Ok(SpanTree::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<SpanTree, E> {
        Ok(SpanTree::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<SpanTree, E> {
        Ok(SpanTree::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<SpanTree, E> {
        Ok(SpanTree::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<SpanTree, E> {
        Ok(SpanTree::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpanTree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(SpanTree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpanTree, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            // A datetime arrives as a map whose value is not spanned: give up on it quietly.
            match map.next_value::<Spanned<SpanTree>>() {
                Ok(value) => {
                    entries.insert(key, value);
                }
                Err(_) => return Ok(SpanTree::Leaf),
            }
        }
        Ok(SpanTree::Table(entries))
    }
}

/// The byte offset of the deepest value found along a dotted path (numbers index arrays).
fn locate(text: &str, path: &str) -> Option<usize> {
    let root: SpanTree = toml::from_str(text).ok()?;
    let mut node = &root;
    let mut found = None;
    for segment in path.split('.') {
        let next = match node {
            SpanTree::Table(entries) => entries.get(segment),
            SpanTree::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            SpanTree::Leaf => None,
        };
        let Some(next) = next else { break };
        found = Some(next.span().start);
        node = next.get_ref();
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Writing

/// A fresh baseline file, with a header comment explaining it (for a new recording). It
/// parses back to an equal baseline when the baseline is valid.
pub fn render(baseline: &Baseline) -> String {
    Rendered(baseline).to_string()
}

struct Rendered<'a>(&'a Baseline);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let baseline = self.0;
        f.write_str(HEADER)?;
        writeln!(f, "format_version = {}", baseline.format_version)?;
        if let Some(recording) = &baseline.recording {
            writeln!(f)?;
            writeln!(f, "[recording]")?;
            writeln!(f, "started_at = {}", toml_string(&recording.started_at))?;
            writeln!(
                f,
                "duration_seconds = {}",
                toml_float(recording.duration_seconds)
            )?;
            writeln!(f, "step_seconds = {}", toml_float(recording.step_seconds))?;
            writeln!(f, "host = {}", toml_string(&recording.host))?;
        }
        for rule in &baseline.rules {
            writeln!(f)?;
            write_rule(f, rule)?;
        }
        Ok(())
    }
}

fn write_rule(f: &mut impl fmt::Write, rule: &Rule) -> fmt::Result {
    writeln!(f, "[[rule]]")?;
    writeln!(f, "process = {}", toml_string(&rule.process))?;
    if let Some(exe) = &rule.exe {
        writeln!(f, "exe = {}", toml_string(exe))?;
    }
    writeln!(f, "remote = {}", toml_string(&rule.remote))?;
    if let Some(port) = rule.port {
        writeln!(f, "port = {port}")?;
    }
    writeln!(f, "protocol = {}", toml_string(&rule.protocol))?;
    if let Some(app) = &rule.app {
        writeln!(f, "app = {}", toml_string(app))?;
    }
    if let Some(note) = &rule.note {
        writeln!(f, "note = {}", toml_string(note))?;
    }
    if let Some(normal) = &rule.normal {
        writeln!(f, "  [rule.normal]")?;
        for (name, stats) in [
            ("sent_bytes_per_second", &normal.sent_bytes_per_second),
            (
                "received_bytes_per_second",
                &normal.received_bytes_per_second,
            ),
        ] {
            writeln!(
                f,
                "  {name} = {{ mean = {}, p95 = {}, max = {} }}",
                toml_float(stats.mean),
                toml_float(stats.p95),
                toml_float(stats.max)
            )?;
        }
        writeln!(
            f,
            "  active_fraction = {}",
            toml_float(normal.active_fraction)
        )?;
        writeln!(
            f,
            "  connections_per_hour = {}",
            toml_float(normal.connections_per_hour)
        )?;
        if let Some(cadence) = normal.cadence_seconds {
            writeln!(f, "  cadence_seconds = {}", toml_float(cadence))?;
        }
    }
    if let Some(profile) = &rule.profile {
        writeln!(f, "  [rule.profile]")?;
        writeln!(f, "  step_seconds = {}", toml_float(profile.step_seconds))?;
        write_float_array(f, "sent", &profile.sent)?;
        write_float_array(f, "received", &profile.received)?;
    }
    Ok(())
}

/// Values per line of a long array.
const ARRAY_VALUES_PER_LINE: usize = 8;

fn write_float_array(f: &mut impl fmt::Write, name: &str, values: &[f64]) -> fmt::Result {
    let texts: Vec<String> = values.iter().map(|v| toml_float(*v)).collect();
    if texts.len() <= ARRAY_VALUES_PER_LINE {
        return writeln!(f, "  {name} = [{}]", texts.join(", "));
    }
    writeln!(f, "  {name} = [")?;
    for line in texts.chunks(ARRAY_VALUES_PER_LINE) {
        writeln!(f, "    {},", line.join(", "))?;
    }
    writeln!(f, "  ]")
}

/// A TOML basic string: always one line, control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML float that reads back to the same `f64` (`1800.0`, `0.1`, `1e300`, `nan`).
fn toml_float(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else {
        // Debug is the shortest text that reads back exactly, always with a '.' or an
        // exponent, which TOML reads as a float.
        format!("{value:?}")
    }
}

/// Appends rules to an existing file's text, keeping everything already there byte for byte
/// (comments and layout included); the new rules go at the end. Returns an error, and no
/// text, when the existing text is not a valid baseline, when a new rule is invalid, when a new
/// rule has the identity of a rule already there (or of an earlier new one: use
/// [`Baseline::position_of`] to filter first), and when the result would not parse back.
pub fn append_rules(
    existing_text: &str,
    origin: &str,
    rules: &[Rule],
) -> Result<String, BaselineError> {
    let existing = parse(existing_text, origin)?;
    let mut identities: HashMap<RuleIdentity, usize> = existing
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (rule.identity(), i + 1))
        .collect();
    for (offset, rule) in rules.iter().enumerate() {
        let index = existing.rules.len() + offset + 1;
        validate_rule(rule).map_err(|p| BaselineError::Rule {
            origin: origin.to_owned(),
            line: None,
            index,
            rule: rule.describe(),
            problem: p.problem,
        })?;
        if let Some(&existing) = identities.get(&rule.identity()) {
            return Err(BaselineError::AlreadyPresent {
                origin: origin.to_owned(),
                rule: rule.describe(),
                existing,
            });
        }
        identities.insert(rule.identity(), index);
    }
    if rules.is_empty() {
        return Ok(existing_text.to_owned());
    }

    let (bom, body) = match existing_text.strip_prefix('\u{feff}') {
        Some(body) => ("\u{feff}", body),
        None => ("", existing_text),
    };
    let edit_error = |problem: String| BaselineError::Edit {
        origin: origin.to_owned(),
        problem,
    };
    let mut document: toml_edit::DocumentMut = body
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(e.to_string()))?;
    let mut fresh_text = String::new();
    for rule in rules {
        write_rule(&mut fresh_text, rule).map_err(|e| edit_error(e.to_string()))?;
        fresh_text.push('\n');
    }
    let fresh: toml_edit::DocumentMut = fresh_text
        .parse()
        .map_err(|e: toml_edit::TomlError| edit_error(format!("rendered rules: {e}")))?;
    let new_tables: Vec<toml_edit::Table> = fresh
        .get("rule")
        .and_then(toml_edit::Item::as_array_of_tables)
        .map(|tables| tables.iter().cloned().collect())
        .unwrap_or_default();

    // New tables go after every existing one, and after the comments at the end of the file,
    // so the existing text is an exact prefix of the result.
    let mut next_position = last_position(document.as_table()).saturating_add(1);
    let trailing = document.trailing().as_str().unwrap_or_default().to_owned();
    let separator = if trailing.is_empty() || trailing == "\n" || trailing.ends_with("\n\n") {
        ""
    } else if trailing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let first_prefix = if trailing.is_empty() {
        "\n".to_owned()
    } else {
        format!("{trailing}{separator}")
    };
    document.set_trailing("");
    let item = document
        .entry("rule")
        .or_insert(toml_edit::Item::ArrayOfTables(
            toml_edit::ArrayOfTables::new(),
        ));
    let Some(target) = item.as_array_of_tables_mut() else {
        return Err(edit_error(
            "its rules are not written as [[rule]] tables (e.g. `rule = [...]`): rewrite them \
             as [[rule]] tables first"
                .to_owned(),
        ));
    };
    for (i, mut table) in new_tables.into_iter().enumerate() {
        table
            .decor_mut()
            .set_prefix(if i == 0 { first_prefix.as_str() } else { "\n" });
        set_positions(&mut table, &mut next_position);
        target.push(table);
    }
    let result = format!("{bom}{document}");
    parse(&result, origin).map_err(|error| BaselineError::EditInvalid {
        origin: origin.to_owned(),
        error: Box::new(error),
    })?;
    Ok(result)
}

/// The highest document position of any table in `table`.
fn last_position(table: &toml_edit::Table) -> isize {
    let mut last = table.position().unwrap_or(0);
    for (_, item) in table.iter() {
        match item {
            toml_edit::Item::Table(child) => last = last.max(last_position(child)),
            toml_edit::Item::ArrayOfTables(tables) => {
                for child in tables.iter() {
                    last = last.max(last_position(child));
                }
            }
            _ => {}
        }
    }
    last
}

fn set_positions(table: &mut toml_edit::Table, next: &mut isize) {
    table.set_position(*next);
    *next = next.saturating_add(1);
    for (_, item) in table.iter_mut() {
        if let toml_edit::Item::Table(child) = item {
            set_positions(child, next);
        }
    }
}

/// Replaces `path` with `text` atomically, keeping the previous version as `<path>.bak`
/// ([`fsutil::write_atomically`]); on error the previous file is intact.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BaselineError> {
    fsutil::write_atomically(path, text.as_bytes(), Backup::Keep).map_err(|error| {
        BaselineError::Write {
            path: path.to_path_buf(),
            action: error.action,
            error: error.source,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Showing and comparing

/// A human-readable listing of a baseline, for `bitsecure baseline show`.
pub fn show(baseline: &Baseline) -> String {
    Shown(baseline).to_string()
}

struct Shown<'a>(&'a Baseline);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let baseline = self.0;
        writeln!(f, "BitSecure baseline, format {}", baseline.format_version)?;
        match &baseline.recording {
            Some(recording) => writeln!(f, "{}", describe_recording(recording))?,
            None => writeln!(f, "Not recorded: written by hand")?,
        }
        match baseline.rules.len() {
            0 => return writeln!(f, "No rules"),
            1 => writeln!(f, "1 rule:")?,
            n => writeln!(f, "{n} rules:")?,
        }
        let width = baseline.rules.len().to_string().len();
        for (i, rule) in baseline.rules.iter().enumerate() {
            write!(f, "  {:>width$}. {}", i + 1, rule.describe())?;
            match &rule.note {
                Some(note) => writeln!(f, " ({})", printable(note))?,
                None => writeln!(f)?,
            }
            let indent = " ".repeat(width + 4);
            if let Some(exe) = &rule.exe {
                writeln!(f, "{indent}exe {}", printable(exe))?;
            }
            let Some(normal) = &rule.normal else {
                writeln!(f, "{indent}accepted by hand: no recorded normal")?;
                continue;
            };
            writeln!(
                f,
                "{indent}sent:     {}",
                describe_rate_stats(&normal.sent_bytes_per_second)
            )?;
            writeln!(
                f,
                "{indent}received: {}",
                describe_rate_stats(&normal.received_bytes_per_second)
            )?;
            write!(
                f,
                "{indent}active {}% of the time, {} connections per hour",
                human::decimal(normal.active_fraction * 100.0),
                human::decimal(normal.connections_per_hour)
            )?;
            match normal.cadence_seconds {
                Some(cadence) => writeln!(f, ", periodic every {}", human::duration(cadence))?,
                None => writeln!(f)?,
            }
            if let Some(profile) = &rule.profile {
                writeln!(
                    f,
                    "{indent}profile: {} bins of {} (a {} cycle)",
                    profile.sent.len(),
                    human::duration(profile.step_seconds),
                    human::duration(profile.step_seconds * profile.sent.len() as f64)
                )?;
            }
        }
        Ok(())
    }
}

fn describe_recording(recording: &Recording) -> String {
    format!(
        "Recorded on {} from {} for {}, one sample every {}",
        printable(&recording.host),
        printable(&recording.started_at),
        human::duration(recording.duration_seconds),
        human::duration(recording.step_seconds)
    )
}

fn describe_rate_stats(stats: &RateStats) -> String {
    format!(
        "mean {}, p95 {}, max {}",
        human::rate(stats.mean),
        human::rate(stats.p95),
        human::rate(stats.max)
    )
}

/// The differences between two baselines, for `bitsecure baseline diff`: rules added, removed,
/// and changed (matched by identity, see [`RuleIdentity`]) where a normal value moved by more
/// than [`DIFF_RELATIVE_THRESHOLD`] or a descriptive field changed.
pub fn diff(old: &Baseline, new: &Baseline) -> String {
    diff_with_threshold(old, new, DIFF_RELATIVE_THRESHOLD)
}

/// [`diff`] with another relative threshold (0.1 = report normal values that moved by more
/// than 10 %).
pub fn diff_with_threshold(old: &Baseline, new: &Baseline, threshold: f64) -> String {
    let mut lines = Vec::new();
    if old.format_version != new.format_version {
        lines.push(format!(
            "format: {} → {}",
            old.format_version, new.format_version
        ));
    }
    if old.recording != new.recording {
        let text = |recording: &Option<Recording>| match recording {
            Some(recording) => describe_recording(recording),
            None => "not recorded".to_owned(),
        };
        lines.push(format!("recording: {}", text(&old.recording)));
        lines.push(format!("        now {}", text(&new.recording)));
    }
    let old_rules: HashMap<RuleIdentity, &Rule> = old
        .rules
        .iter()
        .rev() // the first of duplicates wins
        .map(|rule| (rule.identity(), rule))
        .collect();
    let new_rules: HashMap<RuleIdentity, &Rule> = new
        .rules
        .iter()
        .rev()
        .map(|rule| (rule.identity(), rule))
        .collect();
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for rule in &old.rules {
        if !new_rules.contains_key(&rule.identity()) {
            removed += 1;
            lines.push(format!("- removed {}", rule.describe()));
        }
    }
    for rule in &new.rules {
        match old_rules.get(&rule.identity()) {
            None => {
                added += 1;
                lines.push(format!("+ added   {}", rule.describe()));
            }
            Some(before) => {
                let changes = rule_changes(before, rule, threshold);
                if !changes.is_empty() {
                    changed += 1;
                    lines.push(format!("~ changed {}", rule.describe()));
                    lines.extend(changes.into_iter().map(|change| format!("    {change}")));
                }
            }
        }
    }
    let percent = human::decimal(threshold * 100.0);
    let mut out = if lines.is_empty() {
        format!("No differences (normal values compared with a {percent}% threshold)\n")
    } else {
        format!(
            "{added} added, {removed} removed, {changed} changed (normal values compared with a \
             {percent}% threshold)\n"
        )
    };
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What changed between two versions of a rule, one line each.
fn rule_changes(old: &Rule, new: &Rule, threshold: f64) -> Vec<String> {
    let mut changes = Vec::new();
    let text = |value: &Option<String>| match value {
        Some(value) => format!("{:?}", printable(value)),
        None => "none".to_owned(),
    };
    if old.exe != new.exe {
        changes.push(format!("exe: {} → {}", text(&old.exe), text(&new.exe)));
    }
    if old.note != new.note {
        changes.push(format!("note: {} → {}", text(&old.note), text(&new.note)));
    }
    match (&old.normal, &new.normal) {
        (Some(before), Some(after)) => normal_changes(before, after, threshold, &mut changes),
        (None, Some(_)) => changes.push("normal: accepted by hand → recorded".to_owned()),
        (Some(_), None) => changes.push("normal: recorded → accepted by hand".to_owned()),
        (None, None) => {}
    }
    match (&old.profile, &new.profile) {
        (Some(before), Some(after)) => {
            if before.sent.len() != after.sent.len() || before.step_seconds != after.step_seconds {
                changes.push(format!(
                    "profile: {} bins of {} → {} bins of {}",
                    before.sent.len(),
                    human::duration(before.step_seconds),
                    after.sent.len(),
                    human::duration(after.step_seconds)
                ));
            } else {
                for (name, b, a) in [
                    ("sent", &before.sent, &after.sent),
                    ("received", &before.received, &after.received),
                ] {
                    compare(
                        &format!("profile {name} mean"),
                        mean(b),
                        mean(a),
                        threshold,
                        human::rate,
                        &mut changes,
                    );
                }
            }
        }
        (None, Some(_)) => changes.push("profile: none → present".to_owned()),
        (Some(_), None) => changes.push("profile: present → none".to_owned()),
        (None, None) => {}
    }
    changes
}

fn normal_changes(old: &Normal, new: &Normal, threshold: f64, changes: &mut Vec<String>) {
    for (direction, before, after) in [
        (
            "sent",
            &old.sent_bytes_per_second,
            &new.sent_bytes_per_second,
        ),
        (
            "received",
            &old.received_bytes_per_second,
            &new.received_bytes_per_second,
        ),
    ] {
        for (stat, b, a) in [
            ("mean", before.mean, after.mean),
            ("p95", before.p95, after.p95),
            ("max", before.max, after.max),
        ] {
            compare(
                &format!("{direction} {stat}"),
                b,
                a,
                threshold,
                human::rate,
                changes,
            );
        }
    }
    compare(
        "active",
        old.active_fraction,
        new.active_fraction,
        threshold,
        |fraction| format!("{}%", human::decimal(fraction * 100.0)),
        changes,
    );
    compare(
        "connections per hour",
        old.connections_per_hour,
        new.connections_per_hour,
        threshold,
        human::decimal,
        changes,
    );
    match (old.cadence_seconds, new.cadence_seconds) {
        (Some(before), Some(after)) => {
            compare(
                "cadence",
                before,
                after,
                threshold,
                human::duration,
                changes,
            );
        }
        (None, Some(after)) => changes.push(format!(
            "cadence: not periodic → every {}",
            human::duration(after)
        )),
        (Some(before), None) => changes.push(format!(
            "cadence: every {} → not periodic",
            human::duration(before)
        )),
        (None, None) => {}
    }
}

/// Records `label: old → new (+N%)` when the value moved by more than `threshold` relative to
/// the old value (any move away from zero counts).
fn compare(
    label: &str,
    old: f64,
    new: f64,
    threshold: f64,
    format: impl Fn(f64) -> String,
    changes: &mut Vec<String>,
) {
    let moved = new - old;
    let beyond = if old == 0.0 {
        new != 0.0
    } else {
        moved.abs() > threshold * old.abs()
    };
    if !beyond {
        return;
    }
    let relative = if old == 0.0 {
        "from zero".to_owned()
    } else {
        format!("{:+.0}%", moved / old.abs() * 100.0)
    };
    changes.push(format!(
        "{label}: {} → {} ({relative})",
        format(old),
        format(new)
    ));
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        fs::{self, File, Permissions},
        os::unix::fs::{PermissionsExt as _, symlink},
        sync::atomic::{AtomicU64, Ordering},
        time::{SystemTime, UNIX_EPOCH},
    };

    use super::*;

    /// A fresh directory under the system temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path = std::env::temp_dir().join(format!(
                "bitsecure-baseline-file-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&path).expect("create the temporary directory");
            Self(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// The names in the directory, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("list the temporary directory")
                .map(|entry| {
                    entry
                        .expect("directory entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::set_permissions(&self.0, Permissions::from_mode(0o755));
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn stats(mean: f64, p95: f64, max: f64) -> RateStats {
        RateStats { mean, p95, max }
    }

    fn xmrig_rule() -> Rule {
        Rule {
            process: "xmrig".to_owned(),
            exe: Some("/usr/bin/xmrig".to_owned()),
            remote: "10.0.0.2".to_owned(),
            port: Some(3333),
            protocol: "tcp".to_owned(),
            app: None,
            note: Some("pool".to_owned()),
            normal: Some(Normal {
                sent_bytes_per_second: stats(120.5, 800.0, 2400.0),
                received_bytes_per_second: stats(10.0, 80.0, 240.0),
                active_fraction: 0.12,
                connections_per_hour: 2.0,
                cadence_seconds: Some(300.0),
            }),
            profile: Some(Profile {
                step_seconds: 5.0,
                sent: (0..60)
                    .map(|i| if i % 12 == 1 { 1500.0 } else { 0.0 })
                    .collect(),
                received: (0..60).map(|i| f64::from(i) * 0.5).collect(),
            }),
        }
    }

    fn chronyd_rule() -> Rule {
        Rule {
            exe: Some("/usr/sbin/chronyd".to_owned()),
            normal: Some(Normal {
                sent_bytes_per_second: stats(0.1 + 0.2, 1e-7, 1e300),
                received_bytes_per_second: stats(0.0, 0.0, 0.0),
                active_fraction: 1.0,
                connections_per_hour: 0.0,
                cadence_seconds: None,
            }),
            ..Rule::new("chronyd", "fd00::/64", None, "udp")
        }
    }

    fn sample() -> Baseline {
        Baseline::new(
            Some(Recording {
                started_at: "2026-11-24T12:00:00Z".to_owned(),
                duration_seconds: 1800.0,
                step_seconds: 5.0,
                host: "rig-01".to_owned(),
            }),
            vec![
                xmrig_rule(),
                chronyd_rule(),
                Rule {
                    note: Some("admin \"ops\" \\ ünïcode\nsecond line\t\u{1}".to_owned()),
                    ..Rule::new("sshd", "*", Some(22), "tcp")
                },
                Rule::new("ping", "10.0.0.0/8", None, "icmp"),
            ],
        )
    }

    fn parse_error(text: &str) -> BaselineError {
        match parse(text, "test.toml") {
            Ok(baseline) => panic!("expected an error, parsed {baseline:?}"),
            Err(error) => error,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    /// Traffic of `process` to an address without a known name or application; the protocol by
    /// name or number.
    fn live<'a>(process: &'a str, remote: &str, port: Option<u16>, protocol: &str) -> LiveFlow<'a> {
        LiveFlow {
            process,
            remote: ip(remote),
            name: None,
            port,
            protocol: protocol_number(protocol).expect("a known protocol"),
            app: App::Unknown,
        }
    }

    /// A minimal valid file with one rule whose lines are given (after line 3, `[[rule]]`).
    fn with_rule(rule_lines: &str) -> String {
        format!("format_version = 1\n\n[[rule]]\n{rule_lines}")
    }

    // -----------------------------------------------------------------------------------------
    // Reading and rendering

    #[test]
    fn render_then_parse_gives_the_same_baseline() {
        let baseline = sample();
        let text = render(&baseline);
        assert!(text.starts_with("# BitSecure baseline: what normal traffic looks like"));
        assert_eq!(text.matches("\n[[rule]]\n").count(), 4);
        assert!(
            text.contains(
                "  sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }\n"
            )
        );
        assert!(text.contains("remote = \"fd00::/64\"\n"));
        assert!(
            text.contains("note = \"admin \\\"ops\\\" \\\\ ünïcode\\nsecond line\\t\\u0001\"\n")
        );
        // A 60-bin profile is wrapped, 8 values a line.
        assert!(text.contains("  sent = [\n    0.0, 1500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,\n"));
        assert_eq!(parse(&text, "rendered").expect("parses"), baseline);

        // And through a real file.
        let dir = TempDir::new("roundtrip");
        let path = dir.join("baseline.toml");
        write_atomically(&path, &text).expect("write");
        assert_eq!(load(&path).expect("load"), baseline);
    }

    #[test]
    fn render_of_an_empty_baseline_parses() {
        let baseline = Baseline::new(None, Vec::new());
        let text = render(&baseline);
        assert!(text.ends_with("format_version = 1\n"));
        assert_eq!(parse(&text, "empty").expect("parses"), baseline);
    }

    const HAND_WRITTEN: &str = r#"# BitSecure baseline for rig-01, edited by hand.
format_version = 1   # the format

[recording]
started_at = "2026-11-24T12:00:00.250Z"
duration_seconds = 1800        # an integer is fine for a float
step_seconds = 5.0
host = "rig-01"

# The mining pool.
[[rule]]
process = "xmrig"
exe = "/usr/bin/xmrig"
remote = "10.0.0.0/24"
port = 3333
protocol = "tcp"
note = "pool"
  [rule.normal]
  sent_bytes_per_second = { mean = 120.5, p95 = 800.0, max = 2400.0 }
  received_bytes_per_second = { mean = 10.0, p95 = 80.0, max = 240.0 }
  active_fraction = 0.12
  connections_per_hour = 2.0
  cadence_seconds = 300.0
  [rule.profile]
  step_seconds = 100.0
  sent = [0.0, 1500.0,
          0.0]               # three bins
  received = [0.0, 200.0, 0.0]

[[rule]]
process = "sshd"
remote = "*"
port = 22
protocol = "6"     # tcp by number
"#;

    #[test]
    fn parses_a_hand_written_file_with_comments() {
        let baseline = parse(HAND_WRITTEN, "hand.toml").expect("parses");
        assert_eq!(baseline.format_version, 1);
        let recording = baseline.recording.as_ref().expect("a recording");
        assert_eq!(recording.started_at, "2026-11-24T12:00:00.250Z");
        assert_eq!(recording.duration_seconds, 1800.0);
        assert_eq!(recording.host, "rig-01");
        assert_eq!(baseline.rules.len(), 2);
        let pool = &baseline.rules[0];
        assert_eq!(pool.remote, "10.0.0.0/24");
        assert_eq!(pool.port, Some(3333));
        assert_eq!(pool.exe.as_deref(), Some("/usr/bin/xmrig"));
        let normal = pool.normal.as_ref().expect("normal values");
        assert_eq!(normal.sent_bytes_per_second, stats(120.5, 800.0, 2400.0));
        assert_eq!(normal.cadence_seconds, Some(300.0));
        let profile = pool.profile.as_ref().expect("a profile");
        assert_eq!(profile.sent, [0.0, 1500.0, 0.0]);
        assert_eq!(profile.received, [0.0, 200.0, 0.0]);
        let sshd = &baseline.rules[1];
        assert_eq!(sshd, &Rule::new("sshd", "*", Some(22), "6"));
        assert_eq!(sshd.normal, None);
        assert_eq!(sshd.describe(), "sshd → *:22/6");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let text = format!("\u{feff}{HAND_WRITTEN}");
        assert_eq!(parse(&text, "bom.toml").expect("parses").rules.len(), 2);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = with_rule(
            "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\ncolour = \"red\"\n",
        );
        let error = parse_error(&text);
        assert!(
            matches!(&error, BaselineError::Toml { line: Some(7), column: Some(1), message, .. }
                if message.contains("unknown field `colour`")),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml, line 7, column 1: unknown field `colour`"),
            "{message}"
        );

        // In a nested table too.
        let text = with_rule(
            "process = \"x\"\nremote = \"*\"\nprotocol = \"tcp\"\n[rule.normal]\n\
             sent_bytes_per_second = { mean = 1.0, p95 = 1.0, max = 1.0, median = 1.0 }\n",
        );
        let message = parse_error(&text).to_string();
        assert!(message.contains("line 8"), "{message}");
        assert!(message.contains("unknown field `median`"), "{message}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line() {
        let text =
            with_rule("process = \"xmrig\"\nremote = \"*\"\nport = \"3333\"\nprotocol = \"tcp\"\n");
        let error = parse_error(&text);
        assert!(
            matches!(error, BaselineError::Toml { line: Some(6), .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml, line 6, column 8: invalid type"),
            "{message}"
        );

        // A port out of range is a type error too.
        let text =
            with_rule("process = \"xmrig\"\nremote = \"*\"\nport = 70000\nprotocol = \"tcp\"\n");
        assert!(matches!(
            parse_error(&text),
            BaselineError::Toml { line: Some(6), .. }
        ));

        // A missing key names the table it is missing from.
        let text = with_rule("process = \"xmrig\"\nprotocol = \"tcp\"\n");
        let message = parse_error(&text).to_string();
        assert!(
            message.contains("line 3") && message.contains("missing field `remote`"),
            "{message}"
        );
    }

    #[test]
    fn corrupt_toml_is_named_with_its_line() {
        let error = parse_error("format_version = 1\n\n[[rule]\nprocess = \"x\"\n");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(3), .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("test.toml, line 3"),
            "{error}"
        );

        let error = parse_error("format_version = 1\nhost = \"unterminated\n");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(2), .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_newer_format_says_so_before_anything_else() {
        let text = "format_version = 2\n\n[future]\nthing = 1\n\n[[rule]]\nshape = \"new\"\n";
        let error = parse_error(text);
        assert!(
            matches!(
                error,
                BaselineError::NewerFormat {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "test.toml: written by a newer BitSecure (format 2, this one reads up to 1): \
             upgrade BitSecure to use this baseline"
        );
    }

    #[test]
    fn a_missing_or_invalid_version_is_an_error() {
        let error = parse_error("[[rule]]\nprocess = \"x\"\nremote = \"*\"\nprotocol = \"tcp\"\n");
        assert!(
            matches!(error, BaselineError::Version { line: None, .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("`format_version` is missing"),
            "{error}"
        );

        let error = parse_error("# comment\nformat_version = 0\n");
        assert!(
            matches!(error, BaselineError::Version { line: Some(2), .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("format_version = 0"), "{error}");

        let error = parse_error("format_version = -3\n");
        assert!(matches!(error, BaselineError::Version { .. }), "{error:?}");

        let error = parse_error("format_version = \"1\"\n");
        assert!(
            error
                .to_string()
                .contains("must be a whole number like 1, not a string"),
            "{error}"
        );
    }

    #[test]
    fn an_invalid_remote_names_the_rule_and_line() {
        let cases = [
            (
                "10.0.0.0/33",
                "prefix /33 is longer than the 32 bits of an IPv4 address",
            ),
            (
                "fd00::/129",
                "prefix /129 is longer than the 128 bits of an IPv6 address",
            ),
            ("10.0.0.0/99999999999", "is longer than the 32 bits"),
            ("10.0.0.5/24", "did you mean 10.0.0.0/24?"),
            ("10.0.0.0/", "prefix length after '/' must be a number"),
            ("10.0.0.0/+8", "prefix length after '/' must be a number"),
            ("10.0.0.256", "is not an IP address, a CIDR network"),
            ("[fd00::1]", "is not an IP address"),
            ("fd00::g", "is not an IP address"),
            (
                "po ol.example",
                "is not a valid host name: use labels of 1 to 63",
            ),
            ("a..b", "is not a valid host name: use labels"),
            ("café.example", "is not a valid host name: use labels"),
            (
                "pool",
                "is not a valid host name: a single word names no remote",
            ),
            ("pool.123", "its last label is a number"),
            ("*.", "a wildcard is \"*.\" followed by a domain"),
            ("*..", "a wildcard is \"*.\" followed by a domain"),
            ("*example.org", "a wildcard is \"*.\" followed by a domain"),
            ("*.*.example.org", "is not a valid host name"),
            ("a.*.example.org", "is not a valid host name"),
            ("pool.example.org/24", "is not an IP address"),
            ("", "`remote` is empty"),
        ];
        for (remote, expected) in cases {
            // The bad rule is the second one; its remote is on line 9.
            let text = format!(
                "format_version = 1\n[[rule]]\nprocess = \"a\"\nremote = \"*\"\nprotocol = \"udp\"\n\
                 \n[[rule]]\nprocess = \"xmrig\"\nremote = \"{remote}\"\nport = 3333\nprotocol = \"tcp\"\n"
            );
            let error = parse_error(&text);
            let BaselineError::Rule {
                index,
                line,
                rule,
                problem,
                ..
            } = &error
            else {
                panic!("{remote}: expected a rule error, got {error:?}");
            };
            assert_eq!((*index, *line), (2, Some(9)), "{remote}");
            // IPv6 remotes are bracketed before a port.
            let shown = if remote.contains(':') {
                format!("[{remote}]")
            } else {
                remote.to_owned()
            };
            assert_eq!(rule, &format!("xmrig → {shown}:3333/tcp"), "{remote}");
            assert!(problem.contains(expected), "{remote}: {problem}");
            assert!(
                error.to_string().starts_with(&format!(
                    "test.toml, line 9: rule 2 (xmrig → {shown}:3333/tcp): "
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn an_unknown_protocol_is_an_error() {
        for protocol in ["tcpp", "256", "-1", "", "0x6", "tcp "] {
            let text = with_rule(&format!(
                "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"{protocol}\"\n"
            ));
            let error = parse_error(&text);
            assert!(
                matches!(&error, BaselineError::Rule { index: 1, line: Some(6), problem, .. }
                    if problem.starts_with("unknown protocol")),
                "{protocol:?}: {error:?}"
            );
        }
        for protocol in ["tcp", "UDP", "icmp", "icmpv6", "sctp", "0", "47", "255"] {
            let text = with_rule(&format!(
                "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"{protocol}\"\n"
            ));
            assert!(parse(&text, "ok.toml").is_ok(), "{protocol}");
        }
    }

    #[test]
    fn a_profile_with_mismatched_lengths_or_a_bad_step_is_an_error() {
        let rule = "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\n[rule.profile]\n";
        let error = parse_error(&with_rule(&format!(
            "{rule}step_seconds = 5.0\nsent = [1.0, 2.0, 3.0]\nreceived = [1.0, 2.0]\n"
        )));
        assert!(
            matches!(&error, BaselineError::Rule { index: 1, line: Some(10), problem, .. }
                if problem.contains("3 `sent` bins but 2 `received` bins")),
            "{error:?}"
        );

        let error = parse_error(&with_rule(&format!(
            "{rule}step_seconds = 0.0\nsent = [1.0]\nreceived = [1.0]\n"
        )));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(8), problem, .. }
                if problem == "profile.step_seconds is 0.0: it must be a number > 0"),
            "{error:?}"
        );

        let error = parse_error(&with_rule(&format!(
            "{rule}step_seconds = 5.0\nsent = []\nreceived = []\n"
        )));
        assert!(
            error.to_string().contains("the profile has no bins"),
            "{error}"
        );

        let error = parse_error(&with_rule(&format!(
            "{rule}step_seconds = 5.0\nsent = [1.0, 2.0]\nreceived = [1.0,\n  -2.0]\n"
        )));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(11), problem, .. }
                if problem.contains("profile.received[1] is -2.0")),
            "{error:?}"
        );
    }

    #[test]
    fn negative_or_nan_normal_values_are_errors() {
        let normal = |sent: &str, fraction: &str| {
            with_rule(&format!(
                "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\n  [rule.normal]\n  \
                 sent_bytes_per_second = {sent}\n  \
                 received_bytes_per_second = {{ mean = 1.0, p95 = 2.0, max = 3.0 }}\n  \
                 active_fraction = {fraction}\n  connections_per_hour = 1.0\n"
            ))
        };
        let good = "{ mean = 1.0, p95 = 2.0, max = 3.0 }";
        assert!(parse(&normal(good, "0.5"), "ok").is_ok());
        let cases = [
            (
                "{ mean = -1.0, p95 = 2.0, max = 3.0 }",
                "0.5",
                8,
                "normal.sent_bytes_per_second.mean is -1.0",
            ),
            (
                "{ mean = 1.0, p95 = nan, max = 3.0 }",
                "0.5",
                8,
                "normal.sent_bytes_per_second.p95 is nan",
            ),
            (
                "{ mean = 1.0, p95 = 2.0, max = inf }",
                "0.5",
                8,
                "normal.sent_bytes_per_second.max is inf",
            ),
            (
                good,
                "1.5",
                10,
                "normal.active_fraction is 1.5: it is a share of the time",
            ),
            (good, "-nan", 10, "normal.active_fraction is nan"),
        ];
        for (sent, fraction, line, expected) in cases {
            let error = parse_error(&normal(sent, fraction));
            assert!(
                matches!(&error, BaselineError::Rule { index: 1, line: l, problem, .. }
                    if *l == Some(line) && problem.starts_with(expected)),
                "{sent} {fraction}: {error:?}"
            );
        }
    }

    #[test]
    fn other_semantic_errors() {
        let error = parse_error(&with_rule(
            "process = \" \"\nremote = \"*\"\nprotocol = \"tcp\"\n",
        ));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(4), problem, .. }
                if problem.starts_with("`process` is empty")),
            "{error:?}"
        );
        let error = parse_error(&with_rule(
            "process = \"x\"\nexe = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\n",
        ));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(5), .. }),
            "{error:?}"
        );
        let error = parse_error(&with_rule(
            "process = \"x\"\nremote = \"*\"\nport = 0\nprotocol = \"tcp\"\n",
        ));
        assert!(
            error.to_string().contains("port 0 is not a port"),
            "{error}"
        );

        // The same identity twice, written differently.
        let text = "format_version = 1\n[[rule]]\nprocess = \"x\"\nremote = \"10.0.0.2\"\n\
                    protocol = \"tcp\"\n[[rule]]\nprocess = \"x\"\nremote = \"::ffff:10.0.0.2/128\"\n\
                    protocol = \"6\"\n";
        let error = parse_error(text);
        assert!(
            matches!(
                error,
                BaselineError::DuplicateRule {
                    index: 2,
                    first: 1,
                    line: Some(6),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("rule 2 (x → [::ffff:10.0.0.2/128]:*/6) has the same"),
            "{error}"
        );
    }

    #[test]
    fn recording_values_are_checked() {
        for started_at in [
            "yesterday",
            "2026-11-24 12:00:00Z",
            "2026-11-24T12:00:00",
            "2026-11-24T12:00:00+01:00",
            "2026-02-29T12:00:00Z",
            "2026-13-01T12:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T12:00:00.Z",
        ] {
            let text = format!(
                "format_version = 1\n[recording]\nstarted_at = \"{started_at}\"\n\
                 duration_seconds = 1.0\nstep_seconds = 1.0\nhost = \"h\"\n"
            );
            let error = parse_error(&text);
            assert!(
                matches!(&error, BaselineError::Recording { line: Some(3), problem, .. }
                    if problem.contains("is not an RFC 3339 time in UTC")),
                "{started_at}: {error:?}"
            );
        }
        // A TOML date-time (no quotes) reads as its text; a local one is refused.
        let text = "format_version = 1\n[recording]\nstarted_at = 2026-11-24T12:00:00Z\n\
                    duration_seconds = 1.0\nstep_seconds = 1.0\nhost = \"h\"\n";
        let recording = parse(text, "ok").expect("parses").recording;
        assert_eq!(
            recording.map(|r| r.started_at).as_deref(),
            Some("2026-11-24T12:00:00Z")
        );
        let error = parse_error(&text.replace("00Z", "00"));
        assert!(
            matches!(&error, BaselineError::Recording { line: Some(3), problem, .. }
                if problem.contains("\"2026-11-24T12:00:00\" is not an RFC 3339 time in UTC")),
            "{error:?}"
        );
        let error = parse_error(&text.replace("2026-11-24T12:00:00Z", "[1]"));
        assert!(
            matches!(&error, BaselineError::Toml { line: Some(3), .. }),
            "{error:?}"
        );
        for started_at in ["2024-02-29T23:59:60.123456Z", "2026-11-24t00:00:00z"] {
            let text = format!(
                "format_version = 1\n[recording]\nstarted_at = \"{started_at}\"\n\
                 duration_seconds = 1.0\nstep_seconds = 1.0\nhost = \"h\"\n"
            );
            assert!(parse(&text, "ok").is_ok(), "{started_at}");
        }
        let text = "format_version = 1\n[recording]\nstarted_at = \"2026-11-24T12:00:00Z\"\n\
                    duration_seconds = 1.0\nstep_seconds = -5.0\nhost = \"h\"\n";
        let error = parse_error(text);
        assert_eq!(
            error.to_string(),
            "test.toml, line 5: [recording]: step_seconds is -5.0: it must be a number > 0"
        );
    }

    #[test]
    fn validate_checks_a_baseline_built_in_memory() {
        assert!(sample().validate("memory").is_ok());
        let mut baseline = sample();
        baseline.rules[1].remote = "fd00::1/64".to_owned();
        let error = baseline.validate("memory").expect_err("host bits");
        assert!(
            matches!(
                &error,
                BaselineError::Rule {
                    index: 2,
                    line: None,
                    ..
                }
            ),
            "{error:?}"
        );
        baseline = sample();
        baseline.format_version = 7;
        assert!(matches!(
            baseline.validate("memory"),
            Err(BaselineError::NewerFormat { found: 7, .. })
        ));
    }

    // -----------------------------------------------------------------------------------------
    // Matching

    #[test]
    fn remote_matchers_parse_and_print() {
        assert_eq!(RemoteMatcher::parse("*"), Ok(RemoteMatcher::Any));
        assert_eq!(
            RemoteMatcher::parse("10.0.0.2"),
            Ok(RemoteMatcher::Address(ip("10.0.0.2")))
        );
        assert_eq!(
            "fd00::/64".parse::<RemoteMatcher>(),
            Ok(RemoteMatcher::Network {
                base: ip("fd00::"),
                prefix: 64
            })
        );
        assert_eq!(
            RemoteMatcher::parse("0.0.0.0/0").map(|m| m.to_string()),
            Ok("0.0.0.0/0".to_owned())
        );
        assert_eq!(
            RemoteMatcher::parse("::ffff:10.0.0.0/120").map(|m| m.canonical()),
            Ok(RemoteMatcher::Network {
                base: ip("10.0.0.0"),
                prefix: 24
            })
        );
        assert_eq!(
            RemoteMatcher::parse("10.0.0.2/32").map(|m| m.canonical()),
            Ok(RemoteMatcher::Address(ip("10.0.0.2")))
        );
        assert!(matches!(
            RemoteMatcher::parse("10.1.2.3/8"),
            Err(RemoteError::HostBitsSet { prefix: 8, ref suggestion, .. }) if suggestion == "10.0.0.0/8"
        ));
    }

    #[test]
    fn rules_match_exact_addresses_and_networks() {
        let exact = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(exact.matches(&live("xmrig", "10.0.0.2", Some(3333), "tcp")));
        assert!(!exact.matches(&live("xmrig", "10.0.0.3", Some(3333), "tcp")));

        let v4_network = Rule::new("xmrig", "10.0.0.0/24", Some(3333), "tcp");
        assert!(v4_network.matches(&live("xmrig", "10.0.0.0", Some(3333), "tcp")));
        assert!(v4_network.matches(&live("xmrig", "10.0.0.255", Some(3333), "tcp")));
        assert!(!v4_network.matches(&live("xmrig", "10.0.1.0", Some(3333), "tcp")));
        assert!(!v4_network.matches(&live("xmrig", "9.255.255.255", Some(3333), "tcp")));

        let odd_prefix = Rule::new("xmrig", "192.168.4.0/22", None, "tcp");
        assert!(odd_prefix.matches(&live("xmrig", "192.168.7.200", Some(1), "tcp")));
        assert!(!odd_prefix.matches(&live("xmrig", "192.168.8.1", Some(1), "tcp")));

        let v6_network = Rule::new("xmrig", "fd00:1::/64", Some(3333), "tcp");
        assert!(v6_network.matches(&live("xmrig", "fd00:1::abcd", Some(3333), "tcp")));
        assert!(v6_network.matches(&live(
            "xmrig",
            "fd00:1:0:0:ffff:ffff:ffff:ffff",
            Some(3333),
            "tcp"
        )));
        assert!(!v6_network.matches(&live("xmrig", "fd00:1:0:1::1", Some(3333), "tcp")));
        assert!(!v6_network.matches(&live("xmrig", "10.0.0.2", Some(3333), "tcp")));

        let v6_exact = Rule::new("xmrig", "fd00::2", Some(3333), "tcp");
        assert!(v6_exact.matches(&live("xmrig", "fd00:0::0:2", Some(3333), "tcp")));
        assert!(!v6_exact.matches(&live("xmrig", "fd00::3", Some(3333), "tcp")));
    }

    #[test]
    fn rules_match_any_remote_port_protocol_and_process() {
        let any = Rule::new("xmrig", "*", None, "tcp");
        assert!(any.matches(&live("xmrig", "1.2.3.4", Some(80), "tcp")));
        assert!(any.matches(&live("xmrig", "2001:db8::1", None, "tcp")));

        let port = Rule::new("xmrig", "*", Some(3333), "tcp");
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", Some(3334), "tcp")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", None, "tcp")));

        // Protocols compare by number, names in any case.
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "6")));
        assert!(port.matches(&live("xmrig", "1.2.3.4", Some(3333), "TCP")));
        assert!(!port.matches(&live("xmrig", "1.2.3.4", Some(3333), "udp")));
        let numeric = Rule::new("gre-tunnel", "*", None, "47");
        assert!(numeric.matches(&live("gre-tunnel", "1.2.3.4", None, "47")));
        assert!(!numeric.matches(&live("gre-tunnel", "1.2.3.4", None, "tcp")));

        // Process names compare exactly.
        assert!(!port.matches(&live("xmrig2", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("XMRIG", "1.2.3.4", Some(3333), "tcp")));
        assert!(!port.matches(&live("", "1.2.3.4", Some(3333), "tcp")));

        // An invalid rule matches nothing.
        let invalid = Rule::new("xmrig", "10.0.0.0/99", None, "tcp");
        assert!(!invalid.matches(&live("xmrig", "10.0.0.1", None, "tcp")));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_match_ipv4_rules() {
        let exact = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(exact.matches(&live("xmrig", "::ffff:10.0.0.2", Some(3333), "tcp")));
        assert!(!exact.matches(&live("xmrig", "::ffff:10.0.0.3", Some(3333), "tcp")));
        // ::10.0.0.2 (deprecated IPv4-compatible) is not the IPv4 address.
        assert!(!exact.matches(&live("xmrig", "::10.0.0.2", Some(3333), "tcp")));

        let network = Rule::new("xmrig", "10.0.0.0/24", Some(3333), "tcp");
        assert!(network.matches(&live("xmrig", "::ffff:10.0.0.77", Some(3333), "tcp")));

        // A mapped rule matches plain IPv4 traffic.
        let mapped = Rule::new("xmrig", "::ffff:10.0.0.0/120", None, "tcp");
        assert!(mapped.matches(&live("xmrig", "10.0.0.9", None, "tcp")));
        assert!(!mapped.matches(&live("xmrig", "10.0.1.9", None, "tcp")));

        // All of IPv6 is not all of IPv4.
        let all_v6 = Rule::new("xmrig", "::/0", None, "tcp");
        assert!(all_v6.matches(&live("xmrig", "2001:db8::1", None, "tcp")));
        assert!(!all_v6.matches(&live("xmrig", "10.0.0.9", None, "tcp")));
        assert!(!all_v6.matches(&live("xmrig", "::ffff:10.0.0.9", None, "tcp")));
        let all_v4 = Rule::new("xmrig", "0.0.0.0/0", None, "tcp");
        assert!(all_v4.matches(&live("xmrig", "::ffff:10.0.0.9", None, "tcp")));
        assert!(!all_v4.matches(&live("xmrig", "2001:db8::1", None, "tcp")));
    }

    /// `flow` with the remote known as `name`.
    fn named<'a>(flow: LiveFlow<'a>, name: &'a str) -> LiveFlow<'a> {
        LiveFlow {
            name: Some(name),
            ..flow
        }
    }

    #[test]
    fn name_remotes_parse_to_a_canonical_form() {
        for (text, canonical) in [
            ("pool.example.org", "pool.example.org"),
            ("Pool.Example.ORG.", "pool.example.org"),
            ("*.Example.org", "*.example.org"),
            ("*.example.org.", "*.example.org"),
            ("*.lan", "*.lan"),
            ("_stratum.pool-1.example.org", "_stratum.pool-1.example.org"),
            ("10.0.0.2a", "10.0.0.2a"),
        ] {
            let parsed = RemoteMatcher::parse(text);
            assert_eq!(
                parsed,
                Ok(RemoteMatcher::Name(canonical.to_owned())),
                "{text}"
            );
            assert_eq!(
                parsed.map(|matcher| matcher.canonical().to_string()),
                Ok(canonical.to_owned())
            );
        }
        // 253 characters is the longest host name; the wildcard may add its "*." to it.
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert!(RemoteMatcher::parse(&longest).is_ok());
        assert!(RemoteMatcher::parse(&format!("*.{longest}")).is_ok());
        assert!(matches!(
            RemoteMatcher::parse(&format!("x{longest}")),
            Err(RemoteError::BadName { .. })
        ));
        assert!(matches!(
            RemoteMatcher::parse("a.b-.c d"),
            Err(RemoteError::BadName { ref text, .. }) if text == "a.b-.c d"
        ));
        assert!(matches!(
            RemoteMatcher::parse("*x.example.org"),
            Err(RemoteError::BadWildcard { .. })
        ));

        // Identity: the same name however it is written.
        assert_eq!(
            Rule::new("xmrig", "POOL.example.org.", Some(3333), "tcp").identity(),
            Rule::new("xmrig", "pool.example.org", Some(3333), "6").identity()
        );
        assert_eq!(
            Rule::new("xmrig", "*.EXAMPLE.org", None, "tcp")
                .identity()
                .remote,
            "*.example.org"
        );
        let text = "format_version = 1\n[[rule]]\nprocess = \"x\"\nremote = \"pool.example.org\"\n\
                    protocol = \"tcp\"\n[[rule]]\nprocess = \"x\"\nremote = \"Pool.Example.Org.\"\n\
                    protocol = \"tcp\"\n";
        let error = parse_error(text);
        assert!(
            matches!(
                error,
                BaselineError::DuplicateRule {
                    index: 2,
                    first: 1,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn name_rules_match_the_name_the_flow_is_known_by() {
        let exact = Rule::new("xmrig", "Pool.Example.org", Some(3333), "tcp");
        let flow = live("xmrig", "10.0.0.2", Some(3333), "tcp");
        // Any address the name resolved to.
        assert!(exact.matches(&named(flow, "pool.example.org")));
        let rotated = live("xmrig", "192.0.2.77", Some(3333), "tcp");
        assert!(exact.matches(&named(rotated, "pool.example.org")));
        assert!(exact.matches(&named(flow, "pool.example.org.")));
        // Other names, and no name at all, do not match.
        for other in [
            "eu.pool.example.org",
            "example.org",
            "pool.example.org.evil.net",
        ] {
            assert!(!exact.matches(&named(flow, other)), "{other}");
        }
        assert!(!exact.matches(&flow));
        // Everything else still counts.
        let wrong_port = live("xmrig", "10.0.0.2", Some(80), "tcp");
        assert!(!exact.matches(&named(wrong_port, "pool.example.org")));
        let wrong_process = live("curl", "10.0.0.2", Some(3333), "tcp");
        assert!(!exact.matches(&named(wrong_process, "pool.example.org")));

        let wildcard = Rule::new("xmrig", "*.Example.ORG", None, "tcp");
        for (name, expected) in [
            ("a.example.org", true),
            ("a.b.example.org", true),
            ("A.EXAMPLE.org", true),
            ("example.org", false),
            ("badexample.org", false),
            ("a.example.org.evil.net", false),
            ("a.example.com", false),
        ] {
            assert_eq!(wildcard.matches(&named(flow, name)), expected, "{name}");
        }
        assert!(!wildcard.matches(&flow));

        // Address rules go by the address, whatever the name; `*` matches unnamed traffic.
        let address = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        assert!(address.matches(&named(flow, "pool.example.org")));
        assert!(!address.matches(&named(rotated, "pool.example.org")));
        assert!(Rule::new("xmrig", "*", None, "tcp").matches(&flow));

        // A baseline finds name rules too.
        let baseline = Baseline::new(None, vec![address, exact, wildcard]);
        let found: Vec<usize> = baseline
            .matching_rules(named(rotated, "pool.example.org"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [1, 2]);
    }

    #[test]
    fn a_rule_with_an_app_matches_only_that_app() {
        let stratum = Rule {
            app: Some("stratum".to_owned()),
            ..Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp")
        };
        let any = Rule::new("xmrig", "10.0.0.2", Some(3333), "tcp");
        let flow = live("xmrig", "10.0.0.2", Some(3333), "tcp");
        for app in App::ALL {
            let flow = LiveFlow { app, ..flow };
            assert_eq!(stratum.matches(&flow), app == App::Stratum, "{app:?}");
            assert!(any.matches(&flow), "{app:?}");
        }
        // An app that is not one (only possible in memory: parsing refuses it) matches nothing.
        let invalid = Rule {
            app: Some("Stratum".to_owned()),
            ..any.clone()
        };
        for app in App::ALL {
            assert!(!invalid.matches(&LiveFlow { app, ..flow }), "{app:?}");
        }
    }

    #[test]
    fn app_is_validated_and_part_of_the_identity() {
        let rule = |app: &str| {
            with_rule(&format!(
                "process = \"xmrig\"\nremote = \"*\"\nprotocol = \"tcp\"\napp = \"{app}\"\n"
            ))
        };
        for app in App::ALL {
            let parsed = parse(&rule(app.as_str()), "ok").expect("a known app");
            assert_eq!(parsed.rules[0].app.as_deref(), Some(app.as_str()));
        }
        for bad in ["bitcoin", "Stratum", "", "tls "] {
            let error = parse_error(&rule(bad));
            assert!(
                matches!(&error, BaselineError::Rule { index: 1, line: Some(7), problem, .. }
                    if problem.starts_with(&format!("unknown app {bad:?}: use one of stratum, tls, http, ssh, dns, unknown"))),
                "{bad:?}: {error:?}"
            );
        }

        // Same traffic class, another app: another rule. The same app twice: a duplicate.
        let pool = |app: &str| {
            format!(
                "[[rule]]\nprocess = \"xmrig\"\nremote = \"pool.example.org\"\nport = 3333\n\
                 protocol = \"tcp\"\napp = \"{app}\"\n"
            )
        };
        let any = "[[rule]]\nprocess = \"xmrig\"\nremote = \"pool.example.org\"\nport = 3333\n\
                   protocol = \"tcp\"\n";
        let text = format!(
            "format_version = 1\n{}{}{any}",
            pool("stratum"),
            pool("tls")
        );
        let baseline = parse(&text, "apps.toml").expect("three different rules");
        let identities: HashSet<RuleIdentity> = baseline.rules.iter().map(Rule::identity).collect();
        assert_eq!(identities.len(), 3);
        let error = parse_error(&format!(
            "format_version = 1\n{}{}",
            pool("stratum"),
            pool("stratum")
        ));
        assert!(
            error.to_string().contains(
                "rule 2 (xmrig → pool.example.org:3333/tcp (stratum)) has the same process, \
                 remote, port, protocol and app as rule 1"
            ),
            "{error}"
        );
    }

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
    fn names_and_apps_are_written_read_shown_and_compared() {
        let pool = Rule {
            app: Some("stratum".to_owned()),
            ..xmrig_rule()
        };
        let pool = Rule {
            remote: "pool.example.org".to_owned(),
            ..pool
        };
        let baseline = Baseline::new(None, vec![pool.clone(), chronyd_rule()]);
        let text = render(&baseline);
        assert!(
            text.contains(
                "remote = \"pool.example.org\"\nport = 3333\nprotocol = \"tcp\"\napp = \"stratum\"\n"
            ),
            "{text}"
        );
        assert_eq!(parse(&text, "rendered").expect("parses"), baseline);
        // A rule without an app is written without the key.
        assert_eq!(text.matches("app = ").count(), 1, "{text}");

        let appended =
            append_rules(EXISTING, "rig.toml", std::slice::from_ref(&pool)).expect("appended");
        assert!(appended.starts_with(EXISTING));
        assert_eq!(parse(&appended, "appended").expect("parses").rules[1], pool);

        let shown = show(&baseline);
        assert!(
            shown.contains("  1. xmrig → pool.example.org:3333/tcp (stratum) (pool)\n"),
            "{shown}"
        );

        // The miner now speaks HTTP to its pool: another rule, not a change of this one.
        let mut new = baseline.clone();
        new.rules[0].app = Some("http".to_owned());
        let text = diff(&baseline, &new);
        for expected in [
            "- removed xmrig → pool.example.org:3333/tcp (stratum)",
            "+ added   xmrig → pool.example.org:3333/tcp (http)",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected:?} in\n{text}"
            );
        }
    }

    #[test]
    fn baseline_finds_matching_rules_and_positions() {
        let baseline = sample();
        let found: Vec<usize> = baseline
            .matching_rules(live("xmrig", "10.0.0.2", Some(3333), "tcp"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [0]);
        let identity = Rule::new("ping", "10.0.0.0/8", None, "1").identity();
        assert_eq!(baseline.position_of(&identity), Some(3));
        assert_eq!(identity.to_string(), "ping → 10.0.0.0/8/icmp");
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

    // -----------------------------------------------------------------------------------------
    // Appending

    const EXISTING: &str = "# My rig's baseline. Hand-tuned: keep this comment!
format_version = 1   # do not change

[recording]
started_at = \"2026-11-24T12:00:00Z\"
duration_seconds = 1800
step_seconds = 5.0
host = \"rig-01\"

# The pool.
[[rule]]
process = \"xmrig\"
remote = \"10.0.0.2\"
port = 3333
protocol = \"tcp\"
  [rule.normal]
  sent_bytes_per_second = {mean=1.0,p95=2.0,  max=3.0}   # odd spacing, kept
  received_bytes_per_second = { mean = 1.0, p95 = 2.0, max = 3.0 }
  active_fraction = 0.5
  connections_per_hour = 1
";

    #[test]
    fn append_rules_keeps_the_existing_text_and_adds_the_rules() {
        let new_rules = [Rule::new("sshd", "*", Some(22), "tcp"), chronyd_rule()];
        for existing in [
            EXISTING.to_owned(),
            format!("{EXISTING}\n# Accepted by hand below.\n"),
            format!("{EXISTING}# no newline at the end"),
            format!("{EXISTING}\n\n"),
        ] {
            let result = append_rules(&existing, "rig.toml", &new_rules).expect("appended");
            assert!(result.starts_with(&existing), "{result}");
            assert!(result.contains("# The pool.\n[[rule]]\n"));
            let parsed = parse(&result, "result").expect("the result parses");
            assert_eq!(parsed.rules.len(), 3);
            assert_eq!(parsed.rules[1..], new_rules);
            assert_eq!(
                parsed.rules[0],
                parse(&existing, "existing").expect("parses").rules[0]
            );
            // No run of blank lines where the rules were added.
            assert!(!result.contains("\n\n\n\n"), "{result}");
        }

        // Into a file without rules.
        let result = append_rules("format_version = 1 # just this\n", "new.toml", &new_rules)
            .expect("appended");
        assert!(
            result.starts_with("format_version = 1 # just this\n\n[[rule]]\nprocess = \"sshd\"\n"),
            "{result}"
        );
        assert_eq!(parse(&result, "result").expect("parses").rules, new_rules);

        // Nothing to add: the text as it was.
        assert_eq!(
            append_rules(EXISTING, "rig.toml", &[]).expect("ok"),
            EXISTING
        );
    }

    #[test]
    fn append_rules_refuses_duplicates_and_invalid_input() {
        let same_identity = Rule::new("xmrig", "::ffff:10.0.0.2", Some(3333), "6");
        let error = append_rules(EXISTING, "rig.toml", &[same_identity]).expect_err("a duplicate");
        assert!(
            matches!(error, BaselineError::AlreadyPresent { existing: 1, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "rig.toml: rule xmrig → [::ffff:10.0.0.2]:3333/6 is already in the baseline (rule 1): \
             not adding it twice"
        );

        let sshd = Rule::new("sshd", "*", Some(22), "tcp");
        let error = append_rules(EXISTING, "rig.toml", &[sshd.clone(), sshd.clone()])
            .expect_err("a duplicate among the new rules");
        assert!(
            matches!(error, BaselineError::AlreadyPresent { existing: 2, .. }),
            "{error:?}"
        );

        let invalid = Rule::new("sshd", "*", Some(22), "ssh");
        let error =
            append_rules(EXISTING, "rig.toml", &[sshd.clone(), invalid]).expect_err("invalid");
        assert!(
            matches!(&error, BaselineError::Rule { index: 3, problem, .. } if problem.starts_with("unknown protocol")),
            "{error:?}"
        );

        let error = append_rules(
            "format_version = 1\n[[rule]\n",
            "bad.toml",
            std::slice::from_ref(&sshd),
        )
        .expect_err("corrupt existing file");
        assert!(
            matches!(error, BaselineError::Toml { line: Some(2), .. }),
            "{error:?}"
        );

        let error = append_rules("format_version = 1\nrule = []\n", "inline.toml", &[sshd])
            .expect_err("inline rules");
        assert!(matches!(error, BaselineError::Edit { .. }), "{error:?}");
    }

    // -----------------------------------------------------------------------------------------
    // Files

    #[test]
    fn temporary_files_of_killed_writers_are_cleaned_up() {
        let dir = TempDir::new("abandoned");
        let path = dir.join("baseline.toml");
        // pid 0 never names a live writer; our own pid is live (and skipped).
        let abandoned = dir.join(".baseline.toml.0.7.tmp");
        let ours = dir.join(&format!(".baseline.toml.{}.999.tmp", std::process::id()));
        let unrelated = dir.join(".other.toml.0.1.tmp");
        for file in [&abandoned, &ours, &unrelated] {
            fs::write(file, "half").expect("write");
        }
        write_atomically(&path, "whole\n").expect("write");
        assert!(!abandoned.exists(), "the dead writer's file is removed");
        assert!(ours.exists() && unrelated.exists(), "others are left alone");
    }

    #[test]
    fn write_atomically_keeps_a_backup_and_leaves_no_temporary_file() {
        let dir = TempDir::new("write");
        let path = dir.join("baseline.toml");
        write_atomically(&path, "first\n").expect("first write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "first\n");
        assert_eq!(dir.names(), ["baseline.toml"]);

        fs::set_permissions(&path, Permissions::from_mode(0o640)).expect("chmod");
        write_atomically(&path, "second\n").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "second\n");
        assert_eq!(
            fs::read_to_string(dir.join("baseline.toml.bak")).expect("read"),
            "first\n"
        );
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        write_atomically(&path, "third\n").expect("third write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "third\n");
        assert_eq!(
            fs::read_to_string(dir.join("baseline.toml.bak")).expect("read"),
            "second\n"
        );
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);
    }

    #[test]
    fn write_atomically_follows_a_symbolic_link() {
        let dir = TempDir::new("symlink");
        let real = dir.join("real.toml");
        let link = dir.join("link.toml");
        fs::write(&real, "old\n").expect("write");
        symlink(&real, &link).expect("symlink");
        write_atomically(&link, "new\n").expect("write through the link");
        assert!(
            fs::symlink_metadata(&link)
                .expect("lstat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).expect("read"), "new\n");
        assert_eq!(
            fs::read_to_string(dir.join("real.toml.bak")).expect("read"),
            "old\n"
        );
        assert_eq!(dir.names(), ["link.toml", "real.toml", "real.toml.bak"]);
    }

    #[test]
    fn a_failing_write_leaves_the_old_file_intact() {
        // The target is a directory.
        let dir = TempDir::new("fail-dir");
        let target = dir.join("baseline.toml");
        fs::create_dir(&target).expect("mkdir");
        let error = write_atomically(&target, "new\n").expect_err("a directory");
        assert!(matches!(error, BaselineError::Write { .. }), "{error:?}");
        assert!(
            error.to_string().contains("baseline.toml: cannot write it"),
            "{error}"
        );
        assert!(target.is_dir());
        assert_eq!(dir.names(), ["baseline.toml"]);

        // The backup cannot be written (its name is taken by a directory).
        let dir = TempDir::new("fail-backup");
        let path = dir.join("baseline.toml");
        fs::write(&path, "old\n").expect("write");
        fs::create_dir(dir.join("baseline.toml.bak")).expect("mkdir");
        let error = write_atomically(&path, "new\n").expect_err("no backup possible");
        assert!(error.to_string().contains("keep a backup"), "{error}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "old\n");
        assert_eq!(dir.names(), ["baseline.toml", "baseline.toml.bak"]);

        // The directory does not exist.
        let dir = TempDir::new("fail-missing");
        let error = write_atomically(&dir.join("nowhere/baseline.toml"), "new\n")
            .expect_err("no directory");
        assert!(
            error.to_string().contains("create a temporary file"),
            "{error}"
        );
        assert!(dir.names().is_empty());
    }

    #[test]
    fn load_refuses_non_utf8_and_oversized_files() {
        let dir = TempDir::new("load");
        let path = dir.join("latin1.toml");
        fs::write(&path, b"format_version = 1\n# caf\xe9\n").expect("write");
        let error = load(&path).expect_err("not UTF-8");
        assert!(
            matches!(
                error,
                BaselineError::NotUtf8 {
                    line: 2,
                    offset: 24,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("latin1.toml, line 2: not UTF-8 text"),
            "{message}"
        );

        let path = dir.join("huge.toml");
        File::create(&path)
            .and_then(|file| file.set_len(MAX_FILE_BYTES + 1))
            .expect("a sparse file");
        let error = load(&path).expect_err("too large");
        assert!(
            matches!(error, BaselineError::TooLarge { size, limit, .. }
                if size == MAX_FILE_BYTES + 1 && limit == 16 * 1024 * 1024),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("huge.toml: the file is 16777217 bytes"),
            "{error}"
        );

        let error = load(&dir.join("missing.toml")).expect_err("no file");
        assert!(
            matches!(&error, BaselineError::Read { error, .. } if error.kind() == io::ErrorKind::NotFound),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("missing.toml: cannot read the baseline file"),
            "{error}"
        );

        let path = dir.join("hand.toml");
        fs::write(&path, HAND_WRITTEN).expect("write");
        assert_eq!(load(&path).expect("loads").rules.len(), 2);
        let path = dir.join("unknown.toml");
        fs::write(&path, "format_version = 1\ncolour = 1\n").expect("write");
        let message = load(&path).expect_err("unknown field").to_string();
        assert!(
            message.contains("unknown.toml, line 2, column 1: unknown field `colour`"),
            "{message}"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Showing and comparing

    #[test]
    fn show_lists_the_recording_and_rules() {
        let mut baseline = sample();
        baseline.rules[2].note = Some("admin".to_owned());
        let text = show(&baseline);
        let expected_lines = [
            "BitSecure baseline, format 1",
            "Recorded on rig-01 from 2026-11-24T12:00:00Z for 30 min, one sample every 5 s",
            "4 rules:",
            "  1. xmrig → 10.0.0.2:3333/tcp (pool)",
            "     exe /usr/bin/xmrig",
            "     sent:     mean 120.5 B/s, p95 800.0 B/s, max 2.4 kB/s",
            "     received: mean 10.0 B/s, p95 80.0 B/s, max 240.0 B/s",
            "     active 12% of the time, 2 connections per hour, periodic every 5 min",
            "     profile: 60 bins of 5 s (a 5 min cycle)",
            "  2. chronyd → [fd00::/64]:*/udp",
            "     active 100% of the time, 0 connections per hour",
            "  3. sshd → *:22/tcp (admin)",
            "     accepted by hand: no recorded normal",
            "  4. ping → 10.0.0.0/8/icmp",
        ];
        let lines: Vec<&str> = text.lines().collect();
        for expected in expected_lines {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }

        let hand = show(&Baseline::new(None, Vec::new()));
        assert_eq!(
            hand,
            "BitSecure baseline, format 1\nNot recorded: written by hand\nNo rules\n"
        );
    }

    #[test]
    fn diff_reports_added_removed_and_changed_rules() {
        let old = sample();
        let mut new = sample();
        new.rules.remove(2); // sshd
        new.rules.push(Rule::new("nginx", "*", Some(443), "tcp"));
        // Written differently, same identity: not a change.
        new.rules[2].remote = "10.0.0.0/8".to_owned();
        new.rules[2].protocol = "1".to_owned();
        let xmrig = &mut new.rules[0];
        xmrig.exe = Some("/opt/xmrig/xmrig".to_owned());
        let normal = xmrig.normal.as_mut().expect("normal");
        normal.sent_bytes_per_second.mean = 300.0; // +149 %
        normal.received_bytes_per_second.mean = 11.0; // +10 %: below the threshold
        normal.cadence_seconds = None;

        let text = diff(&old, &new);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some("1 added, 1 removed, 1 changed (normal values compared with a 25% threshold)")
        );
        for expected in [
            "- removed sshd → *:22/tcp",
            "+ added   nginx → *:443/tcp",
            "~ changed xmrig → 10.0.0.2:3333/tcp",
            "    exe: \"/usr/bin/xmrig\" → \"/opt/xmrig/xmrig\"",
            "    sent mean: 120.5 B/s → 300.0 B/s (+149%)",
            "    cadence: every 5 min → not periodic",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("received mean"), "{text}");
        assert!(!text.contains("ping"), "{text}");
        assert!(!text.contains("chronyd"), "{text}");

        // A lower threshold reports the smaller change too.
        let text = diff_with_threshold(&old, &new, 0.05);
        assert!(
            text.contains("    received mean: 10.0 B/s → 11.0 B/s (+10%)"),
            "{text}"
        );

        assert_eq!(
            diff(&old, &old),
            "No differences (normal values compared with a 25% threshold)\n"
        );

        let mut rerecorded = sample();
        if let Some(recording) = rerecorded.recording.as_mut() {
            recording.host = "rig-02".to_owned();
        }
        let text = diff(&old, &rerecorded);
        assert!(text.contains("recording: Recorded on rig-01"), "{text}");
        assert!(text.contains("        now Recorded on rig-02"), "{text}");
    }
}
