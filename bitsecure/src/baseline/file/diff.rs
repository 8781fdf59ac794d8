//! `bitsecure baseline diff`: rules added, removed and changed between two baselines, matched by
//! identity; a normal value counts as changed when it moved by more than a relative threshold.
//!
//! Presentation only: no reading, writing or checking.

use std::collections::HashMap;

use super::show::describe_recording;
use crate::{
    baseline::model::{Baseline, Normal, Recording, Rule, RuleIdentity, printable},
    human,
};

/// Relative change of a normal value (0.25 = 25 %) beyond which [`diff`] reports it.
pub const DIFF_RELATIVE_THRESHOLD: f64 = 0.25;

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
            lines.push(format!("- removed {}", describe_with_holder(rule)));
        }
    }
    for rule in &new.rules {
        match old_rules.get(&rule.identity()) {
            None => {
                added += 1;
                lines.push(format!("+ added   {}", describe_with_holder(rule)));
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

/// [`Rule::describe`] and the program the rule expects, if it names one.
fn describe_with_holder(rule: &Rule) -> String {
    let holder: Vec<String> = [("exe", &rule.exe), ("cgroup", &rule.cgroup)]
        .into_iter()
        .filter_map(|(field, value)| {
            value
                .as_ref()
                .map(|value| format!("{field} {}", printable(value)))
        })
        .collect();
    if holder.is_empty() {
        rule.describe()
    } else {
        format!("{} [{}]", rule.describe(), holder.join(", "))
    }
}

/// What changed between two versions of a rule, one line each.
fn rule_changes(old: &Rule, new: &Rule, threshold: f64) -> Vec<String> {
    let mut changes = Vec::new();
    let text = |value: &Option<String>| match value {
        Some(value) => format!("{:?}", printable(value)),
        None => "none".to_owned(),
    };
    // `exe` and `cgroup` are part of a rule's identity: a change there is a rule removed and
    // one added.
    if old.sha256 != new.sha256 {
        changes.push(format!(
            "sha256: {} → {}",
            text(&old.sha256),
            text(&new.sha256)
        ));
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

/// The differences for scripts (`bitsecure baseline diff --json`): the rules added and
/// removed, and for each rule in both whose content differs at all, the old and the new rule.
pub fn diff_json(old: &Baseline, new: &Baseline) -> serde_json::Value {
    let by_identity = |baseline: &Baseline| -> HashMap<RuleIdentity, Rule> {
        baseline
            .rules
            .iter()
            .rev() // the first of duplicates wins
            .map(|rule| (rule.identity(), rule.clone()))
            .collect()
    };
    let (old_rules, new_rules) = (by_identity(old), by_identity(new));
    let removed: Vec<&Rule> = old
        .rules
        .iter()
        .filter(|rule| !new_rules.contains_key(&rule.identity()))
        .collect();
    let added: Vec<&Rule> = new
        .rules
        .iter()
        .filter(|rule| !old_rules.contains_key(&rule.identity()))
        .collect();
    let changed: Vec<serde_json::Value> = new
        .rules
        .iter()
        .filter_map(|rule| {
            let before = old_rules.get(&rule.identity())?;
            (before != rule).then(|| serde_json::json!({ "old": before, "new": rule }))
        })
        .collect();
    serde_json::json!({
        "added": added,
        "removed": removed,
        "changed": changed,
        "recording_changed": old.recording != new.recording,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::test_support::sample;

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
        xmrig.sha256 = Some("ab".repeat(32));
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
            "    sha256: none → \"abababababababababababababababababababababababababababababababab\"",
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

        // Another executable or cgroup is another program: a rule removed, one added.
        let mut moved = sample();
        moved.rules[0].exe = Some("/opt/xmrig/xmrig".to_owned());
        moved.rules[0].cgroup = Some("/system.slice/xmrig.service".to_owned());
        let text = diff(&old, &moved);
        for expected in [
            "- removed xmrig → 10.0.0.2:3333/tcp [exe /usr/bin/xmrig]",
            "+ added   xmrig → 10.0.0.2:3333/tcp [exe /opt/xmrig/xmrig, cgroup /system.slice/xmrig.service]",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected:?} in\n{text}"
            );
        }

        let mut rerecorded = sample();
        if let Some(recording) = rerecorded.recording.as_mut() {
            recording.host = "rig-02".to_owned();
        }
        let text = diff(&old, &rerecorded);
        assert!(text.contains("recording: Recorded on rig-01"), "{text}");
        assert!(text.contains("        now Recorded on rig-02"), "{text}");
    }

    #[test]
    fn json_lists_added_removed_and_changed_rules() {
        let old = sample();
        let mut new = sample();
        let removed = new.rules.remove(0);
        new.rules[0].note = Some("edited".into());
        let mut added = removed.clone();
        added.port = Some(4444);
        new.rules.push(added);
        let json = diff_json(&old, &new);
        assert_eq!(json["removed"].as_array().unwrap().len(), 1);
        assert_eq!(json["removed"][0]["port"], removed.port.unwrap());
        assert_eq!(json["added"][0]["port"], 4444);
        assert_eq!(json["changed"].as_array().unwrap().len(), 1);
        assert_eq!(json["changed"][0]["new"]["note"], "edited");
        assert_eq!(
            diff_json(&old, &old)["changed"].as_array().unwrap().len(),
            0
        );
    }
}
