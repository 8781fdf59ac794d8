//! `bitsecure baseline merge`: one baseline for a farm of identical rigs, from the baselines
//! each rig recorded. A traffic class (rule identity) any rig expects is expected on all of
//! them; what normal looked like is combined so that no rig's normal alerts on the merged file:
//!
//! - rates: mean of the means, the highest p95 and max (the deviation alert compares with
//!   p95); connections per hour: the highest;
//! - rhythm: the active fraction's mean, the fewest bursts and the longest quiet spell (a rule
//!   rare on one rig stays rare; the silence alert waits as long as the quietest rig needs); a
//!   cadence only when every rig has one within 10 % of the others (their mean), else none;
//! - a profile only when all have the same bins (their mean), else none;
//! - names' networks and asked names: their union.
//!
//! What cannot be combined without losing a check is left out and reported, never guessed:
//! different executable hashes (each rig would then report the others' as changed) and
//! different payout accounts (a farm's workers are often named per rig). A rule only some rigs
//! have is kept and reported (it may be one rig's odd traffic).

use std::collections::BTreeMap;

use super::super::{
    model::{Baseline, Normal, PacketSocketRule, Profile, Recording, Rule, RuleIdentity},
    stats::RateStats,
};

/// Most names a merged rule's `asks` keeps (as many as learning records).
const MAX_ASKS: usize = 256;

/// A merged baseline and what the merge had to report.
#[derive(Debug)]
pub struct Merged {
    pub baseline: Baseline,
    /// One line per rule or value that differed between the inputs, naming them.
    pub conflicts: Vec<String>,
}

/// Merges `inputs` (a name for messages, e.g. the file's path, and its baseline).
pub fn merge(inputs: &[(String, Baseline)]) -> Merged {
    let mut conflicts = Vec::new();
    let mut by_identity: BTreeMap<RuleIdentity, Vec<(&str, &Rule)>> = BTreeMap::new();
    for (origin, baseline) in inputs {
        for rule in &baseline.rules {
            by_identity
                .entry(rule.identity())
                .or_default()
                .push((origin, rule));
        }
    }
    let rules = by_identity
        .values()
        .map(|copies| merge_rule(copies, inputs.len(), &mut conflicts))
        .collect();
    let mut packet_sockets: Vec<PacketSocketRule> = Vec::new();
    for (_, baseline) in inputs {
        for rule in &baseline.packet_sockets {
            let same = |known: &PacketSocketRule| {
                (&known.process, &known.exe, &known.kind, &known.protocol)
                    == (&rule.process, &rule.exe, &rule.kind, &rule.protocol)
            };
            if !packet_sockets.iter().any(same) {
                packet_sockets.push(rule.clone());
            }
        }
    }
    let mut baseline = Baseline::new(merge_recording(inputs), rules);
    baseline.packet_sockets = packet_sockets;
    Merged {
        baseline,
        conflicts,
    }
}

fn merge_recording(inputs: &[(String, Baseline)]) -> Option<Recording> {
    let recordings: Vec<&Recording> = inputs
        .iter()
        .filter_map(|(_, baseline)| baseline.recording.as_ref())
        .collect();
    let first = recordings.first()?;
    let mut hosts: Vec<&str> = recordings.iter().map(|r| r.host.as_str()).collect();
    hosts.dedup();
    Some(Recording {
        started_at: recordings
            .iter()
            .map(|r| r.started_at.clone())
            .min()
            .unwrap_or_else(|| first.started_at.clone()),
        duration_seconds: recordings
            .iter()
            .map(|r| r.duration_seconds)
            .fold(0.0, f64::max),
        step_seconds: first.step_seconds,
        host: format!("farm: {}", hosts.join(", ")),
    })
}

fn merge_rule(copies: &[(&str, &Rule)], rigs: usize, conflicts: &mut Vec<String>) -> Rule {
    let (_, first) = copies[0];
    let what = describe(first);
    let origins = |filter: &dyn Fn(&Rule) -> bool| {
        copies
            .iter()
            .filter(|(_, rule)| filter(rule))
            .map(|(origin, _)| *origin)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if copies.len() < rigs {
        conflicts.push(format!(
            "{what}: only in {} (kept: expected on every rig)",
            origins(&|_| true)
        ));
    }
    let mut merged = first.clone();
    // Values a check compares with: kept only when every copy agrees.
    let agreed = |value: fn(&Rule) -> &Option<String>, label: &str, advice: &str| {
        let values: Vec<&Option<String>> = copies.iter().map(|(_, rule)| value(rule)).collect();
        if values.iter().all(|value| *value == values[0]) {
            return (values[0].clone(), None);
        }
        let listed: Vec<String> = copies
            .iter()
            .map(|(origin, rule)| {
                format!("{origin}: {}", value(rule).as_deref().unwrap_or("(any)"))
            })
            .collect();
        (
            None,
            Some(format!(
                "{what}: {label} differs ({}); left out, so not checked: {advice}",
                listed.join("; ")
            )),
        )
    };
    let (sha256, conflict) = agreed(
        |rule| &rule.sha256,
        "sha256",
        "install the same build on every rig, then `bitsecure baseline accept --executable PATH` on one and merge again",
    );
    merged.sha256 = sha256;
    conflicts.extend(conflict);
    let (account, conflict) = agreed(
        |rule| &rule.account,
        "payout account",
        "give the rigs one account, or keep one baseline per rig if the account is to be checked",
    );
    merged.account = account;
    conflicts.extend(conflict);

    merged.prefixes = union(
        copies.iter().map(|(_, rule)| rule.prefixes.as_ref()),
        usize::MAX,
    );
    merged.asks = union(copies.iter().map(|(_, rule)| rule.asks.as_ref()), MAX_ASKS);
    let mut notes: Vec<&str> = copies
        .iter()
        .filter_map(|(_, rule)| rule.note.as_deref())
        .collect();
    notes.dedup();
    merged.note = (!notes.is_empty()).then(|| notes.join("; "));
    merged.learnt_late = copies
        .iter()
        .filter_map(|(_, rule)| rule.learnt_late.clone())
        .min();

    let normals: Vec<&Normal> = copies
        .iter()
        .filter_map(|(_, rule)| rule.normal.as_ref())
        .collect();
    merged.normal = merge_normal(&normals, &what, conflicts);
    let profiles: Vec<&Profile> = copies
        .iter()
        .filter_map(|(_, rule)| rule.profile.as_ref())
        .collect();
    merged.profile = merge_profile(&profiles, copies.len(), &what, conflicts);
    merged
}

/// The union of lists, sorted, at most `cap` entries; `None` when any copy has none (`None`
/// means "any", which the union of "any" and a list still is).
fn union<'a>(
    lists: impl Iterator<Item = Option<&'a Vec<String>>>,
    cap: usize,
) -> Option<Vec<String>> {
    let mut all = Vec::new();
    for list in lists {
        all.extend(list?.iter().cloned());
    }
    all.sort();
    all.dedup();
    all.truncate(cap);
    Some(all)
}

fn merge_normal(normals: &[&Normal], what: &str, conflicts: &mut Vec<String>) -> Option<Normal> {
    let first = normals.first()?;
    let count = normals.len() as f64;
    let rates = |pick: fn(&Normal) -> &RateStats| RateStats {
        mean: normals.iter().map(|n| pick(n).mean).sum::<f64>() / count,
        p95: normals.iter().map(|n| pick(n).p95).fold(0.0, f64::max),
        max: normals.iter().map(|n| pick(n).max).fold(0.0, f64::max),
    };
    let cadences: Vec<f64> = normals.iter().filter_map(|n| n.cadence_seconds).collect();
    let cadence_seconds = if cadences.len() == normals.len() {
        let mean = cadences.iter().sum::<f64>() / count;
        if cadences.iter().all(|c| (c - mean).abs() <= 0.1 * mean) {
            Some(mean)
        } else {
            conflicts.push(format!(
                "{what}: cadence differs ({}); left out (its silence and cadence checks use the quiet spells instead)",
                cadences
                    .iter()
                    .map(|c| format!("{c:.0} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    } else {
        None
    };
    Some(Normal {
        sent_bytes_per_second: rates(|n| &n.sent_bytes_per_second),
        received_bytes_per_second: rates(|n| &n.received_bytes_per_second),
        active_fraction: normals.iter().map(|n| n.active_fraction).sum::<f64>() / count,
        connections_per_hour: normals
            .iter()
            .map(|n| n.connections_per_hour)
            .fold(0.0, f64::max),
        cadence_seconds,
        bursts: normals
            .iter()
            .map(|n| n.bursts)
            .min()
            .unwrap_or(first.bursts),
        longest_gap_seconds: normals
            .iter()
            .filter_map(|n| n.longest_gap_seconds)
            .reduce(f64::max),
    })
}

fn merge_profile(
    profiles: &[&Profile],
    copies: usize,
    what: &str,
    conflicts: &mut Vec<String>,
) -> Option<Profile> {
    let first = profiles.first()?;
    let same_bins = profiles.len() == copies
        && profiles
            .iter()
            .all(|p| p.step_seconds == first.step_seconds && p.sent.len() == first.sent.len());
    if !same_bins {
        conflicts.push(format!(
            "{what}: cycle profiles differ in bins or are missing on some rigs; left out (the reference line shows the mean rate)"
        ));
        return None;
    }
    let count = profiles.len() as f64;
    let mean = |pick: fn(&Profile) -> &Vec<f64>| {
        (0..first.sent.len())
            .map(|bin| profiles.iter().map(|p| pick(p)[bin]).sum::<f64>() / count)
            .collect()
    };
    Some(Profile {
        step_seconds: first.step_seconds,
        sent: mean(|p| &p.sent),
        received: mean(|p| &p.received),
    })
}

fn describe(rule: &Rule) -> String {
    let port = rule.port.map(|port| format!(":{port}")).unwrap_or_default();
    format!("{} → {}{port}/{}", rule.process, rule.remote, rule.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{
        file::{parse, render},
        test_support::{chronyd_rule, stats, xmrig_rule},
    };

    fn rig(host: &str, rules: Vec<Rule>) -> (String, Baseline) {
        let recording = Recording {
            started_at: format!("2026-12-0{}T00:00:00Z", host.len() % 9),
            duration_seconds: 1800.0,
            step_seconds: 5.0,
            host: host.to_owned(),
        };
        (
            format!("{host}.toml"),
            Baseline::new(Some(recording), rules),
        )
    }

    #[test]
    fn identical_rigs_merge_to_their_baseline_without_conflicts() {
        let inputs = [
            rig("rig1", vec![xmrig_rule(), chronyd_rule()]),
            rig("rig2", vec![chronyd_rule(), xmrig_rule()]),
        ];
        let merged = merge(&inputs);
        assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
        assert_eq!(merged.baseline.rules.len(), 2);
        let xmrig = merged
            .baseline
            .rules
            .iter()
            .find(|r| r.process == "xmrig")
            .unwrap();
        assert_eq!(xmrig, &xmrig_rule());
        assert_eq!(merged.baseline.recording.unwrap().host, "farm: rig1, rig2");
    }

    #[test]
    fn rates_combine_so_no_rigs_normal_alerts() {
        let mut busy = xmrig_rule();
        let normal = busy.normal.as_mut().unwrap();
        normal.sent_bytes_per_second = stats(300.0, 2000.0, 5000.0);
        normal.received_bytes_per_second = stats(20.0, 60.0, 100.0);
        normal.active_fraction = 0.5;
        normal.cadence_seconds = Some(320.0);
        normal.bursts = Some(2);
        normal.longest_gap_seconds = Some(900.0);
        let merged = merge(&[rig("rig1", vec![xmrig_rule()]), rig("rig2", vec![busy])]);
        let normal = merged.baseline.rules[0].normal.clone().unwrap();
        // Mean of means, highest p95 and max, in each direction.
        assert_eq!(normal.sent_bytes_per_second, stats(210.25, 2000.0, 5000.0));
        assert_eq!(normal.received_bytes_per_second, stats(15.0, 80.0, 240.0));
        assert!((normal.active_fraction - 0.31).abs() < 1e-9);
        // 300 s and 320 s are within 10 % of their mean.
        assert_eq!(normal.cadence_seconds, Some(310.0));
        // The fewest bursts (None is "not recorded": the fewest is then unknown) and the
        // longest quiet spell.
        assert_eq!(normal.bursts, None);
        assert_eq!(normal.longest_gap_seconds, Some(900.0));
        // Profiles of the same bins: their mean.
        let profile = merged.baseline.rules[0].profile.clone().unwrap();
        assert_eq!(profile.sent.len(), 60);
        assert_eq!(profile.sent[1], 1500.0);
        assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
    }

    #[test]
    fn what_cannot_be_combined_is_left_out_and_reported() {
        let mut other = xmrig_rule();
        other.sha256 = Some("a".repeat(64));
        other.account = Some("wallet.rig2".into());
        other.normal.as_mut().unwrap().cadence_seconds = Some(600.0);
        other.profile.as_mut().unwrap().step_seconds = 10.0;
        let mut first = xmrig_rule();
        first.account = Some("wallet.rig1".into());
        let merged = merge(&[
            rig("rig1", vec![first, chronyd_rule()]),
            rig("rig2", vec![other]),
        ]);
        let xmrig = merged
            .baseline
            .rules
            .iter()
            .find(|r| r.process == "xmrig")
            .unwrap();
        assert_eq!(xmrig.sha256, None);
        assert_eq!(xmrig.account, None);
        assert_eq!(xmrig.normal.as_ref().unwrap().cadence_seconds, None);
        assert_eq!(xmrig.profile, None);
        let report = merged.conflicts.join("\n");
        for expected in [
            "sha256 differs (rig1.toml: (any); rig2.toml: aaaa",
            "payout account differs (rig1.toml: wallet.rig1; rig2.toml: wallet.rig2)",
            "cadence differs (300 s, 600 s)",
            "cycle profiles differ",
            "chronyd",
            "only in rig1.toml",
        ] {
            assert!(report.contains(expected), "{expected:?} not in:\n{report}");
        }
        // The one-rig rule is kept.
        assert_eq!(merged.baseline.rules.len(), 2);
    }

    #[test]
    fn names_networks_and_asked_names_are_united_and_the_file_reads_back() {
        let mut a = xmrig_rule();
        a.remote = "pool.example.org".into();
        a.prefixes = Some(vec!["10.0.1.0/24".into()]);
        let mut b = a.clone();
        b.prefixes = Some(vec!["10.0.2.0/24".into(), "10.0.1.0/24".into()]);
        let merged = merge(&[rig("rig1", vec![a]), rig("rig2", vec![b])]);
        assert_eq!(
            merged.baseline.rules[0].prefixes,
            Some(vec!["10.0.1.0/24".into(), "10.0.2.0/24".into()])
        );
        let text = render(&merged.baseline);
        assert_eq!(parse(&text, "merged").unwrap(), merged.baseline);
    }
}
