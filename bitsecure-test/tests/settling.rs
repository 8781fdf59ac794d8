//! Privileged tests of "quiet and sure": after learning the baseline settles — a known
//! program's low-risk newcomer (the resolver another program uses) joins the file, marked
//! learnt late, and is never listed; a new program doing the same is listed and pages. A
//! recording can end when the rig is quiet and be resumed. Truth: the file on disk, the
//! generator's own traffic, and the agent's JSON list.

use std::process::Command;

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary, eventually, learnt_baseline},
    cgroup::TestCgroup,
    exposition::sum_metric,
    process::{GeneratorReport, run_generator, scratch_dir, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

fn status(agent: &Agent) -> String {
    let output = Command::new(agent_binary())
        .args(["baseline", "status", "--agent"])
        .arg(format!("127.0.0.1:{}", agent.port))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A rig in a cgroup of its own (the only one its agent watches, so parallel tests stay out):
/// a miner on its pool (TCP), and a resolver (a DNS server) at another address of the pool's
/// network.
struct Rig {
    net: TestNet,
    cgroup: TestCgroup,
    resolver: String,
    _miner: bitsecure_test::process::Spawned,
}

const POOL_NAME: &str = "pool.settle.example";

fn rig(tag: &str, miner: &str) -> Rig {
    let mut net = TestNet::new();
    let pool = format!("{}:3333", net.peer_v4);
    let resolver_address = net.peer_v4_host(53);
    net.add_peer_address(resolver_address.into());
    let resolver = format!("{resolver_address}:53");
    net.spawn_server(
        &install_generator(&format!("bss-{tag}-pool")),
        &["serve", "--tcp", &pool],
    );
    net.spawn_server(
        &install_generator(&format!("bss-{tag}-dns")),
        &[
            "dns-serve",
            "--listen",
            &resolver,
            "--record",
            &format!("{POOL_NAME}=A:{}", net.peer_v4),
        ],
    );
    let cgroup = TestCgroup::new(&format!("settle-{tag}"));
    let miner = spawn_until(
        cgroup.command(&install_generator(miner)).args([
            "periodic",
            "--connect",
            &pool,
            "--every-ms",
            "300",
            "--job-bytes",
            "1500",
        ]),
        "connected",
    );
    Rig {
        net,
        cgroup,
        resolver,
        _miner: miner,
    }
}

/// `program` (installed under that name) resolves the pool's name `queries` times, 200 ms
/// apart (long enough to be known by its executable); returns the generator's report.
fn ask(rig: &Rig, program: &str, queries: u32) -> GeneratorReport {
    let exe = install_generator(program);
    run_generator(rig.cgroup.command(&exe).args([
        "dns-query",
        "--server",
        &rig.resolver,
        "--name",
        POOL_NAME,
        "--count",
        &queries.to_string(),
        "--every-ms",
        "200",
    ]))
}

#[test]
fn a_settling_baseline_learns_low_risk_newcomers_and_lists_the_rest() {
    const MINER: &str = "bss-miner";
    const HELPER: &str = "bss-resolved";
    let rig = rig("a", MINER);
    let baseline = scratch_dir().join(format!("settling-{}.toml", rig.net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\n",
        rig.cgroup.path.display(),
        baseline.display()
    ));
    // While learning, only the helper asks the resolver.
    for _ in 0..3 {
        ask(&rig, HELPER, 2);
        std::thread::sleep(std::time::Duration::from_millis(800));
    }
    let learnt = learnt_baseline(&agent, &baseline);
    assert!(
        learnt.contains(&format!("process = \"{HELPER}\"")),
        "{learnt}"
    );
    assert!(
        !learnt.contains("learnt_late"),
        "nothing is late yet:\n{learnt}"
    );
    eventually(&agent, 10, |samples| {
        match sum_metric(samples, "bitsecure_baseline_settling", &[]) {
            1.0 => Ok(()),
            other => Err(format!("bitsecure_baseline_settling {other}")),
        }
    });

    // The miner asks the same resolver (its next reconnect's lookup): low risk, learnt late.
    // A program never seen asks it too: high risk, listed, never learnt.
    ask(&rig, MINER, 3);
    ask(&rig, "bss-stranger", 3);
    let stranger = eventually(&agent, 15, |_| {
        agent
            .unexpected()
            .into_iter()
            .find(|entry| entry["process"] == "bss-stranger")
            .ok_or_else(|| "the stranger is not listed".to_owned())
    });
    assert_eq!(
        (stranger["risk"].as_str(), stranger["reason"].as_str()),
        (Some("high"), Some("new-process")),
        "{stranger}"
    );
    let text = eventually(&agent, 15, |_| {
        let text = std::fs::read_to_string(&baseline).unwrap();
        if text.contains("learnt_late") {
            Ok(text)
        } else {
            Err(format!("nothing learnt late:\n{text}"))
        }
    });
    assert!(
        text.starts_with(&learnt),
        "the learnt file is kept as it was, and only grows:\n{text}"
    );
    let late = crate::learnt_late(&text);
    assert_eq!(late.len(), 1, "only the miner's lookup:\n{text}");
    assert_eq!(late[0]["process"].as_str(), Some(MINER));
    assert_eq!(
        late[0]["remote"].as_str(),
        Some(rig.net.peer_v4_host(53).to_string().as_str())
    );
    assert_eq!(late[0]["port"].as_integer(), Some(53));
    assert_eq!(late[0]["app"].as_str(), Some("dns"));
    assert!(
        late[0]["note"]
            .as_str()
            .unwrap()
            .contains("another program"),
        "{text}"
    );
    // Never listed, never counted as unexpected; the state says so.
    let list = agent.unexpected();
    assert!(
        list.iter().all(|entry| entry["process"] != MINER),
        "{list:#?}"
    );
    let samples = agent.scrape();
    assert_eq!(
        sum_metric(
            &samples,
            "bitsecure_unexpected_sent_bytes_total",
            &[("process", MINER)]
        ),
        0.0
    );
    assert_eq!(
        sum_metric(&samples, "bitsecure_baseline_learnt_late_rules", &[]),
        1.0
    );
    let said = status(&agent);
    assert!(said.starts_with("settling: no new class for"), "{said}");
    assert!(said.contains("1 learnt late"), "{said}");
}

/// With settling off (a stable baseline), the same low-risk newcomer is listed for review —
/// low risk, the reason given — and nothing is added to the file.
#[test]
fn a_stable_baseline_lists_low_risk_newcomers_for_review() {
    const MINER: &str = "bss-st-miner";
    let rig = rig("b", MINER);
    let baseline = scratch_dir().join(format!("stable-{}.toml", rig.net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\nsettle_quiet_seconds = 0\n",
        rig.cgroup.path.display(),
        baseline.display()
    ));
    for _ in 0..3 {
        ask(&rig, "bss-st-resolved", 2);
        std::thread::sleep(std::time::Duration::from_millis(800));
    }
    let learnt = learnt_baseline(&agent, &baseline);
    let report = ask(&rig, MINER, 3);
    // What the miner sent, as the agent counts it: L3 bytes (20 IPv4 + 8 UDP per datagram).
    let sent = report.sent_bytes + 28 * report.packets_sent;
    // Listed once all its bytes are counted (the last query may land a poll later).
    let entry = eventually(&agent, 15, |_| {
        agent
            .unexpected()
            .into_iter()
            .find(|entry| entry["process"] == MINER && entry["sent_bytes"].as_u64() == Some(sent))
            .ok_or_else(|| format!("the miner's lookup ({sent} bytes) is not listed"))
    });
    assert_eq!(
        (entry["risk"].as_str(), entry["reason"].as_str()),
        (Some("low"), Some("shared-destination")),
        "{entry}"
    );
    eventually(&agent, 10, |samples| {
        let low = sum_metric(
            samples,
            "bitsecure_unexpected_sent_bytes_total",
            &[
                ("process", MINER),
                ("risk", "low"),
                ("reason", "shared-destination"),
            ],
        );
        let pages = sum_metric(samples, "bitsecure_risk_pages", &[("risk", "low")]);
        match (low, pages) {
            (low, 0.0) if low == sent as f64 => Ok(()),
            other => Err(format!("low-risk bytes and paging: {other:?}")),
        }
    });
    assert_eq!(std::fs::read_to_string(&baseline).unwrap(), learnt);
    assert!(status(&agent).starts_with("stable: "));
}

/// `baseline record --until-quiet` goes on while new traffic classes keep coming, and
/// `--resume` adds to the file only what it lacks, keeping the rest (comments included).
#[test]
fn a_recording_ends_when_the_rig_is_quiet_and_can_be_resumed() {
    const MINER: &str = "bss-rec-miner";
    let rig = rig("c", MINER);
    let dir = scratch_dir();
    let baseline = dir.join(format!("quiet-{}.toml", rig.net.ns));
    let config = dir.join(format!("quiet-{}-config.toml", rig.net.ns));
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:1\"\npoll_interval_seconds = {TEST_POLL_SECONDS}\n\
             cgroup = \"{}\"\n[kernel]\npin_path = \"\"\n[baseline]\npath = \"{}\"\n",
            rig.cgroup.path.display(),
            baseline.display()
        ),
    )
    .unwrap();
    let record = |extra: &[&str]| {
        Command::new(agent_binary())
            .args(["baseline", "record", "--config"])
            .arg(&config)
            .args(extra)
            .spawn()
            .unwrap()
    };
    // At least 1 s, then until 5 s without a new class: the miner's class comes at once, a
    // new one at ~3 s (before the quiet time is up), so the recording goes on past ~8 s.
    let started = std::time::Instant::now();
    let mut recording = record(&["--duration", "1s", "--until-quiet", "5s", "--max", "60s"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    ask(&rig, "bss-rec-late", 2);
    let asked_at = started.elapsed();
    assert!(recording.wait().unwrap().success());
    let text = std::fs::read_to_string(&baseline).unwrap();
    assert!(
        text.contains("bss-rec-late"),
        "the late class was recorded:\n{text}"
    );
    let file: toml::Table = toml::from_str(&text).unwrap();
    let recorded = file["recording"]["duration_seconds"].as_float().unwrap();
    // The recording starts after the programs are attached (under a second here).
    assert!(
        recorded >= asked_at.as_secs_f64() + 5.0 - 1.5,
        "recorded {recorded} s, a new class came at {asked_at:?}: it goes on 5 s after"
    );

    // Resumed: a weekly job shows up; the file keeps everything and gains only that.
    let kept = format!("# reviewed by the owner\n{text}");
    std::fs::write(&baseline, &kept).unwrap();
    let mut resumed = record(&["--duration", "3s", "--resume"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ask(&rig, "bss-rec-weekly", 2);
    assert!(resumed.wait().unwrap().success());
    let after = std::fs::read_to_string(&baseline).unwrap();
    assert!(after.starts_with(&kept), "kept as it was:\n{after}");
    let added = &after[kept.len()..];
    assert!(added.contains("bss-rec-weekly"), "{after}");
    assert!(
        !added.contains(MINER),
        "the miner's rule was there already:\n{added}"
    );
    // Resuming a file that is not there says so.
    let missing = Command::new(agent_binary())
        .args(["baseline", "record", "--config"])
        .arg(&config)
        .args(["--duration", "1s", "--resume", "--output"])
        .arg(dir.join("no-such-baseline.toml"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("nothing to resume"),
        "{missing:?}"
    );
}

/// `baseline record` shows its progress as one bar with an ETA on a terminal (a pty from
/// `script`), and in a log (a pipe) as a line per tenth of the way, not one per poll.
#[test]
fn a_recording_shows_a_bar_on_a_terminal_and_few_lines_in_a_log() {
    let cgroup = TestCgroup::new("record-progress");
    let dir = scratch_dir().join(format!("progress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    // Polls every 0.1 s: 40 in the 4 s recorded.
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:1\"\npoll_interval_seconds = 0.1\ncgroup = \"{}\"\n\
             [kernel]\npin_path = \"\"\n",
            cgroup.path.display()
        ),
    )
    .unwrap();
    let command = |output: &str| {
        format!(
            "{} baseline record --duration 4s --config {} --output {}",
            agent_binary().display(),
            config.display(),
            dir.join(output).display()
        )
    };
    let on_terminal = Command::new("script")
        .args(["-qec", &command("tty.toml"), "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(
        shown.contains("ETA") && shown.contains("recording [") && shown.contains("100%"),
        "no progress bar on a terminal:\n{shown}"
    );
    assert!(
        !shown.contains("recording: "),
        "lines on a terminal:\n{shown}"
    );

    let in_log = Command::new("sh")
        .args(["-c", &command("log.toml")])
        .output()
        .unwrap();
    let logged = String::from_utf8_lossy(&in_log.stderr);
    assert!(in_log.status.success(), "{logged}");
    let lines = logged
        .lines()
        .filter(|line| line.starts_with("recording: "))
        .count();
    assert!(
        (5..=12).contains(&lines),
        "{lines} progress lines for 40 polls (a line per tenth expected):\n{logged}"
    );
    assert!(!logged.contains("ETA"), "a bar in a log:\n{logged}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bitsecure top` in a terminal (tmux): it shows the watched processes beside the baseline
/// and the unexpected list; `a` accepts the selected entry into the baseline file, and the
/// entry leaves the list.
#[test]
fn top_shows_the_rig_and_accepts_an_entry() {
    let mut net = TestNet::new();
    let target = format!("{}:5000", net.peer_v4);
    net.spawn_server(
        &install_generator("bst-server"),
        &["serve", "--udp", &target],
    );
    let cgroup = TestCgroup::new("top");
    let dir = scratch_dir().join(format!("top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = dir.join("baseline.toml");
    std::fs::write(
        &baseline,
        "format_version = 1\n\n[[rule]]\nprocess = \"bst-known\"\nremote = \"*\"\nprotocol = \"udp\"\n",
    )
    .unwrap();
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        cgroup.path.display(),
        baseline.display()
    ));
    let send = |program: &str| {
        run_generator(cgroup.command(&install_generator(program)).args([
            "udp",
            "--to",
            &target,
            "--datagrams",
            "20",
            "--size",
            "500",
        ]))
    };
    send("bst-known");
    send("bst-intruder");
    let session = format!("bitsecure-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let output = Command::new("tmux").args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let top = format!(
        "{} top --agent 127.0.0.1:{} --file {} --every 0.5",
        agent_binary().display(),
        agent.port,
        baseline.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &top,
    ]);
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let screen_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let screen = tmux(&["capture-pane", "-p", "-t", &session]);
            if done(&screen) {
                return screen;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{screen}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    // The known process beside its baseline, the intruder listed (selected: the only entry).
    screen_until("the rig on screen", &|screen| {
        screen.contains("bst-known")
            && screen.contains("bst-intruder")
            && screen.contains("new-process")
    });
    tmux(&["send-keys", "-t", &session, "a"]);
    let accepted = screen_until("the entry accepted", &|screen| {
        screen.contains("accepted bst-intruder") && !screen.contains("new-process")
    });
    let text = std::fs::read_to_string(&baseline).unwrap();
    assert!(
        text.contains("process = \"bst-intruder\""),
        "{text}\n{accepted}"
    );
    assert!(text.contains("accepted in bitsecure top"), "{text}");
    tmux(&["send-keys", "-t", &session, "q"]);
    let _ = std::fs::remove_dir_all(&dir);
}
