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
            write_holder(f, rule, &indent)?;
            if let Some(account) = &rule.account {
                writeln!(f, "{indent}logs in as {}", printable(account))?;
            }
            if let Some(asks) = &rule.asks {
                let names: Vec<String> = asks.iter().map(|name| printable(name)).collect();
                writeln!(f, "{indent}asks for {}", names.join(", "))?;
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
