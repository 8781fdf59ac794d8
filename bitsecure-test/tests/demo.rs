//! End to end: the demo rig (`bitsecure-rig demo`, time-compressed 60x) with the real agent and
//! a real Prometheus loaded with the bundled alert rules. While the demo keeps running, this
//! test asks Prometheus itself — not the demo's printout — whether:
//!
//! - every query of the bundled Grafana dashboard (panels and variables) returns data;
//! - every alert rule loaded, evaluates without error, and none fired during normal operation;
//! - each anomaly raised its alerts, naming the right process (and remote), and nothing else
//!   fired meanwhile;
//! - the agent's /metrics passes `promtool check metrics`;
//!
//! then interrupts the demo like Ctrl-C and checks that it cleaned up everything it started.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitsecure::cli::client::{self as http_client, encode_query_value};
use bitsecure_test::{
    agent::agent_binary,
    cgroup::cgroup2_mount,
    process::{require_root, scratch_dir, sh},
};
use serde_json::Value;

const TIME_SCALE: &str = "60";
/// Anomalies of the demo and the (alert, process) each must raise.
const EXPECTED: [(&str, &[(&str, &str)]); 8] = [
    (
        "new-process",
        &[
            ("BitSecureUnexpectedDestination", "backdoor"),
            ("BitSecureNewProcessOnNetwork", "backdoor"),
        ],
    ),
    ("burst", &[("BitSecureRateDeviation", "rig-monitor")]),
    (
        "dns-tunnel",
        &[
            ("BitSecureDnsTunnel", "resolved"),
            ("BitSecureRateDeviation", "resolved"),
        ],
    ),
    (
        "impostor",
        &[
            ("BitSecureImpostorProcess", "xmrig"),
            ("BitSecureUnexpectedDestination", "xmrig"),
        ],
    ),
    (
        "payout",
        &[
            ("BitSecurePayoutIdentityChanged", "xmrig"),
            ("BitSecureUnexpectedDestination", "xmrig"),
        ],
    ),
    ("dns-hijack", &[("BitSecureNameMoved", "xmrig")]),
    ("miner-patched", &[("BitSecureExecutableChanged", "xmrig")]),
    (
        "miner-stopped",
        &[("BitSecureExpectedTrafficSilent", "xmrig")],
    ),
];
/// Names of the demo's rig processes, none of which may survive it.
const RIG_PROCESSES: [&str; 5] = ["xmrig", "rig-monitor", "resolved", "chronyd", "backdoor"];

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The running demo; interrupted and reaped on drop if the test fails half-way.
pub(crate) struct Demo {
    pub(crate) child: Child,
    pub(crate) output: PathBuf,
}

impl Demo {
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    pub(crate) fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

/// Prometheus' HTTP API at `address`.
pub(crate) struct Prometheus<'a>(pub(crate) &'a str);

impl Prometheus<'_> {
    pub(crate) fn api(&self, path: &str) -> Value {
        let body = http_client::get(self.0, path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let answer: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(answer["status"], "success", "{path}: {body}");
        answer["data"].clone()
    }

    /// The series `expr` returns at any time in [start, end].
    pub(crate) fn range(&self, expr: &str, start: f64, end: f64, step: f64) -> Vec<Value> {
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode_query_value(expr)
        ));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn demo_rig_raises_the_right_alerts_and_every_dashboard_query_has_data() {
    require_root();
    // One rig lab at a time (its namespaces, addresses and cgroup are fixed).
    let _lab = crate::RIG_LAB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = scratch_dir().join("demo");
    let (mut demo, timeline) = play(&["demo", "--time-scale", TIME_SCALE], &dir);
    let ready = &timeline["ready"];
    let prometheus = Prometheus(ready["prometheus"].as_str().unwrap());
    let agent = ready["agent"].as_str().unwrap();
    let scrape = ready["scrape_interval_seconds"].as_f64().unwrap();
    let phase = |name: &str| phase_of(&timeline, name);
    let (_, learned) = phase("learning");
    let end = phase("miner-stopped").1;

    check_metrics_with_promtool(agent);
    // The demo ends a phase as soon as it sees its alerts, so the last phase's data (the miner's
    // silence ratio above 1) can be newer than the last step-aligned point before `end`: the
    // same two scrapes of slack the alert checks below allow.
    check_dashboard_queries(&prometheus, learned, end + 2.0 * scrape, scrape);
    check_alert_rules(&prometheus);

    // Normal operation: nothing fires.
    let (normal_start, normal_end) = phase("normal");
    let firing = prometheus.range(
        r#"ALERTS{alertstate="firing"}"#,
        normal_start,
        normal_end,
        scrape,
    );
    assert!(
        firing.is_empty(),
        "alerts fired during normal operation: {firing:#?}"
    );

    // Each anomaly raises its alerts, for the right process; nothing else fires.
    let mut allowed: Vec<(&str, &str)> = Vec::new();
    for (name, expected) in EXPECTED {
        let (start, phase_end) = phase(name);
        // The demo ends a phase as soon as it sees the alerts; a step-aligned range query needs
        // a little slack to include that last evaluation (the next phase may start within it).
        let seen_by = phase_end + 2.0 * scrape;
        allowed.extend(expected.iter().copied());
        for (alert, process) in expected {
            let fired = prometheus.range(
                &format!(
                    r#"ALERTS{{alertstate="firing", alertname="{alert}", process="{process}"}}"#
                ),
                start,
                seen_by,
                scrape,
            );
            assert!(
                !fired.is_empty(),
                "{alert} for {process} did not fire during {name}\n{}",
                demo.output()
            );
            if *alert == "BitSecureUnexpectedDestination" {
                // The backdoor's new host; the impostor's is the pool it stole.
                let destination = if *process == "backdoor" {
                    ("10.77.9.2", "4444")
                } else {
                    ("10.77.1.2", "3333")
                };
                // Each pages for the reason it is not expected, all high risk (an earlier
                // phase's alert for the same process may still fire beside it).
                let reason = match name {
                    "new-process" => "new-process",
                    "impostor" => "impostor",
                    _ => "payout-changed",
                };
                let labels = fired
                    .iter()
                    .map(|series| &series["metric"])
                    .find(|labels| labels["reason"].as_str() == Some(reason))
                    .unwrap_or_else(|| panic!("{name}: no {alert} for {reason}: {fired:#?}"));
                assert_eq!(labels["risk"].as_str(), Some("high"), "{name}: {labels}");
                assert_eq!(
                    (
                        labels["remote"].as_str(),
                        labels["port"].as_str(),
                        labels["protocol"].as_str()
                    ),
                    (Some(destination.0), Some(destination.1), Some("tcp")),
                    "the alert names the destination"
                );
            }
            if *alert == "BitSecurePayoutIdentityChanged" {
                assert_eq!(
                    fired[0]["metric"]["account"].as_str(),
                    Some("4ThiefsWallet.rig01"),
                    "the alert names the new account"
                );
            }
            if *alert == "BitSecureNameMoved" {
                let labels = &fired[0]["metric"];
                assert_eq!(
                    (labels["name"].as_str(), labels["remote"].as_str()),
                    (Some("pool.rig.example"), Some("10.77.6.2")),
                    "the alert names the pool's name and the hijacker's address"
                );
            }
            if *alert == "BitSecureImpostorProcess" {
                let exe = fired[0]["metric"]["exe"].as_str().unwrap_or_default();
                assert!(
                    exe.ends_with("/bin/.cache/xmrig"),
                    "the alert names the impostor's executable: {exe}"
                );
            }
        }
        for series in prometheus.range(r#"ALERTS{alertstate="firing"}"#, start, phase_end, scrape) {
            let label = |key: &str| {
                series["metric"][key]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            let (alert, process) = (label("alertname"), label("process"));
            assert!(
                allowed.iter().any(|(a, p)| *a == alert && *p == process),
                "unexpected alert during {name}: {}",
                series["metric"]
            );
        }
    }

    // The miner's own lookup at its reconnect (normal phase) joined the baseline while it
    // settled: a rule of its own, marked for review, and never an alert (checked above).
    let baseline = std::fs::read_to_string(dir.join("work").join("baseline.toml")).unwrap();
    let late = crate::learnt_late(&baseline);
    assert!(
        late.iter()
            .any(|rule| rule["process"].as_str() == Some("xmrig")
                && rule["remote"].as_str() == Some("10.77.3.2")
                && rule["port"].as_integer() == Some(53)),
        "the miner's lookup was not learnt late:\n{baseline}"
    );
    assert!(
        late.iter()
            .all(|rule| rule["process"].as_str() == Some("xmrig")),
        "only the miner's lookup is rare-but-normal here:\n{baseline}"
    );

    // Ctrl-C: the demo stops and removes everything it created.
    let status = demo.interrupt();
    let output = demo.output();
    assert!(status.success(), "the demo failed ({status}):\n{output}");
    assert!(output.contains("cleaned up"), "{output}");
    let namespaces = sh("ip", &["netns", "list"]);
    assert!(
        !namespaces.contains("bsdemo-"),
        "namespaces left: {namespaces}"
    );
    assert!(
        !cgroup2_mount().join("bsdemo").exists(),
        "the demo's cgroup is left"
    );
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| RIG_PROCESSES.contains(&comm.as_str()))
        .collect();
    assert!(
        survivors.is_empty(),
        "processes left running: {survivors:?}"
    );
}

/// Starts a scenario of the rig (`args`: its subcommand and options) with the real agent,
/// working in `dir` and kept running once done, and waits for it to be done; returns it with
/// its `ready` event and phases by name. Take [`crate::RIG_LAB`] first.
pub(crate) fn play(args: &[&str], dir: &Path) -> (Demo, BTreeMap<String, Value>) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let events = dir.join("events.jsonl");
    let output = dir.join("scenario.out");
    let log = std::fs::File::create(&output).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bitsecure-rig"))
        .args(args)
        .args(["--keep-running", "--agent"])
        .arg(agent_binary())
        .arg("--events")
        .arg(&events)
        .arg("--dir")
        .arg(dir.join("work"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the rig's scenario");
    let mut scenario = Demo { child, output };
    let timeline = wait_for_scenario(&mut scenario, &events);
    (scenario, timeline)
}

/// (start, end) of a phase of the timeline, as Unix time.
pub(crate) fn phase_of(timeline: &BTreeMap<String, Value>, name: &str) -> (f64, f64) {
    let phase = &timeline[name];
    (
        phase["start"].as_f64().unwrap(),
        phase["end"].as_f64().unwrap(),
    )
}

/// Waits for the demo's `done` event; returns the `ready` event and the phases by name.
pub(crate) fn wait_for_scenario(demo: &mut Demo, events: &Path) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let parsed: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if parsed.iter().any(|event| event["event"] == "done") {
            return parsed
                .into_iter()
                .filter_map(|event| {
                    let key = match event["event"].as_str()? {
                        "phase" => event["phase"].as_str()?.to_owned(),
                        other => other.to_owned(),
                    };
                    Some((key, event))
                })
                .collect();
        }
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("the demo ended early ({status}):\n{}", demo.output());
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not finish in 10 minutes:\n{}",
            demo.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_metrics_with_promtool(agent: &str) {
    let metrics = http_client::get(agent, "/metrics").expect("scrape the agent");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run `cargo xtask setup`");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let result = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        result.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
    assert!(
        metrics.contains("bitsecure_sent_bytes_total{"),
        "no traffic in /metrics"
    );
}

/// Every panel query and every query variable of the dashboard returns data over the demo's
/// monitoring time, with Grafana's variables replaced as Grafana would for this Prometheus.
fn check_dashboard_queries(prometheus: &Prometheus, start: f64, end: f64, scrape: f64) {
    let text = std::fs::read_to_string(workspace_file("grafana/dashboards/bitsecure.json"))
        .expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let substitute = |expr: &str| {
        expr.replace("$job", "bitsecure")
            .replace("$instance", ".+")
            .replace(
                "$__rate_interval",
                &format!("{}ms", (scrape * 4000.0) as u64),
            )
            .replace("$__range", &format!("{}s", (end - start).ceil() as u64))
    };
    // Every panel's (in rows too) and every annotation's.
    let mut queries: Vec<(String, String)> = crate::grafana_dashboard::expressions(&dashboard)
        .into_iter()
        .map(|(who, expr)| (who, substitute(&expr)))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let query = match &variable["query"] {
            Value::String(query) => query.clone(),
            object => object["query"].as_str().unwrap_or_default().to_owned(),
        };
        // label_values(metric, label) is Grafana's; the PromQL behind it is the metric.
        if let Some(arguments) = query.strip_prefix("label_values(") {
            let (metric, label) = arguments
                .trim_end_matches(')')
                .rsplit_once(',')
                .expect("label_values(metric, label)");
            queries.push((
                format!("variable {}", variable["name"]),
                format!("count by ({}) ({})", label.trim(), substitute(metric)),
            ));
        }
    }
    assert!(
        queries.len() >= 15,
        "only {} queries in the dashboard",
        queries.len()
    );
    let empty: Vec<&(String, String)> = queries
        .iter()
        .filter(|(_, expr)| prometheus.range(expr, start, end, scrape).is_empty())
        .collect();
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
}

/// Every shipped alert is loaded and evaluates cleanly.
fn check_alert_rules(prometheus: &Prometheus) {
    let shipped = std::fs::read_to_string(workspace_file("prometheus/bitsecure.rules.yml"))
        .expect("read the rules");
    let shipped_alerts = shipped
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    let data = prometheus.api("/api/v1/rules?type=alert");
    let rules: Vec<&Value> = data["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), shipped_alerts, "every shipped alert is loaded");
    for rule in rules {
        assert_eq!(
            rule["health"], "ok",
            "alert rule failed to evaluate: {rule}"
        );
        let query = rule["query"].as_str().unwrap();
        // Evaluated once more by hand: an error here panics in api().
        prometheus.api(&format!(
            "/api/v1/query?query={}",
            encode_query_value(query)
        ));
    }
}
