//! Fixtures shared by the baseline's unit tests: a temporary directory, sample rules and
//! baselines, a file that must survive edits, and shortcuts for parse errors and live flows.
//!
//! Test-only (compiled with `cfg(test)`); a fixture used by one file's tests stays there.

use std::net::IpAddr;

use super::{
    file::{BaselineError, parse},
    matching::LiveFlow,
    model::{Baseline, Normal, Profile, Recording, Rule, protocol_number},
    stats::RateStats,
};
use crate::naming::App;

pub(crate) use crate::fsutil::TempDir;

pub(crate) fn stats(mean: f64, p95: f64, max: f64) -> RateStats {
    RateStats { mean, p95, max }
}

pub(crate) fn xmrig_rule() -> Rule {
    Rule {
        process: "xmrig".to_owned(),
        exe: Some("/usr/bin/xmrig".to_owned()),
        sha256: None,
        cgroup: None,
        remote: "10.0.0.2".to_owned(),
        port: Some(3333),
        protocol: "tcp".to_owned(),
        app: None,
        account: None,
        prefixes: None,
        asks: None,
        note: Some("pool".to_owned()),
        learnt_late: None,
        normal: Some(Normal {
            sent_bytes_per_second: stats(120.5, 800.0, 2400.0),
            received_bytes_per_second: stats(10.0, 80.0, 240.0),
            active_fraction: 0.12,
            connections_per_hour: 2.0,
            cadence_seconds: Some(300.0),
            bursts: None,
            longest_gap_seconds: None,
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

pub(crate) fn chronyd_rule() -> Rule {
    Rule {
        exe: Some("/usr/sbin/chronyd".to_owned()),
        normal: Some(Normal {
            sent_bytes_per_second: stats(0.1 + 0.2, 1e-7, 1e300),
            received_bytes_per_second: stats(0.0, 0.0, 0.0),
            active_fraction: 1.0,
            connections_per_hour: 0.0,
            cadence_seconds: None,
            bursts: None,
            longest_gap_seconds: None,
        }),
        ..Rule::new("chronyd", "fd00::/64", None, "udp")
    }
}

pub(crate) fn sample() -> Baseline {
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

pub(crate) fn parse_error(text: &str) -> BaselineError {
    match parse(text, "test.toml") {
        Ok(baseline) => panic!("expected an error, parsed {baseline:?}"),
        Err(error) => error,
    }
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

/// Traffic of `process` to an address without a known name or application; the protocol by
/// name or number.
pub(crate) fn live<'a>(
    process: &'a str,
    remote: &str,
    port: Option<u16>,
    protocol: &str,
) -> LiveFlow<'a> {
    LiveFlow {
        process,
        exe: None,
        cgroup: None,
        remote: ip(remote),
        name: None,
        port,
        protocol: protocol_number(protocol).expect("a known protocol"),
        app: App::Unknown,
    }
}

/// A minimal valid file with one rule whose lines are given (after line 3, `[[rule]]`).
pub(crate) fn with_rule(rule_lines: &str) -> String {
    format!("format_version = 1\n\n[[rule]]\n{rule_lines}")
}

/// A hand-tuned file with comments and odd spacing, which appending rules must keep byte for
/// byte.
pub(crate) const EXISTING: &str = "# My rig's baseline. Hand-tuned: keep this comment!
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
