//! The Prometheus files in `prometheus/`: promtool checks the alert rules and both example
//! configurations and runs the rules' unit tests; every alert must have a unit test in which it
//! fires, and the alert names must stay the ones the demo and the end-to-end test rely on.

use std::{collections::BTreeSet, fs, io::ErrorKind, path::PathBuf, process::Command};

/// The alert names other code depends on.
const ALERTS: &[&str] = &[
    "BitSecureUnexpectedDestination",
    "BitSecureUnexpectedForReview",
    "BitSecureNewProcessOnNetwork",
    "BitSecureExpectedTrafficSilent",
    "BitSecureRateDeviation",
    "BitSecureAgentDown",
    "BitSecureAgentMissing",
    "BitSecureAgentPollFailing",
    "BitSecureKernelMapNearFull",
    "BitSecureFlowsDropped",
    "BitSecureBaselineReloadFailed",
    "BitSecureProgramDetached",
    "BitSecureUnexpectedPacketSocket",
    "BitSecureUnattributedTraffic",
    "BitSecureImpostorProcess",
    "BitSecureExecutableChanged",
    "BitSecurePayoutIdentityChanged",
    "BitSecureDnsTunnel",
    "BitSecureNameMoved",
];

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../prometheus")
}

/// Runs promtool in `prometheus/`; it must succeed without warnings (a warning is, e.g., a
/// file_sd file that does not exist).
fn promtool(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            panic!("promtool not found: run `cargo xtask setup`")
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && !text.contains("WARNING"),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
}

fn read(path: &str) -> String {
    let path = prometheus_dir().join(path);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn rules_are_valid() {
    promtool(&["check", "rules", "bitsecure.rules.yml"]);
}

#[test]
fn rule_unit_tests_pass() {
    promtool(&["test", "rules", "tests/bitsecure.rules.test.yml"]);
}

#[test]
fn example_configs_are_valid() {
    promtool(&["check", "config", "scrape-single.yml"]);
    promtool(&["check", "config", "scrape-fleet.yml"]);
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires() {
    let alerts: BTreeSet<String> = read("bitsecure.rules.yml")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect();
    let contract: BTreeSet<String> = ALERTS.iter().map(|name| name.to_string()).collect();
    assert_eq!(alerts, contract, "the alert names are a fixed contract");

    // An `exp_alerts:` whose next line is a list entry (`- exp_labels:`…) expects the alert of
    // the latest `alertname:` to fire; `exp_alerts: []` or none expects silence.
    let tests = read("tests/bitsecure.rules.test.yml");
    let lines: Vec<&str> = tests
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut alertname = None;
    let mut firing = BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim_start_matches("- ");
        if line.starts_with("eval_time:") {
            alertname = None;
        }
        if let Some(name) = line.strip_prefix("alertname:") {
            alertname = Some(name.trim().to_string());
        }
        let expects_alerts = line == "exp_alerts:"
            && lines
                .get(index + 1)
                .is_some_and(|next| next.starts_with("- exp_"));
        if expects_alerts && let Some(name) = &alertname {
            firing.insert(name.clone());
        }
    }
    let untested: Vec<&String> = alerts.difference(&firing).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test where they fire: {untested:?}"
    );
}
