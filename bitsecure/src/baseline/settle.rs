//! Settling: the days after learning, when rare-but-normal traffic (the lookup at a
//! reconnect, an hourly job, a restart's start-up) shows up for the first time. A fixed
//! learning window misses it, and each would wake the user once. While the baseline settles,
//! each *low-risk* departure joins the baseline as a rule marked `learnt_late` (for review)
//! instead of being listed; medium and high risk never do, whatever the state.
//!
//! The baseline settles until no class joined it for `baseline.settle_quiet_seconds`, and at
//! most `baseline.settle_max_seconds` after learning ended. Both instants come from the file
//! (the recording's end, the `learnt_late` times), so a restarted agent goes on where it was.
//!
//! Pure: a baseline, the unexpected list and the time in; a state and rules out.

use serde::{Deserialize, Serialize};

use super::model::{Baseline, Rule};
use super::monitor::Unexpected;
use super::risk::Risk;

/// How long the baseline settles (`baseline.settle_quiet_seconds`, `settle_max_seconds`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SettleConfig {
    /// Settling ends once no class joined the baseline for this long; 0 = never settle.
    pub quiet_seconds: f64,
    /// ...and at the latest this long after learning ended.
    pub max_seconds: f64,
}

impl Default for SettleConfig {
    fn default() -> Self {
        Self {
            quiet_seconds: 6.0 * 3600.0,
            max_seconds: 7.0 * 86_400.0,
        }
    }
}

/// Where a baseline in force stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Low-risk newcomers join the baseline (marked `learnt_late`).
    Settling,
    /// Every newcomer is listed (and high risk pages).
    Stable,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Settling => "settling",
            Stage::Stable => "stable",
        }
    }
}

/// The state of a baseline in force, with its evidence (served as JSON, shown by `bitsecure
/// baseline status`, exported as metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Maturity {
    pub stage: Stage,
    pub rules: usize,
    /// Rules the agent added while settling, not yet reviewed (their `learnt_late` line is
    /// still there).
    pub learnt_late: usize,
    /// Seconds since the last class joined the baseline (learning's end, or the latest rule
    /// learnt late); `None` for a baseline that was not recorded (written by hand).
    pub quiet_seconds: Option<f64>,
    /// The quiet time that ends settling.
    pub quiet_needed_seconds: f64,
    /// While settling: when it ends at the latest (Unix time).
    pub settles_by_unix: Option<f64>,
}

impl Maturity {
    /// One line for people: "settling: no new class for 2 h (stable after 6 h without one, by
    /// 2026-12-14 at the latest); 14 rules, 3 learnt late".
    pub fn describe(&self) -> String {
        let quiet = self.quiet_seconds.map_or_else(
            || "written by hand".to_owned(),
            |quiet| format!("no new class for {}", crate::human::duration(quiet)),
        );
        let late = match self.learnt_late {
            0 => String::new(),
            n => format!(", {n} learnt late (review them: `bitsecure baseline show`)"),
        };
        match self.stage {
            Stage::Stable => format!("stable: {quiet}; {} rules{late}", self.rules),
            Stage::Settling => format!(
                "settling: {quiet} (stable after {} without one{}); {} rules{late}",
                crate::human::duration(self.quiet_needed_seconds),
                self.settles_by_unix
                    .and_then(|unix| jiff::Timestamp::from_second(unix as i64).ok())
                    .map(|when| format!(", {} at the latest", when.strftime("%Y-%m-%d %H:%M UTC")))
                    .unwrap_or_default(),
                self.rules
            ),
        }
    }
}

fn unix_of(text: &str) -> Option<f64> {
    let timestamp: jiff::Timestamp = text.parse().ok()?;
    Some(timestamp.as_millisecond() as f64 / 1000.0)
}

/// Where `baseline` stands at `now_unix`.
pub fn maturity(baseline: &Baseline, config: &SettleConfig, now_unix: f64) -> Maturity {
    let learning_end = baseline.recording.as_ref().and_then(|recording| {
        Some(unix_of(&recording.started_at)? + recording.duration_seconds.max(0.0))
    });
    let late: Vec<f64> = baseline
        .rules
        .iter()
        .filter_map(|rule| rule.learnt_late.as_deref().and_then(unix_of))
        .collect();
    let last_join = late.iter().copied().chain(learning_end).reduce(f64::max);
    let quiet = last_join.map(|last| (now_unix - last).max(0.0));
    let settles_by = learning_end.map(|end| end + config.max_seconds);
    let settling = config.quiet_seconds > 0.0
        && settles_by.is_some_and(|by| now_unix < by)
        && quiet.is_some_and(|quiet| quiet < config.quiet_seconds);
    Maturity {
        stage: if settling {
            Stage::Settling
        } else {
            Stage::Stable
        },
        rules: baseline.rules.len(),
        learnt_late: baseline
            .rules
            .iter()
            .filter(|rule| rule.learnt_late.is_some())
            .count(),
        quiet_seconds: quiet,
        quiet_needed_seconds: config.quiet_seconds,
        settles_by_unix: settling.then_some(settles_by).flatten(),
    }
}

/// Whether a settling baseline learns this entry: low risk, and neither an impostor nor a
/// changed payout, whatever their grade.
pub fn learns(entry: &Unexpected) -> bool {
    entry.risk == Risk::Low && entry.impostor_of.is_none() && entry.expected_account.is_none()
}

/// The rules that make the entries of the unexpected list a settling baseline learns
/// ([`learns`]) expected, marked learnt at `now_text` (RFC 3339).
pub fn late_rules(unexpected: &[Unexpected], now_text: &str) -> Vec<Rule> {
    let mut seen = std::collections::HashSet::new();
    unexpected
        .iter()
        .filter(|entry| learns(entry))
        .map(|entry| {
            let note = format!("learnt while settling: {}", entry.reason.explain());
            Rule {
                learnt_late: Some(now_text.to_owned()),
                ..entry.rule(false, Some(&note))
            }
        })
        .filter(|rule| seen.insert(rule.identity()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::model::{FORMAT_VERSION, Recording};
    use crate::baseline::risk::Reason;
    use crate::naming::App;

    const END: f64 = 1_800_000_000.0;

    fn learnt(rules: Vec<Rule>) -> Baseline {
        let start = jiff::Timestamp::from_second(END as i64 - 600).unwrap();
        Baseline {
            format_version: FORMAT_VERSION,
            recording: Some(Recording {
                started_at: start.to_string(),
                duration_seconds: 600.0,
                step_seconds: 5.0,
                host: "rig".into(),
            }),
            rules,
            packet_sockets: Vec::new(),
        }
    }

    fn config() -> SettleConfig {
        SettleConfig {
            quiet_seconds: 3600.0,
            max_seconds: 86_400.0,
        }
    }

    #[test]
    fn a_baseline_settles_until_quiet_and_at_most_until_the_ceiling() {
        let pool = Rule::new("xmrig", "pool.example.org", Some(3333), "tcp");
        let baseline = learnt(vec![pool.clone()]);
        let at = |now: f64| maturity(&baseline, &config(), now);
        assert_eq!(at(END + 60.0).stage, Stage::Settling);
        assert_eq!(at(END + 60.0).quiet_seconds, Some(60.0));
        assert_eq!(at(END + 3599.0).stage, Stage::Settling);
        assert_eq!(at(END + 3600.0).stage, Stage::Stable);

        // A class learnt late restarts the quiet clock...
        let late_at = jiff::Timestamp::from_second(END as i64 + 3000).unwrap();
        let lookup = Rule {
            learnt_late: Some(late_at.to_string()),
            ..Rule::new("xmrig", "10.0.0.53", Some(53), "udp")
        };
        let baseline = learnt(vec![pool.clone(), lookup.clone()]);
        let now = maturity(&baseline, &config(), END + 3600.0);
        assert_eq!(now.stage, Stage::Settling);
        assert_eq!((now.learnt_late, now.rules), (1, 2));
        assert_eq!(now.quiet_seconds, Some(600.0));
        assert_eq!(now.settles_by_unix, Some(END + 86_400.0));
        assert!(
            now.describe()
                .starts_with("settling: no new class for 10 min"),
            "{}",
            now.describe()
        );
        // ...but never past the ceiling.
        let late_at = jiff::Timestamp::from_second(END as i64 + 86_000).unwrap();
        let baseline = learnt(vec![
            pool.clone(),
            Rule {
                learnt_late: Some(late_at.to_string()),
                ..lookup
            },
        ]);
        let then = maturity(&baseline, &config(), END + 86_400.0);
        assert_eq!(then.stage, Stage::Stable);
        assert!(
            then.describe().starts_with("stable: "),
            "{}",
            then.describe()
        );

        // Settling off, or a hand-written baseline: stable.
        let off = SettleConfig {
            quiet_seconds: 0.0,
            ..config()
        };
        assert_eq!(
            maturity(&learnt(vec![pool.clone()]), &off, END).stage,
            Stage::Stable
        );
        let by_hand = Baseline {
            recording: None,
            ..learnt(vec![pool])
        };
        let written = maturity(&by_hand, &config(), END);
        assert_eq!(
            (written.stage, written.quiet_seconds),
            (Stage::Stable, None)
        );
    }

    fn entry(process: &str, risk: Risk, reason: Reason) -> Unexpected {
        Unexpected {
            process: process.into(),
            exe: Some(format!("/usr/bin/{process}")),
            sha256: None,
            cgroup: Some("/system.slice/rig.service".into()),
            impostor_of: None,
            account: None,
            expected_account: None,
            remote: "10.0.0.53".into(),
            port: Some(53),
            protocol: "udp".into(),
            name: None,
            name_source: None,
            app: App::Dns,
            risk,
            reason,
            sent_bytes: 60,
            received_bytes: 120,
            first_seen: String::new(),
            last_seen: String::new(),
            first_seen_unix: 0.0,
            last_seen_unix: 0.0,
        }
    }

    #[test]
    fn only_low_risk_newcomers_are_learnt_late() {
        let list = [
            entry("xmrig", Risk::Low, Reason::SharedDestination),
            entry("backdoor", Risk::High, Reason::NewProcess),
            entry("curl", Risk::Medium, Reason::NewDestination),
            // Graded low by the user, but an impostor: never.
            Unexpected {
                impostor_of: Some(crate::baseline::monitor::Holder {
                    process: "xmrig".into(),
                    exe: None,
                    cgroup: None,
                }),
                ..entry("xmrig", Risk::Low, Reason::Impostor)
            },
        ];
        let rules = late_rules(&list, "2027-01-15T08:00:00Z");
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        assert_eq!(rule.describe(), "xmrig → 10.0.0.53:53/udp (dns)");
        assert_eq!(rule.exe.as_deref(), Some("/usr/bin/xmrig"));
        assert_eq!(rule.cgroup.as_deref(), Some("/system.slice/rig.service"));
        assert_eq!(rule.learnt_late.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert!(rule.note.as_deref().unwrap().contains("another program"));
        // It renders and parses back.
        let text = crate::baseline::file::render(&learnt(rules.clone()));
        let parsed = crate::baseline::file::parse(&text, "settled").unwrap();
        assert_eq!(parsed.rules, rules);
    }
}
