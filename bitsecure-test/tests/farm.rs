//! A farm of identical rigs shares one baseline. Two simulated rigs — one after the other in
//! one cgroup, as the miner's unit is the same on every rig: same program, same pool; the
//! second mines harder and also reports to a monitor — each record a baseline; `bitsecure
//! baseline merge` makes one of them; an agent with the merged baseline watching each rig's
//! traffic again lists nothing unexpected. The way around: a program neither rig ran is still
//! unexpected. Truth: the files on disk and the agent's own JSON list.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary},
    cgroup::TestCgroup,
    process::{Spawned, run_generator, scratch_dir, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

const MINER: &str = "bsf-miner";
const MONITOR: &str = "bsf-monitor";
const INTRUDER: &str = "bsf-intruder";

struct Farm {
    /// Kept for its namespace, where the pool and the monitor run.
    _net: TestNet,
    cgroup: TestCgroup,
    pool: String,
    monitor: String,
}

impl Farm {
    /// The miner of a rig: `job_bytes` every 300 ms until dropped.
    fn miner(&self, job_bytes: u32) -> Spawned {
        spawn_until(
            self.cgroup.command(&install_generator(MINER)).args([
                "--timeout-secs",
                "120",
                "periodic",
                "--connect",
                &self.pool,
                "--every-ms",
                "300",
                "--job-bytes",
                &job_bytes.to_string(),
            ]),
            "connected",
        )
    }

    /// `program` reports to the monitor: 10 datagrams, each waiting for its echo.
    fn report(&self, program: &str) {
        run_generator(self.cgroup.command(&install_generator(program)).args([
            "udp",
            "--to",
            &self.monitor,
            "--datagrams",
            "10",
            "--size",
            "300",
        ]));
    }

    /// Rig 1: the miner alone, 1.5 kB jobs. Rig 2: 6 kB jobs and the monitor's reports.
    fn run_rig(&self, rig: u32, seconds: u64) {
        let _miner = self.miner(if rig == 1 { 1500 } else { 6000 });
        thread::sleep(Duration::from_secs(seconds / 2));
        if rig == 2 {
            self.report(MONITOR);
        }
        thread::sleep(Duration::from_secs(seconds - seconds / 2));
    }
}

fn unexpected_processes(agent: &Agent) -> Vec<String> {
    agent
        .unexpected()
        .iter()
        .filter_map(|entry| entry["process"].as_str())
        .filter(|process| process.starts_with("bsf-"))
        .map(str::to_owned)
        .collect()
}

fn record(farm: &Farm, dir: &Path, rig: u32) -> String {
    let output = dir.join(format!("rig{rig}.toml"));
    let config = dir.join(format!("rig{rig}-config.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:1\"\npoll_interval_seconds = {TEST_POLL_SECONDS}\n\
             cgroup = \"{}\"\n[kernel]\npin_path = \"\"\n",
            farm.cgroup.path.display()
        ),
    )
    .unwrap();
    let mut recording = Command::new(agent_binary())
        .args(["baseline", "record", "--duration", "5s", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&output)
        .spawn()
        .unwrap();
    // The programs attach in under a second; the rig runs through the recording.
    thread::sleep(Duration::from_secs(1));
    farm.run_rig(rig, 4);
    assert!(recording.wait().unwrap().success());
    std::fs::read_to_string(&output).unwrap()
}

#[test]
fn a_merged_baseline_keeps_both_rigs_quiet_and_still_catches_a_newcomer() {
    let mut net = TestNet::new();
    let pool = format!("{}:3333", net.peer_v4);
    let monitor = format!("{}:5000", net.peer_v4);
    net.spawn_server(
        &install_generator("bsf-servers"),
        &["serve", "--tcp", &pool, "--udp", &monitor],
    );
    let farm = Farm {
        _net: net,
        cgroup: TestCgroup::new("farm"),
        pool,
        monitor,
    };
    let dir = scratch_dir().join(format!("farm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let rig1 = record(&farm, &dir, 1);
    let rig2 = record(&farm, &dir, 2);
    assert!(rig1.contains(MINER) && !rig1.contains(MONITOR), "{rig1}");
    assert!(rig2.contains(MINER) && rig2.contains(MONITOR), "{rig2}");

    let merged_path = dir.join("farm.toml");
    let merge = Command::new(agent_binary())
        .args(["baseline", "merge"])
        .arg(dir.join("rig1.toml"))
        .arg(dir.join("rig2.toml"))
        .arg("--output")
        .arg(&merged_path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&merge.stderr);
    assert!(merge.status.success(), "{report}");
    // The monitor is one rig's: kept, and said so.
    assert!(
        report.contains(MONITOR) && report.contains("only in"),
        "{report}"
    );
    let merged = std::fs::read_to_string(&merged_path).unwrap();
    assert!(
        merged.contains(MINER) && merged.contains(MONITOR),
        "{merged}"
    );

    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        farm.cgroup.path.display(),
        merged_path.display()
    ));
    for rig in [1, 2] {
        farm.run_rig(rig, 3);
        // A poll or two for the last traffic to be compared.
        thread::sleep(Duration::from_secs(1));
        let listed = unexpected_processes(&agent);
        assert!(
            listed.is_empty(),
            "rig {rig}'s normal traffic is unexpected under the merged baseline: {listed:?}\n{merged}"
        );
    }
    // The miner's traffic was compared, not missed: its rule was hit.
    let hits: f64 = agent
        .scrape()
        .iter()
        .filter(|sample| sample.name == "bitsecure_rule_hits_total")
        .filter(|sample| sample.labels.get("process").map(String::as_str) == Some(MINER))
        .map(|sample| sample.value)
        .sum();
    assert!(hits > 0.0, "the merged miner rule was never hit");

    // Neither rig ran this program: it is still unexpected.
    farm.report(INTRUDER);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = unexpected_processes(&agent);
        if listed.iter().any(|process| process == INTRUDER) {
            assert!(
                listed.iter().all(|process| process == INTRUDER),
                "{listed:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the intruder was not listed: {listed:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
