//! What a baseline file must mean, once it is TOML: the format version first (so a file from a
//! newer BitSecure says so instead of complaining about new keys), then each value (a remote that
//! is neither an address nor a name, a negative rate, an unknown app...) and no two rules with
//! one identity; a problem is placed at its line through a tree of the values' spans.
//!
//! Checks only: no reading or writing of files, no matching of traffic.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};
use toml::Spanned;

use super::{
    error::{BaselineError, line_column, toml_error},
    render::toml_float,
};
use crate::{
    baseline::{
        matching::RemoteMatcher,
        model::{
            Baseline, FORMAT_VERSION, Normal, PacketSocketRule, Profile, Recording, Rule,
            printable, protocol_number,
        },
    },
    naming::App,
};

/// Only `format_version`, read before the rest so that a file from a newer BitSecure gives a
/// version message, not complaints about keys this one does not know.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: Option<Spanned<toml::Value>>,
}

/// The `format_version` of a file's text: present, a number, and one this BitSecure reads.
pub(super) fn check_version(text: &str, origin: &str) -> Result<(), BaselineError> {
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

/// A semantic problem, located by a dotted path from the root (`rule.2.normal.p95`, with
/// 0-based rule positions) so the line can be found in the text.
pub(super) struct Invalid {
    path: String,
    kind: InvalidKind,
}

enum InvalidKind {
    Recording(String),
    Rule { index: usize, problem: String },
    Duplicate { index: usize, first: usize },
    PacketSocket { index: usize, problem: String },
}

/// A problem with one field of a rule, by its dotted path within the rule.
pub(super) struct FieldProblem {
    field: String,
    pub(super) problem: String,
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        problem: problem.into(),
    }
}

impl Invalid {
    pub(super) fn into_error(
        self,
        baseline: &Baseline,
        origin: &str,
        text: Option<&str>,
    ) -> BaselineError {
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
            InvalidKind::PacketSocket { index, problem } => BaselineError::PacketSocket {
                origin,
                line,
                index: index + 1,
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

/// The meaning of each value of a baseline read from TOML, and no two rules alike.
pub(super) fn validate(baseline: &Baseline) -> Result<(), Invalid> {
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
    let mut seen = HashMap::new();
    for (index, rule) in baseline.packet_sockets.iter().enumerate() {
        let invalid = |field: &str, problem: String| Invalid {
            path: format!("packet_socket.{index}.{field}"),
            kind: InvalidKind::PacketSocket { index, problem },
        };
        validate_packet_socket(rule).map_err(|p| invalid(&p.field, p.problem))?;
        let identity = (&rule.process, &rule.kind, &rule.protocol);
        if let Some(first) = seen.insert(identity, index) {
            return Err(invalid(
                "process",
                format!(
                    "{} is also packet_socket {}: remove one",
                    rule.describe(),
                    first + 1
                ),
            ));
        }
    }
    Ok(())
}

/// A table's `process` (named) and `exe` (an absolute path like `example`, when given).
fn validate_holder(process: &str, exe: Option<&str>, example: &str) -> Result<(), FieldProblem> {
    if process.trim().is_empty() {
        return Err(problem(
            "process",
            "`process` is empty: name the process (as in /proc/PID/comm)",
        ));
    }
    if let Some(exe) = exe
        && !exe.starts_with('/')
    {
        return Err(problem(
            "exe",
            format!(
                "exe {:?} is not an absolute path like \"{example}\" (leave it out if unknown)",
                printable(exe)
            ),
        ));
    }
    Ok(())
}

/// The values of one `[[packet_socket]]` table.
fn validate_packet_socket(rule: &PacketSocketRule) -> Result<(), FieldProblem> {
    validate_holder(&rule.process, rule.exe.as_deref(), "/usr/sbin/dhclient")?;
    let kinds = crate::flow::PacketSocketKind::ALL.map(|kind| kind.as_str());
    if !kinds.contains(&rule.kind.as_str()) {
        return Err(problem(
            "kind",
            format!(
                "unknown kind {:?}: use \"packet\" (AF_PACKET) or \"raw\" (raw IP socket)",
                printable(&rule.kind)
            ),
        ));
    }
    if rule.protocol.is_empty()
        || !rule
            .protocol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '_')
    {
        return Err(problem(
            "protocol",
            format!(
                "protocol {:?} is not one bitsecure_packet_sockets shows (an EtherType such as \
                 \"all\", \"ipv4\", \"arp\" or a number for a packet socket, an IP protocol \
                 such as \"icmp\" or \"253\" for a raw one) or \"*\"",
                printable(&rule.protocol)
            ),
        ));
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

/// The values of one rule (also of a rule about to be appended).
pub(super) fn validate_rule(rule: &Rule) -> Result<(), FieldProblem> {
    validate_holder(&rule.process, rule.exe.as_deref(), "/usr/bin/xmrig")?;
    if let Some(sha256) = &rule.sha256
        && !(sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(problem(
            "sha256",
            format!(
                "sha256 {:?} is not 64 lowercase hex digits (as `sha256sum` prints them; leave \
                 it out to accept any content)",
                printable(sha256)
            ),
        ));
    }
    for prefix in rule.prefixes.iter().flatten() {
        if !matches!(
            RemoteMatcher::parse(prefix),
            Ok(RemoteMatcher::Network { .. } | RemoteMatcher::Address(_))
        ) {
            return Err(problem(
                "prefixes",
                format!(
                    "prefixes: {:?} is not a network like \"10.0.0.0/24\" or \"fd00::/48\"",
                    printable(prefix)
                ),
            ));
        }
    }
    for name in rule.asks.iter().flatten() {
        match RemoteMatcher::parse(name) {
            Ok(RemoteMatcher::Name(_)) => {}
            _ => {
                return Err(problem(
                    "asks",
                    format!(
                        "asks: {:?} is not a host name or a wildcard like \"*.example.org\"",
                        printable(name)
                    ),
                ));
            }
        }
    }
    if let Some(account) = &rule.account
        && (account.is_empty() || account.chars().count() > 256)
    {
        return Err(problem(
            "account",
            "`account` must be the login the miner sends (1 to 256 characters); leave it out \
             to accept any",
        ));
    }
    if let Some(cgroup) = &rule.cgroup
        && !cgroup.starts_with('/')
    {
        return Err(problem(
            "cgroup",
            format!(
                "cgroup {:?} is not a cgroup v2 path like \"/system.slice/xmrig.service\" (as in \
                 /proc/PID/cgroup; leave it out to match any)",
                printable(cgroup)
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
    if let Some(when) = &rule.learnt_late
        && !is_rfc3339_utc(when)
    {
        return Err(problem(
            "learnt_late",
            format!(
                "learnt_late {:?} is not an RFC 3339 time in UTC like \"2026-11-24T12:00:00Z\" \
                 (remove the line once you reviewed the rule)",
                printable(when)
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
    if let Some(gap) = normal.longest_gap_seconds {
        positive("normal.longest_gap_seconds", gap)?;
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

impl Baseline {
    /// Checks what [`parse`](super::parse) checks after reading the TOML (without line numbers),
    /// e.g. before writing a baseline built in memory.
    pub fn validate(&self, origin: &str) -> Result<(), BaselineError> {
        check_version_number(i64::from(self.format_version), origin, None)?;
        validate(self).map_err(|invalid| invalid.into_error(self, origin, None))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::{
        baseline::{
            file::{BaselineError, parse},
            model::{Rule, RuleIdentity},
            test_support::{parse_error, sample, with_rule},
        },
        naming::App,
    };

    #[test]
    fn packet_socket_tables_are_checked_and_placed() {
        let file = |table: &str| format!("format_version = 1\n\n[[packet_socket]]\n{table}");
        for (table, expected) in [
            (
                "process = \"dhclient\"\nkind = \"packet\"\nprotocol = \"all\"\n",
                None,
            ),
            (
                "process = \"dhclient\"\nkind = \"afpacket\"\nprotocol = \"all\"\n",
                Some("test.toml, line 5: packet_socket 1: unknown kind \"afpacket\""),
            ),
            (
                "process = \"\"\nkind = \"raw\"\nprotocol = \"icmp\"\n",
                Some("test.toml, line 4: packet_socket 1: `process` is empty"),
            ),
            (
                "process = \"x\"\nkind = \"raw\"\nprotocol = \"ic mp\"\n",
                Some("test.toml, line 6: packet_socket 1: protocol \"ic mp\" is not one"),
            ),
            (
                "process = \"x\"\nkind = \"raw\"\nprotocol = \"1\"\nport = 3\n",
                Some("unknown field `port`"),
            ),
            (
                "process = \"x\"\nkind = \"raw\"\nprotocol = \"1\"\n\n[[packet_socket]]\n\
                 process = \"x\"\nkind = \"raw\"\nprotocol = \"1\"\n",
                Some("packet_socket 2: x holds a raw socket (1) is also packet_socket 1"),
            ),
        ] {
            match (parse(&file(table), "test.toml"), expected) {
                (Ok(_), None) => {}
                (Err(error), Some(expected)) => {
                    let message = error.to_string();
                    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
                }
                (result, expected) => panic!("{table}: {result:?}, expected {expected:?}"),
            }
        }
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
            "process = \"x\"\nsha256 = \"ABC\"\nremote = \"*\"\nprotocol = \"tcp\"\n",
        ));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(5), problem, .. }
                if problem.contains("not 64 lowercase hex digits")),
            "{error:?}"
        );
        let error = parse_error(&with_rule(
            "process = \"x\"\ncgroup = \"xmrig.service\"\nremote = \"*\"\nprotocol = \"tcp\"\n",
        ));
        assert!(
            matches!(&error, BaselineError::Rule { line: Some(5), problem, .. }
                if problem.contains("not a cgroup v2 path")),
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
}
