//! Restarts without losing counts (kernel state pinned in bpffs): a miner-like client streams
//! jobs through the veth while the agent is stopped — cleanly or with `kill -9` — and started
//! again. The second agent must continue the first one's counters (no reset) and end with
//! exactly what nftables counted in the peer namespace for the whole run. Also: pins left by
//! an incompatible agent are discarded, and `bitsecure uninstall` detaches everything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary},
    cgroup::{TestCgroup, attached_programs},
    exposition::{Exported, sum_metric, traffic_by_process},
    process::{run_generator, scratch_dir, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

/// The tests share bpffs and cgroup attachments: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Setup {
    pins: PathBuf,
    state_dir: PathBuf,
    cgroup: TestCgroup,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/bitsecure-test-{}-{tag}",
            std::process::id()
        ));
        let state_dir = scratch_dir().join(format!("restart-{tag}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).unwrap();
        Self {
            pins,
            state_dir,
            cgroup: TestCgroup::new(tag),
        }
    }

    fn config(&self, flow_capacity: u32) -> String {
        format!(
            "cgroup = \"{}\"\n[kernel]\npin_path = \"{}\"\nflow_capacity = {flow_capacity}\n\
             [baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
            self.cgroup.path.display(),
            self.pins.display(),
            self.state_dir.join("baseline.toml").display()
        )
    }

    fn config_file(&self) -> PathBuf {
        let path = self.state_dir.join("uninstall.toml");
        std::fs::write(
            &path,
            format!(
                "[kernel]\npin_path = \"{}\"\n[baseline]\npath = \"{}\"\n",
                self.pins.display(),
                self.state_dir.join("baseline.toml").display()
            ),
        )
        .unwrap();
        path
    }

    /// Programs attached to the test cgroup, as the kernel lists them.
    fn attached(&self) -> usize {
        attached_programs(&self.cgroup.path)
    }

    fn uninstall(&self) -> std::process::Output {
        Command::new(agent_binary())
            .arg("uninstall")
            .arg("--config")
            .arg(self.config_file())
            .output()
            .unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.uninstall();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// The miner's traffic as the agent exports it.
fn exported(agent: &Agent, process: &str, remote: &str) -> Exported {
    traffic_by_process(&agent.scrape(), |labels| {
        labels.get("remote").map(String::as_str) == Some(remote)
    })
    .get(process)
    .copied()
    .unwrap_or_default()
}

fn truth(net: &TestNet) -> Exported {
    let (sent_packets, sent_bytes) = net.counter("sent", "tcp");
    let (received_packets, received_bytes) = net.counter("received", "tcp");
    Exported {
        sent_bytes,
        received_bytes,
        sent_packets,
        received_packets,
    }
}

/// Streams jobs across a restart of the agent done by `restart`, then compares.
fn counts_survive(tag: &str, restart: impl FnOnce(Agent) -> Agent) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::new(tag);
    let mut net = TestNet::new();
    let server = install_generator("bsg-rs-server");
    let target = format!("{}:5000", net.peer_v4);
    net.spawn_server(&server, &["serve", "--tcp", &target]);
    let process = format!("bsg-rs-{tag}");
    let miner = install_generator(&process);

    let first = Agent::start_with(&setup.config(4096));
    // 200 jobs of 20 kB, one every 25 ms: about 5 s of steady traffic on one connection.
    let mut stream = spawn_until(
        setup.cgroup.command(&miner).args([
            "--timeout-secs",
            "60",
            "periodic",
            "--connect",
            &target,
            "--every-ms",
            "25",
            "--job-bytes",
            "20000",
            "--jobs",
            "200",
        ]),
        "connected",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let before = exported(&first, &process, &net.peer_v4.to_string());
    assert!(before.received_bytes > 0, "the first agent counted nothing");

    let second = restart(first);
    let remote = net.peer_v4.to_string();
    let just_after = exported(&second, &process, &remote);
    assert!(
        just_after.received_bytes >= before.received_bytes,
        "the counter went back after the restart: {before:?} then {just_after:?}"
    );
    let status = stream.child.wait().unwrap();
    assert!(status.success(), "the miner failed: {}", stream.finish());

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (mine, nft) = (exported(&second, &process, &remote), truth(&net));
        if mine == nft {
            eprintln!("{tag}: agent {mine:?} = nftables {nft:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart the agent has {mine:?}, nftables counted {nft:?}\n{}",
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        setup.attached(),
        5,
        "exactly one set of programs stays attached"
    );
    second.stop();
}

#[test]
fn a_clean_restart_loses_nothing_and_counters_continue() {
    counts_survive("term", |first| {
        let config_extra = first_config(&first);
        let status = first.stop();
        assert!(status.success());
        // Traffic goes on with no agent running; the pinned programs count it.
        std::thread::sleep(Duration::from_secs(1));
        let second = Agent::start_with(&config_extra);
        assert!(
            second
                .log_text()
                .contains("continuing the previous agent's counters"),
            "{}",
            second.log_text()
        );
        second
    });
}

#[test]
fn kill_9_loses_nothing_on_a_live_connection() {
    counts_survive("kill", |first| {
        let config_extra = first_config(&first);
        first.signal(libc::SIGKILL);
        drop(first);
        std::thread::sleep(Duration::from_secs(1));
        Agent::start_with(&config_extra)
    });
}

/// The extra config the first agent ran with (to start the second identically).
fn first_config(agent: &Agent) -> String {
    agent.extra_config().to_owned()
}

#[test]
fn incompatible_pins_are_replaced_and_uninstall_detaches_everything() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::new("stale");
    // An "older agent" with other map capacities leaves its pins behind.
    let old = Agent::start_with(&setup.config(4096));
    old.signal(libc::SIGKILL);
    drop(old);
    assert_eq!(
        setup.attached(),
        5,
        "the killed agent's programs stay attached"
    );
    let new = Agent::start_with(&setup.config(8192));
    assert!(
        new.log_text().contains("discarded the kernel state"),
        "{}",
        new.log_text()
    );
    assert_eq!(setup.attached(), 5, "the stale programs were detached");

    // While it runs, uninstall refuses (the pins are in use).
    let busy = setup.uninstall();
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("another bitsecure agent"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    assert!(new.stop().success());
    assert_eq!(
        setup.attached(),
        5,
        "a stopped agent's programs keep counting"
    );

    let done = setup.uninstall();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(setup.attached(), 0, "uninstall detached the programs");
    assert!(!setup.pins.exists(), "the pin directory is gone");
    assert!(!Path::new(&setup.state_dir.join("agent-state.json")).exists());
}

/// The state file is rewritten after every poll (here every 0.1 s); `kill -9` at random
/// moments must always leave a complete one that the next agent resumes from.
#[test]
fn kill_9_at_any_moment_leaves_a_valid_state_file() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::new("state");
    let state = setup.state_dir.join("agent-state.json");
    // A deterministic spread of kill delays over several polls.
    let mut delay_ms: u64 = 7;
    for round in 0..12 {
        let agent = Agent::start_polling(&setup.config(4096), 0.1);
        if round > 0 {
            assert!(
                agent
                    .log_text()
                    .contains("continuing the previous agent's counters"),
                "round {round}: the state left by kill -9 was not resumed:\n{}",
                agent.log_text()
            );
        }
        delay_ms = (delay_ms * 37 + 11) % 450 + 50;
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.signal(libc::SIGKILL);
        drop(agent);
        let text = std::fs::read_to_string(&state).expect("a state file after the first polls");
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("round {round}: half a state file ({error})"));
        assert_eq!(parsed["format_version"], 1, "round {round}");
    }
}

/// The series cap (`metrics.max_series`) counts the series a previous agent exported: after a
/// restart at the cap, a new series folds into `other` instead of getting its own.
#[test]
fn a_restart_at_the_series_cap_keeps_the_cap() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::new("cap");
    let mut net = TestNet::new();
    let server = install_generator("bsg-cap-server");
    let peer = net.peer_v4;
    for port in [5000, 5001, 5002] {
        net.spawn_server(&server, &["serve", "--udp", &format!("{peer}:{port}")]);
    }
    let process = "bsg-rs-cap";
    let sender = install_generator(process);
    let send = |port: u16| {
        run_generator(setup.cgroup.command(&sender).args([
            "udp",
            "--to",
            &format!("{peer}:{port}"),
            "--datagrams",
            "20",
            "--size",
            "200",
        ]));
    };
    let config = format!("{}[metrics]\nmax_series = 2\n", setup.config(4096));
    // The series of `process` and their ports, once the agent has polled.
    let series_of = |agent: &Agent| -> Vec<(String, String)> {
        let mut series: Vec<(String, String)> = agent
            .scrape()
            .into_iter()
            .filter(|sample| {
                sample.name == "bitsecure_sent_bytes_total"
                    && sample.labels.get("process").map(String::as_str) == Some(process)
            })
            .map(|sample| {
                (
                    sample.labels["remote"].clone(),
                    sample.labels["port"].clone(),
                )
            })
            .collect();
        series.sort();
        series
    };
    let settle = || std::thread::sleep(Duration::from_secs_f64(TEST_POLL_SECONDS * 4.0));

    let first = Agent::start_with(&config);
    send(5000);
    send(5001);
    settle();
    let peer_text = peer.to_string();
    assert_eq!(
        series_of(&first),
        [
            (peer_text.clone(), "5000".to_owned()),
            (peer_text.clone(), "5001".to_owned())
        ],
        "{}",
        first.log_text()
    );
    assert!(first.stop().success());

    let second = Agent::start_with(&config);
    settle();
    let samples = second.scrape();
    assert_eq!(
        sum_metric(&samples, "bitsecure_traffic_series", &[]),
        2.0,
        "the restored series count toward the cap"
    );
    send(5002);
    settle();
    assert_eq!(
        series_of(&second),
        [
            (peer_text.clone(), "5000".to_owned()),
            (peer_text, "5001".to_owned()),
            ("other".to_owned(), String::new())
        ],
        "a new series after a restart at the cap folds into other\n{}",
        second.log_text()
    );
    let folded = sum_metric(&second.scrape(), "bitsecure_folded_flows_total", &[]);
    assert!(folded >= 1.0, "folded flows: {folded}");
    second.stop();
}

/// Series lifecycle: a series that counted nothing for `metrics.series_idle_seconds` is
/// dropped; a restart does not reset its idle time (the state file keeps when it was last
/// active); traffic that comes back starts the series again from zero, so it then holds exactly
/// what nftables counted since (the documented counter reset).
#[test]
fn an_idle_series_is_dropped_across_a_restart_and_starts_again_from_zero() {
    const IDLE_SECONDS: u64 = 6;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let setup = Setup::new("idle");
    let mut net = TestNet::new();
    let server = install_generator("bsg-idle-server");
    let target = format!("{}:5000", net.peer_v4);
    net.spawn_server(&server, &["serve", "--udp", &target]);
    let process = "bsg-idle-client";
    let client = install_generator(process);
    let remote = net.peer_v4.to_string();
    let send = |datagrams: &str| {
        run_generator(setup.cgroup.command(&client).args([
            "--timeout-secs",
            "30",
            "udp",
            "--to",
            &target,
            "--datagrams",
            datagrams,
            "--size",
            "700",
        ]))
    };
    let udp_truth = |net: &TestNet| {
        let (sent_packets, sent_bytes) = net.counter("sent", "udp");
        let (received_packets, received_bytes) = net.counter("received", "udp");
        Exported {
            sent_bytes,
            received_bytes,
            sent_packets,
            received_packets,
        }
    };
    let config = format!(
        "{}[metrics]\nseries_idle_seconds = {IDLE_SECONDS}\n",
        setup.config(4096)
    );
    let until = |agent: &Agent, what: &str, seconds: u64, done: &dyn Fn(&Agent) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !done(agent) {
            assert!(
                Instant::now() < deadline,
                "{what}: agent has {:?}\n{}",
                exported(agent, process, &remote),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let first = Agent::start_with(&config);
    send("20");
    let first_burst = udp_truth(&net);
    assert!(first_burst.sent_packets >= 20);
    until(&first, "the first burst", 15, &|agent| {
        exported(agent, process, &remote) == first_burst
    });
    assert!(first.stop().success());
    // Idle past the limit while no agent runs: the next one drops the series at its first poll.
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS + 1));
    // Well before a full idle time of its own: a restart that forgot the idle time would keep
    // the series for IDLE_SECONDS more.
    let second = Agent::start_with(&config);
    until(
        &second,
        "the idle series dropped",
        IDLE_SECONDS / 2,
        &|agent| {
            let samples = agent.scrape();
            exported(agent, process, &remote) == Exported::default()
                && sum_metric(&samples, "bitsecure_expired_series_total", &[]) >= 1.0
        },
    );

    send("7");
    let since = udp_truth(&net);
    let comeback = Exported {
        sent_bytes: since.sent_bytes - first_burst.sent_bytes,
        received_bytes: since.received_bytes - first_burst.received_bytes,
        sent_packets: since.sent_packets - first_burst.sent_packets,
        received_packets: since.received_packets - first_burst.received_packets,
    };
    assert!(comeback.sent_packets >= 7);
    until(&second, "the series back from zero", 15, &|agent| {
        exported(agent, process, &remote) == comeback
    });
    second.stop();
}
