//! `bitsecure baseline show`: a baseline listed for a person, rules numbered as in the file,
//! rates and durations in human units, every text from the file made safe to print.
//!
//! Presentation only: no reading, writing or checking.

use std::fmt;

use crate::{
    baseline::{
        model::{Baseline, Recording, Rule, printable},
        stats::RateStats,
    },
    human,
};

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
            0 => writeln!(f, "No rules")?,
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
            if let Some(when) = &rule.learnt_late {
                writeln!(
                    f,
                    "{indent}learnt late ({}) while the baseline settled: review it, then \
                     remove its learnt_late line",
                    printable(when)
                )?;
            }
            write_holder(f, rule, &indent)?;
            write_checks(f, rule, &indent)?;
            let Some(normal) = &rule.normal else {
                if rule.learnt_late.is_none() {
                    writeln!(f, "{indent}accepted by hand: no recorded normal")?;
                }
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
            if let Some(cadence) = normal.cadence_seconds {
                write!(f, ", periodic every {}", human::duration(cadence))?;
            }
            if let Some(bursts) = normal.bursts {
                write!(f, ", {bursts} bursts")?;
            }
            if let Some(gap) = normal.longest_gap_seconds {
                write!(f, ", quiet at most {} between them", human::duration(gap))?;
            }
            let rhythm = normal.rhythm();
            let step = baseline
                .recording
                .as_ref()
                .map_or(1.0, |recording| recording.step_seconds);
            match crate::baseline::stats::expected_gap_seconds(&rhythm, step) {
                // Rare traffic: nothing to miss.
                None => writeln!(f, "; rare: never reported silent")?,
                Some(_) => writeln!(f)?,
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
        if !baseline.packet_sockets.is_empty() {
            writeln!(f, "Expected packet and raw sockets:")?;
            for rule in &baseline.packet_sockets {
                write!(f, "  - {}", rule.describe())?;
                match &rule.note {
                    Some(note) => writeln!(f, " ({})", printable(note))?,
                    None => writeln!(f)?,
                }
                if let Some(exe) = &rule.exe {
                    writeln!(f, "    exe {}", printable(exe))?;
                }
            }
        }
        Ok(())
    }
}

/// The program a rule expects, and what it leaves open (what a re-record would pin).
fn write_holder(f: &mut fmt::Formatter<'_>, rule: &Rule, indent: &str) -> fmt::Result {
    if let Some(exe) = &rule.exe {
        writeln!(f, "{indent}exe {}", printable(exe))?;
    }
    if let Some(sha256) = &rule.sha256 {
        writeln!(f, "{indent}sha256 {}", printable(sha256))?;
    }
    if let Some(cgroup) = &rule.cgroup {
        writeln!(f, "{indent}cgroup {}", printable(cgroup))?;
    }
    let open: Vec<&str> = [
        ("exe", rule.exe.is_none()),
        ("sha256", rule.sha256.is_none()),
        ("cgroup", rule.cgroup.is_none()),
    ]
    .into_iter()
    .filter_map(|(field, missing)| missing.then_some(field))
    .collect();
    if open.is_empty() {
        return Ok(());
    }
    let consequence = if rule.exe.is_none() || rule.cgroup.is_none() {
        format!(
            "a program named {} matches from any {}",
            printable(&rule.process),
            if rule.exe.is_none() && rule.cgroup.is_none() {
                "executable and cgroup"
            } else if rule.exe.is_none() {
                "executable"
            } else {
                "cgroup"
            }
        )
    } else {
        "a changed executable goes unnoticed".to_owned()
    };
    writeln!(
        f,
        "{indent}any {}: {consequence} (a re-record pins what it sees)",
        open.join(", ")
    )
}

/// The payout account, networks and names a rule checks, and those a re-record would add.
fn write_checks(f: &mut fmt::Formatter<'_>, rule: &Rule, indent: &str) -> fmt::Result {
    if let Some(account) = &rule.account {
        writeln!(f, "{indent}logs in as {}", printable(account))?;
    }
    if let Some(prefixes) = &rule.prefixes {
        writeln!(f, "{indent}within {}", prefixes.join(", "))?;
    }
    if let Some(asks) = &rule.asks {
        let names: Vec<String> = asks.iter().map(|name| printable(name)).collect();
        writeln!(f, "{indent}asks for {}", names.join(", "))?;
    }
    let by_name = rule
        .remote_matcher()
        .is_ok_and(|remote| matches!(remote, crate::baseline::matching::RemoteMatcher::Name(_)));
    let app = rule.app.as_deref();
    let open: Vec<&str> = [
        (
            "any account: another payee goes unnoticed",
            app == Some("stratum") && rule.account.is_none(),
        ),
        (
            "any address for the name: a hijacked name goes unnoticed",
            by_name && !rule.remote.starts_with('*') && rule.prefixes.is_none(),
        ),
        (
            "any name asked: new names go unlisted",
            app == Some("dns") && rule.asks.is_none(),
        ),
    ]
    .into_iter()
    .filter_map(|(text, open)| open.then_some(text))
    .collect();
    for text in open {
        writeln!(f, "{indent}{text} (a re-record records it)")?;
    }
    Ok(())
}

/// One line saying when and where a baseline was recorded.
pub(super) fn describe_recording(recording: &Recording) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::test_support::sample;

    #[test]
    fn show_says_which_checks_a_rule_makes_and_which_a_re_record_would_add() {
        let open = Rule {
            app: Some("stratum".to_owned()),
            ..Rule::new("xmrig", "pool.example.org", Some(3333), "tcp")
        };
        let pinned = Rule {
            account: Some("wallet.rig01".to_owned()),
            prefixes: Some(vec!["203.0.113.0/24".to_owned()]),
            ..open.clone()
        };
        let dns = Rule {
            app: Some("dns".to_owned()),
            asks: Some(vec!["pool.example.org".to_owned()]),
            ..Rule::new("xmrig", "10.0.0.53", Some(53), "udp")
        };
        let text = show(&Baseline::new(None, vec![open, pinned, dns]));
        for expected in [
            "     any account: another payee goes unnoticed (a re-record records it)",
            "     any address for the name: a hijacked name goes unnoticed (a re-record records it)",
            "     logs in as wallet.rig01",
            "     within 203.0.113.0/24",
            "     asks for pool.example.org",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected:?} in\n{text}"
            );
        }
        assert_eq!(text.matches("any account").count(), 1, "{text}");
        assert!(!text.contains("any name asked"), "{text}");
    }

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
            "     any sha256, cgroup: a program named xmrig matches from any cgroup (a re-record pins what it sees)",
            "     sent:     mean 120.5 B/s, p95 800.0 B/s, max 2.4 kB/s",
            "     received: mean 10.0 B/s, p95 80.0 B/s, max 240.0 B/s",
            "     active 12% of the time, 2 connections per hour, periodic every 5 min",
            "     profile: 60 bins of 5 s (a 5 min cycle)",
            "  2. chronyd → [fd00::/64]:*/udp",
            "     active 100% of the time, 0 connections per hour",
            "  3. sshd → *:22/tcp (admin)",
            "     any exe, sha256, cgroup: a program named sshd matches from any executable and cgroup (a re-record pins what it sees)",
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
}
