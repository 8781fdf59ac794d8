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
    "BitSecureAgentPollerStuck",
    "BitSecureNoBaseline",
    "BitSecureKernelEventsDropped",
    "BitSecureSeriesCapReached",
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

/// Every alert links its own section of docs/runbook.md (a `### AlertName` heading, whose
/// anchor is the lowercase name), and every runbook section is an alert's.
#[test]
fn every_alert_links_its_runbook_section() {
    let rules = read("bitsecure.rules.yml");
    let runbook = fs::read_to_string(prometheus_dir().join("../docs/runbook.md")).unwrap();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|name| name.trim().to_string())
        .collect();
    let mut alert = None;
    let mut linked = BTreeSet::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_string());
        }
        if let Some(url) = line.strip_prefix("runbook_url:") {
            let name = alert.clone().expect("a runbook_url outside an alert");
            let expected = format!("docs/runbook.md#{}\"", name.to_lowercase());
            assert!(url.trim().ends_with(&expected), "{name}: runbook_url {url}");
            linked.insert(name);
        }
    }
    let alerts: BTreeSet<String> = ALERTS.iter().map(|name| name.to_string()).collect();
    assert_eq!(linked, alerts, "alerts without a runbook_url");
    assert_eq!(sections, alerts, "runbook sections and alerts differ");
}

/// `bitsecure rules` prints the bundled file by default, and rules for another job and
/// runbook that promtool accepts.
#[test]
fn bitsecure_rules_fit_another_job_and_runbook() {
    let bundled = Command::new(bitsecure_test::agent::agent_binary())
        .arg("rules")
        .output()
        .unwrap();
    assert!(bundled.status.success());
    assert_eq!(
        String::from_utf8(bundled.stdout).unwrap(),
        read("bitsecure.rules.yml")
    );

    let fitted = Command::new(bitsecure_test::agent::agent_binary())
        .args([
            "rules",
            "--job",
            "rigs",
            "--runbook-base",
            "https://wiki.example/rb",
        ])
        .output()
        .unwrap();
    assert!(
        fitted.status.success(),
        "{}",
        String::from_utf8_lossy(&fitted.stderr)
    );
    let text = String::from_utf8(fitted.stdout).unwrap();
    assert!(text.contains("up{job=\"rigs\"}") && !text.contains("job=\"bitsecure\""));
    let path = bitsecure_test::process::scratch_dir().join("rigs.rules.yml");
    fs::write(&path, &text).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);

    let refused = Command::new(bitsecure_test::agent::agent_binary())
        .args(["rules", "--runbook-base", "wiki/runbook"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--runbook-base"));
}

/// amtool in `prometheus/`; its stdout.
fn amtool(args: &[&str]) -> String {
    let output = Command::new("amtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("amtool (Debian prometheus-alertmanager): run `cargo xtask setup`");
    assert!(
        output.status.success(),
        "amtool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The example Alertmanager config is valid, pages on critical and batches the rest for
/// review, and a real Alertmanager inhibits a rig's traffic alerts while its agent is down,
/// not another rig's.
#[test]
fn alertmanager_example_routes_and_inhibits() {
    const CONFIG: &str = "alertmanager.example.yml";
    amtool(&["check-config", CONFIG]);
    let route = |labels: &[&str]| {
        let mut args = vec!["config", "routes", "test", "--config.file", CONFIG];
        args.extend(labels);
        amtool(&args).trim().to_owned()
    };
    assert_eq!(
        route(&["alertname=BitSecureNameMoved", "severity=critical"]),
        "page-now"
    );
    assert_eq!(
        route(&["alertname=BitSecureUnexpectedForReview", "severity=info"]),
        "review"
    );

    let dir = bitsecure_test::process::scratch_dir().join("alertmanager");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let port = bitsecure_test::process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut alertmanager = Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            prometheus_dir().join(CONFIG).display()
        ))
        .arg(format!("--storage.path={}", dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager: run `cargo xtask setup`");
    let alertmanager_url = format!("--alertmanager.url={url}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Command::new("amtool")
        .args(["config", "show", &alertmanager_url])
        .output()
        .map_or(true, |output| !output.status.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Alertmanager did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for labels in [
        [
            "alertname=BitSecureAgentDown",
            "instance=rig1:9977",
            "severity=critical",
        ],
        [
            "alertname=BitSecureExpectedTrafficSilent",
            "instance=rig1:9977",
            "severity=critical",
        ],
        [
            "alertname=BitSecureExpectedTrafficSilent",
            "instance=rig2:9977",
            "severity=critical",
        ],
    ] {
        let mut args = vec!["alert", "add", &alertmanager_url];
        args.extend(labels);
        amtool(&args);
    }
    // Inhibition is computed when the API is asked: the states settle at once.
    let state_of = |alerts: &serde_json::Value, alertname: &str, instance: &str| {
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|alert| {
                alert["labels"]["alertname"] == alertname && alert["labels"]["instance"] == instance
            })
            .map(|alert| alert["status"]["state"].as_str().unwrap_or("").to_owned())
    };
    let mut states = Vec::new();
    while std::time::Instant::now() < deadline {
        let output = Command::new("curl")
            .args(["-sS", &format!("{url}/api/v2/alerts")])
            .output()
            .unwrap();
        let alerts: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if alerts.is_array() {
            states = vec![
                state_of(&alerts, "BitSecureAgentDown", "rig1:9977"),
                state_of(&alerts, "BitSecureExpectedTrafficSilent", "rig1:9977"),
                state_of(&alerts, "BitSecureExpectedTrafficSilent", "rig2:9977"),
            ];
            if states.iter().all(Option::is_some) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = alertmanager.kill();
    let _ = alertmanager.wait();
    let states: Vec<String> = states.into_iter().map(Option::unwrap_or_default).collect();
    assert_eq!(
        states,
        ["active", "suppressed", "active"],
        "agent down on rig1: its traffic alert is inhibited, rig2's is not"
    );
}
