//! A small simulated mining rig, end to end: a pool and a monitoring endpoint in a test network
//! namespace, a miner-like client fetching a job every 5 s and a reporter every 1 s, all in a
//! cgroup the agent watches. The test records a baseline with `bitsecure baseline record`,
//! then runs the agent against it and checks that normal traffic raises nothing, a new process
//! shows up as unexpected within a poll, a burst crosses the deviation threshold, a stopped miner
//! goes silent past its cadence, `baseline accept` makes an entry expected, and a broken
//! baseline file is refused while the last good one stays in force.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary},
    cgroup::TestCgroup,
    exposition::Sample,
    process::{Spawned, run_generator, scratch_dir, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

/// Compressed job cycle of the miner.
const MINER_EVERY_MS: u64 = 5000;
const DEVIATION_THRESHOLD: f64 = 3.0;

/// Fields drop in order: the rig's processes before their cgroup, the cgroup before the net.
struct Rig {
    miner: Option<Spawned>,
    _reporter: Spawned,
    cgroup: TestCgroup,
    net: TestNet,
    pool: String,
}

impl Rig {
    fn start() -> Self {
        let mut net = TestNet::new();
        let server = install_generator("bsg-pool");
        let pool = format!("{}:3333", net.peer_v4);
        let monitor = format!("{}:8080", net.peer_v4);
        net.spawn_server(&server, &["serve", "--tcp", &pool]);
        net.spawn_server(&server, &["serve", "--tcp", &monitor]);
        // A destination the rig never talks to normally.
        net.spawn_server(
            &server,
            &["serve", "--tcp", &format!("{}:5000", net.peer_v4)],
        );
        let cgroup = TestCgroup::new("rig");
        let periodic = |name: &str, target: &str, every_ms: u64, bytes: u64| {
            let generator = install_generator(name);
            spawn_until(
                cgroup.command(&generator).args([
                    "periodic",
                    "--connect",
                    target,
                    "--every-ms",
                    &every_ms.to_string(),
                    "--jitter-percent",
                    "10",
                    "--job-bytes",
                    &bytes.to_string(),
                ]),
                "connected",
            )
        };
        let miner = periodic("bsg-miner", &pool, MINER_EVERY_MS, 20_000);
        let reporter = periodic("bsg-report", &monitor, 1000, 500);
        Self {
            net,
            cgroup,
            miner: Some(miner),
            _reporter: reporter,
            pool,
        }
    }

    /// Config text for an agent or recorder watching only the rig's cgroup.
    fn config(&self, baseline: &Path, listen_port: u16) -> String {
        format!(
            "[agent]\nlisten = \"127.0.0.1:{listen_port}\"\npoll_interval_seconds = {TEST_POLL_SECONDS}\n\
             cgroup = \"{}\"\n[kernel]\npin_path = \"\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
            self.cgroup.path.display(),
            baseline.display()
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut miner) = self.miner.take() {
            let _ = miner.child.kill();
            let _ = miner.child.wait();
        }
    }
}

fn bitsecure() -> Command {
    Command::new(agent_binary())
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .find(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

/// Polls `check` on fresh scrapes until it holds or `seconds` pass.
fn eventually(agent: &Agent, seconds: f64, what: &str, check: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        let samples = agent.scrape();
        if check(&samples) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {seconds} s\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unexpected_json(agent: &Agent) -> Vec<serde_json::Value> {
    let output = bitsecure()
        .args([
            "unexpected",
            "--json",
            "--agent",
            &format!("127.0.0.1:{}", agent.port),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("unexpected --json prints JSON")
}

#[test]
fn simulated_rig_learn_then_monitor() {
    let mut rig = Rig::start();
    let dir = scratch_dir();
    let baseline_path: PathBuf = dir.join(format!("rig-baseline-{}.toml", rig.net.ns));
    let record_config = dir.join(format!("rig-record-{}.toml", rig.net.ns));
    std::fs::write(&record_config, rig.config(&baseline_path, 1)).unwrap();

    // Learn: 30 s = 6 miner cycles of 10 polls each.
    let output = bitsecure()
        .args(["baseline", "record", "--duration", "30s", "--config"])
        .arg(&record_config)
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "record failed: {progress}");
    assert!(
        progress.contains("destinations"),
        "no progress shown: {progress}"
    );
    let text = std::fs::read_to_string(&baseline_path).unwrap();
    let baseline: toml::Table = toml::from_str(&text).unwrap();
    let rules = baseline["rule"].as_array().unwrap();
    let miner_rule = rules
        .iter()
        .find(|rule| rule["process"].as_str() == Some("bsg-miner"))
        .unwrap_or_else(|| panic!("no miner rule in\n{text}"));
    assert_eq!(
        miner_rule["remote"].as_str(),
        Some(rig.net.peer_v4.to_string().as_str())
    );
    assert_eq!(miner_rule["port"].as_integer(), Some(3333));
    assert_eq!(miner_rule["protocol"].as_str(), Some("tcp"));
    // Every recorded rule says which application it speaks (whatever the classifier saw).
    let app = miner_rule["app"].as_str().unwrap_or_default();
    assert!(
        bitsecure::naming::App::parse(app).is_some(),
        "miner rule without a known app:\n{text}"
    );
    let cadence = miner_rule["normal"]["cadence_seconds"]
        .as_float()
        .unwrap_or_else(|| panic!("miner cadence not detected:\n{text}"));
    assert!(
        (cadence - 5.0).abs() <= 0.5,
        "miner cadence {cadence} s, expected ~5 s"
    );
    assert!(
        rules
            .iter()
            .any(|rule| rule["process"].as_str() == Some("bsg-report")),
        "{text}"
    );

    // Monitor with it.
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        rig.cgroup.path.display(),
        baseline_path.display()
    ));
    let rule_labels = [
        ("process", "bsg-miner"),
        ("port", "3333"),
        ("protocol", "tcp"),
    ];
    eventually(&agent, 10.0, "baseline loaded", |samples| {
        value(samples, "bitsecure_baseline_rules", &[]).unwrap_or(0.0) >= 2.0
    });
    // Normal operation for two cycles: nothing raised.
    std::thread::sleep(Duration::from_secs(10));
    let samples = agent.scrape();
    assert!(
        unexpected_json(&agent).is_empty(),
        "normal traffic listed as unexpected"
    );
    let sent = [
        ("direction", "sent"),
        rule_labels[0],
        rule_labels[1],
        rule_labels[2],
    ];
    let deviation =
        value(&samples, "bitsecure_rule_deviation_ratio", &sent).expect("deviation exported");
    assert!(
        deviation < DEVIATION_THRESHOLD,
        "normal deviation {deviation}"
    );
    let silence =
        value(&samples, "bitsecure_rule_silence_ratio", &rule_labels).expect("silence exported");
    assert!(silence < 1.0, "normal silence ratio {silence}");
    assert!(value(&samples, "bitsecure_rule_reference_bytes_per_second", &sent).is_some());

    // A new process talks to a new destination: listed within one poll (plus slack).
    let intruder = install_generator("bsg-intruder");
    let other = format!("{}:5000", rig.net.peer_v4);
    run_generator(rig.cgroup.command(&intruder).args([
        "tcp",
        "--connect",
        &other,
        "--upload",
        "100000",
    ]));
    let seen_at = Instant::now();
    eventually(&agent, 5.0, "intruder listed", |samples| {
        value(
            samples,
            "bitsecure_unexpected_sent_bytes_total",
            // A program the baseline does not know: high risk, it pages.
            &[
                ("process", "bsg-intruder"),
                ("risk", "high"),
                ("reason", "new-process"),
            ],
        )
        .unwrap_or(0.0)
            > 0.0
    });
    // Within one poll interval, plus the time a poll and a scrape take.
    let latency = seen_at.elapsed();
    eprintln!("intruder listed {latency:?} after its traffic ended");
    assert!(
        latency < Duration::from_secs_f64(TEST_POLL_SECONDS + 0.5),
        "{latency:?}"
    );
    let listed = unexpected_json(&agent);
    let entry = listed
        .iter()
        .find(|entry| entry["process"] == "bsg-intruder")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(entry["remote"], rig.net.peer_v4.to_string());
    assert_eq!(entry["port"], 5000);
    assert!(
        entry["app"]
            .as_str()
            .and_then(bitsecure::naming::App::parse)
            .is_some(),
        "{entry}"
    );
    assert!(entry["sent_bytes"].as_u64().unwrap() >= 100_000);
    assert_eq!(
        (entry["risk"].as_str(), entry["reason"].as_str()),
        (Some("high"), Some("new-process")),
        "{entry}"
    );

    // A burst from the miner to its pool: deviation crosses the threshold.
    let miner_exe = install_generator("bsg-miner");
    run_generator(rig.cgroup.command(&miner_exe).args([
        "tcp",
        "--connect",
        &rig.pool,
        "--upload",
        "5000000",
    ]));
    eventually(&agent, 5.0, "burst deviation", |samples| {
        value(samples, "bitsecure_rule_deviation_ratio", &sent).unwrap_or(0.0) > DEVIATION_THRESHOLD
    });

    // The miner dies: its rule goes silent past its cadence; the reporter's does not.
    if let Some(mut miner) = rig.miner.take() {
        miner.child.kill().unwrap();
        miner.child.wait().unwrap();
    }
    eventually(&agent, 20.0, "miner silence", |samples| {
        let miner = value(samples, "bitsecure_rule_silence_ratio", &rule_labels).unwrap_or(0.0);
        let reporter = value(
            samples,
            "bitsecure_rule_silence_ratio",
            &[("process", "bsg-report")],
        )
        .unwrap_or(9.0);
        miner > 1.0 && reporter < 1.0
    });

    // Accept the intruder: the file keeps its comments, a backup is kept, the agent reloads.
    let comment = "# hand-written comment that must survive\n";
    let original = std::fs::read_to_string(&baseline_path).unwrap();
    std::fs::write(&baseline_path, format!("{comment}{original}")).unwrap();
    eventually(&agent, 5.0, "reload after edit", |_| {
        agent.log_text().matches("loaded").count() >= 2
    });
    let output = bitsecure()
        .args([
            "baseline",
            "accept",
            "--process",
            "bsg-intruder",
            "--note",
            "test accepted",
        ])
        .args(["--agent", &format!("127.0.0.1:{}", agent.port), "--file"])
        .arg(&baseline_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "accept: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let edited = std::fs::read_to_string(&baseline_path).unwrap();
    assert!(edited.starts_with(comment), "comment lost");
    assert!(edited.contains("bsg-intruder") && edited.contains("test accepted"));
    let backup = PathBuf::from(format!("{}.bak", baseline_path.display()));
    assert_eq!(
        std::fs::read_to_string(&backup).unwrap(),
        format!("{comment}{original}")
    );
    eventually(&agent, 5.0, "accepted entry leaves the list", |_| {
        unexpected_json(&agent)
            .iter()
            .all(|entry| entry["process"] != "bsg-intruder")
    });
    let rules_now = value(&agent.scrape(), "bitsecure_baseline_rules", &[]).unwrap();

    // A broken edit: refused, counted, and the last good baseline stays in force.
    std::fs::write(
        &baseline_path,
        "format_version = 1\n[[rule]]\nprocess = 42\n",
    )
    .unwrap();
    eventually(&agent, 5.0, "reload failure counted", |samples| {
        value(samples, "bitsecure_baseline_reload_failures_total", &[]).unwrap_or(0.0) >= 1.0
    });
    let samples = agent.scrape();
    assert_eq!(
        value(&samples, "bitsecure_baseline_rules", &[]),
        Some(rules_now)
    );
    assert!(
        agent.log_text().contains("line 3"),
        "the error names the line:\n{}",
        agent.log_text()
    );

    // Fixed again (from the backup), and reloaded on SIGHUP as well.
    let reloads = |log: &str| log.matches("loaded (file changed): ").count();
    let before = reloads(&agent.log_text());
    std::fs::copy(&backup, &baseline_path).unwrap();
    eventually(&agent, 5.0, "reload of the fixed file", |_| {
        reloads(&agent.log_text()) > before
    });
    agent.signal(libc::SIGHUP);
    eventually(&agent, 5.0, "reload on SIGHUP", |_| {
        agent.log_text().contains("loaded (SIGHUP)")
    });
}

#[test]
fn first_start_without_a_baseline_learns_then_monitors() {
    let mut net = TestNet::new();
    let server = install_generator("bsg-pool");
    let pool = format!("{}:3333", net.peer_v4);
    net.spawn_server(&server, &["serve", "--tcp", &pool]);
    let cgroup = TestCgroup::new("learn");
    let miner = install_generator("bsg-learner");
    let _miner = spawn_until(
        cgroup.command(&miner).args([
            "periodic",
            "--connect",
            &pool,
            "--every-ms",
            "500",
            "--job-bytes",
            "1000",
        ]),
        "connected",
    );
    let baseline_path = scratch_dir().join(format!("learned-{}.toml", net.ns));
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\n",
        cgroup.path.display(),
        baseline_path.display()
    ));
    let samples = agent.scrape();
    assert_eq!(
        value(&samples, "bitsecure_baseline_learning", &[]),
        Some(1.0)
    );
    assert!(!baseline_path.exists(), "written before learning ended");
    eventually(&agent, 10.0, "switch to monitoring", |samples| {
        value(samples, "bitsecure_baseline_learning", &[]) == Some(0.0)
            && value(samples, "bitsecure_baseline_rules", &[]).unwrap_or(0.0) >= 1.0
    });
    assert!(
        agent.log_text().contains("now monitoring"),
        "{}",
        agent.log_text()
    );
    let text = std::fs::read_to_string(&baseline_path).expect("learned baseline written");
    assert!(text.contains("process = \"bsg-learner\""), "{text}");
    assert!(text.contains("port = 3333"), "{text}");
    // The learned traffic is expected: nothing unexpected while it goes on.
    std::thread::sleep(Duration::from_secs(2));
    assert!(unexpected_json(&agent).is_empty());
}
