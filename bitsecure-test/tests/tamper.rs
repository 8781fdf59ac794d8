//! Tamper evidence: root detaching or replacing the agent's programs (with the real bpftool)
//! is seen within a poll or two — `bitsecure_programs_attached` drops to 0 or
//! `bitsecure_program_reattachments_total` rises — and the agent attaches its program again.
//! The attacker's ways around: a look-alike program put in the place of ours, the "polite"
//! legacy detach, and a detach while the agent is stopped (its pinned link kept, but dead).

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command, sync::Mutex};

use bitsecure_test::{
    agent::{Agent, agent_binary, eventually},
    cgroup::{TestCgroup, attached_programs},
    exposition::Sample,
    process::{run, scratch_dir, sh},
};

/// The agent's programs, by the names the agent gives them.
const PROGRAMS: [&str; 5] = bitsecure::kernel::programs::PROGRAM_NAMES;

/// Attachments of one cgroup are shared state: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn value(samples: &[Sample], name: &str, program: &str) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name && sample.labels.get("program").map(String::as_str) == Some(program)
        })
        .map(|sample| sample.value)
}

fn attached_gauge(samples: &[Sample], program: &str) -> Option<f64> {
    value(samples, "bitsecure_programs_attached", program)
}

fn reattachments(samples: &[Sample], program: &str) -> f64 {
    value(samples, "bitsecure_program_reattachments_total", program)
        .unwrap_or_else(|| panic!("no bitsecure_program_reattachments_total for {program}"))
}

/// All five gauges are 1 and every re-attachment counter exists (at 0).
fn wait_all_attached(agent: &Agent) {
    eventually(agent, 10, |samples| {
        for program in PROGRAMS {
            match attached_gauge(samples, program) {
                Some(1.0) => {}
                other => return Err(format!("{program}: attached gauge {other:?}")),
            }
            if value(samples, "bitsecure_program_reattachments_total", program).is_none() {
                return Err(format!("{program}: no re-attachment counter yet"));
            }
        }
        Ok(())
    });
}

/// The bpf link that attaches `program` to `cgroup` (`bpftool link show`), and its program id.
fn link_of(cgroup: &Path, attach_type: &str) -> Option<(u64, u64)> {
    let cgroup_id = std::fs::metadata(cgroup).unwrap().ino();
    let links: serde_json::Value =
        serde_json::from_str(&sh("bpftool", &["-j", "link", "show"])).unwrap();
    links.as_array()?.iter().find_map(|link| {
        (link["type"] == "cgroup"
            && link["cgroup_id"].as_u64() == Some(cgroup_id)
            && link["attach_type"] == attach_type)
            .then(|| {
                (
                    link["id"].as_u64().unwrap(),
                    link["prog_id"].as_u64().unwrap(),
                )
            })
    })
}

/// Program ids attached to `cgroup` for `attach_type`, as `bpftool cgroup show` lists them.
fn attached_ids(cgroup: &Path, attach_type: &str) -> Vec<(u64, String)> {
    let listing: serde_json::Value = serde_json::from_str(&sh(
        "bpftool",
        &["-j", "cgroup", "show", &cgroup.display().to_string()],
    ))
    .unwrap();
    listing
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry["attach_type"] == attach_type)
                .map(|entry| {
                    (
                        entry["id"].as_u64().unwrap(),
                        entry["name"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (a few poll intervals) for the agent to notice `program` gone: the
/// gauge at 0 in some scrape, or the re-attachment counter above `before`.
fn wait_noticed(agent: &Agent, program: &str, before: f64) -> f64 {
    let mut saw_zero = false;
    // The guard checks every poll interval (1 s here); 10 s of slack for a machine whose CPUs
    // another test saturates (a DNS flood starved the guard thread past 3 s once).
    let after = eventually(agent, 10, |samples| {
        saw_zero |= attached_gauge(samples, program) == Some(0.0);
        let now = reattachments(samples, program);
        if now > before || saw_zero {
            Ok(now)
        } else {
            Err(format!(
                "{program}: gauge never 0 and re-attachments still {now}"
            ))
        }
    });
    // With re-attachment it is back: gauge 1 again.
    eventually(agent, 10, |samples| {
        match attached_gauge(samples, program) {
            Some(1.0) => Ok(()),
            other => Err(format!("{program}: not re-attached, gauge {other:?}")),
        }
    });
    after
}

#[test]
fn a_detached_program_is_reported_and_reattached() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cgroup = TestCgroup::new("tamper");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    wait_all_attached(&agent);
    assert_eq!(attached_programs(&cgroup.path), 5);
    let (link, prog) = link_of(&cgroup.path, "cgroup_inet_egress").expect("egress link");

    // The legacy detach cannot remove a program attached through a link: nothing changes.
    let legacy = run(
        "bpftool",
        &[
            "cgroup",
            "detach",
            &cgroup.path.display().to_string(),
            "egress",
            "id",
            &prog.to_string(),
        ],
    );
    assert!(
        legacy.is_err(),
        "bpftool cgroup detach removed a linked program"
    );
    assert_eq!(attached_programs(&cgroup.path), 5);

    let before = reattachments(&agent.scrape(), "count_egress");
    assert_eq!(before, 0.0);
    sh("bpftool", &["link", "detach", "id", &link.to_string()]);
    let after = wait_noticed(&agent, "count_egress", before);
    assert_eq!(after, 1.0, "one detach, one re-attachment");
    assert_eq!(
        attached_programs(&cgroup.path),
        5,
        "all five attached again"
    );
    let egress = attached_ids(&cgroup.path, "cgroup_inet_egress");
    assert_eq!(
        egress,
        vec![(prog, "count_egress".to_owned())],
        "our own program is back"
    );
    // The others were left alone.
    let samples = agent.scrape();
    for program in PROGRAMS.iter().filter(|name| **name != "count_egress") {
        assert_eq!(reattachments(&samples, program), 0.0, "{program}");
    }
    let log = agent.log_text();
    assert!(
        log.contains("count_egress is no longer attached to cgroup")
            && log.contains("(no program of this attach type runs there)")
            && log.contains("re-attached it"),
        "{log}"
    );
}

/// The attacker's way around a check by name or tag: a program that is not ours in its place
/// (here our own count_egress, attached at ingress — bpftool lets root do that).
#[test]
fn a_program_put_in_place_of_ours_is_not_taken_for_ours() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cgroup = TestCgroup::new("tamper-swap");
    let cgroup_path = cgroup.path.display().to_string();
    let agent = Agent::start_with(&format!("cgroup = \"{cgroup_path}\"\n"));
    wait_all_attached(&agent);
    let (ingress_link, ingress_prog) =
        link_of(&cgroup.path, "cgroup_inet_ingress").expect("ingress link");
    let (_, impostor) = link_of(&cgroup.path, "cgroup_inet_egress").expect("egress link");
    let impostor_id = impostor.to_string();

    // The impostor first, then ours goes: at no moment is ingress without a program.
    sh(
        "bpftool",
        &[
            "cgroup",
            "attach",
            &cgroup_path,
            "ingress",
            "id",
            &impostor_id,
            "multi",
        ],
    );
    sh(
        "bpftool",
        &["link", "detach", "id", &ingress_link.to_string()],
    );
    let after = wait_noticed(&agent, "count_ingress", 0.0);
    assert_eq!(after, 1.0);
    let mut ingress = attached_ids(&cgroup.path, "cgroup_inet_ingress");
    ingress.sort();
    let mut expected = vec![
        (ingress_prog, "count_ingress".to_owned()),
        (impostor, "count_egress".to_owned()),
    ];
    expected.sort();
    assert_eq!(ingress, expected, "ours re-attached beside the impostor");
    let log = agent.log_text();
    assert!(
        log.contains(&format!(
            "count_ingress is no longer attached to cgroup {cgroup_path} (only other programs \
             run there, ids {impostor_id}; one may be a look-alike"
        )),
        "{log}"
    );
    // Clean up the impostor (a legacy attachment, so the legacy detach works).
    sh(
        "bpftool",
        &[
            "cgroup",
            "detach",
            &cgroup_path,
            "ingress",
            "id",
            &impostor_id,
        ],
    );
}

/// With pinned links: a detach while the agent is stopped leaves a dead pinned link that the
/// next agent would keep (same program); its first check finds it dead and re-attaches, and
/// the new link is pinned in its place, so uninstall still detaches everything.
#[test]
fn a_pinned_link_detached_while_the_agent_is_stopped_is_reattached_at_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cgroup = TestCgroup::new("tamper-pins");
    let pins = format!("/sys/fs/bpf/bitsecure-test-{}-tamper", std::process::id());
    let state = scratch_dir().join("tamper-pins");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let config = format!(
        "cgroup = \"{}\"\n[kernel]\npin_path = \"{pins}\"\n[baseline]\npath = \"{}\"\n\
         learn_seconds = 0\n",
        cgroup.path.display(),
        state.join("baseline.toml").display()
    );
    let uninstall = || {
        let file = state.join("uninstall.toml");
        std::fs::write(
            &file,
            format!(
                "[kernel]\npin_path = \"{pins}\"\n[baseline]\npath = \"{}\"\n",
                state.join("baseline.toml").display()
            ),
        )
        .unwrap();
        Command::new(agent_binary())
            .args(["uninstall", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let _remove_pins = RemovePins(pins.clone());
    let first = Agent::start_with(&config);
    wait_all_attached(&first);
    assert!(first.stop().success());
    assert_eq!(attached_programs(&cgroup.path), 5, "pinned: still attached");
    let (link, _) = link_of(&cgroup.path, "cgroup_sock_ops").expect("sock_ops link");
    sh("bpftool", &["link", "detach", "id", &link.to_string()]);
    assert_eq!(attached_programs(&cgroup.path), 4);

    let second = Agent::start_with(&config);
    eventually(&second, 3, |samples| {
        match (
            attached_gauge(samples, "mark_passive"),
            value(
                samples,
                "bitsecure_program_reattachments_total",
                "mark_passive",
            ),
        ) {
            (Some(1.0), Some(1.0)) => Ok(()),
            other => Err(format!("mark_passive (gauge, re-attachments): {other:?}")),
        }
    });
    assert_eq!(attached_programs(&cgroup.path), 5);
    let pinned = sh(
        "bpftool",
        &[
            "-j",
            "link",
            "show",
            "pinned",
            &format!(
                "{pins}/link-mark_passive-{}",
                std::fs::metadata(&cgroup.path).unwrap().ino()
            ),
        ],
    );
    let pinned: serde_json::Value = serde_json::from_str(&pinned).unwrap();
    assert_eq!(
        pinned["cgroup_id"].as_u64(),
        Some(std::fs::metadata(&cgroup.path).unwrap().ino()),
        "the pin holds the live link: {pinned}"
    );
    assert!(second.stop().success());
    let done = uninstall();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        attached_programs(&cgroup.path),
        0,
        "uninstall detached everything"
    );
}

/// Removes the pins (detaching the programs) should the test fail half-way.
struct RemovePins(String);

impl Drop for RemovePins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The id of the agent's TCX link on the interface with `ifindex` for `direction`
/// (`egress`/`ingress`), from the link descriptors the agent holds (`/proc/<pid>/fdinfo`:
/// other agents of parallel tests watch the interface too, and Debian's bpftool does not
/// decode TCX links).
fn interface_link_of(agent: &Agent, ifindex: u64, direction: &str) -> Option<u64> {
    let fdinfo = std::fs::read_dir(format!("/proc/{}/fdinfo", agent.pid())).ok()?;
    fdinfo.filter_map(Result::ok).find_map(|entry| {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(":\t"))
                .map(str::trim)
        };
        (field("link_type") == Some("tcx")
            && field("ifindex")?.parse::<u64>().ok() == Some(ifindex)
            && field("attach_type")?.ends_with(&format!("({direction})")))
        .then(|| field("link_id")?.parse().ok())?
    })
}

/// Root detaching the interface counting program from an interface (the way around the
/// unattributed-bytes counter) is noticed and undone: the re-attachment is counted, and the
/// interface is counted again.
#[test]
fn a_detached_interface_program_is_reported_and_reattached() {
    let net = bitsecure_test::testnet::TestNet::new();
    // A cgroup of its own: an agent of the whole host counts every other test's sockets too
    // (the load test's churn), which this test is not about.
    let cgroup = TestCgroup::new("tamper-iface");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let interface = net.host_interface().to_owned();
    let ifindex: u64 = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let program = "iface_egress";
    let link = eventually(&agent, 10, |_| {
        interface_link_of(&agent, ifindex, "egress")
            .ok_or_else(|| format!("no egress link of the agent on {interface}"))
    });
    let before = eventually(&agent, 10, |samples| {
        value(samples, "bitsecure_program_reattachments_total", program)
            .ok_or_else(|| format!("{program}: no re-attachment counter yet"))
    });
    sh("bpftool", &["link", "detach", "id", &link.to_string()]);
    let after = wait_noticed(&agent, program, before);
    assert_eq!(after, before + 1.0, "one detach, one re-attachment");
    let relinked = interface_link_of(&agent, ifindex, "egress").expect("a new link");
    assert_ne!(relinked, link);
    assert!(
        agent.log_text().contains(&format!(
            "the interface counting programs were detached from {interface}"
        )),
        "{}",
        agent.log_text()
    );
}

/// Restores `kernel.bpf_stats_enabled` when dropped.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Self {
        let before = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, "1").unwrap();
        Self(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// The program self-metrics name the programs the kernel has (id, tag and name as bpftool
/// shows them), and with the kernel's BPF statistics on, their runs and run time grow, never
/// past what bpftool reads afterwards.
#[test]
fn program_metrics_match_what_bpftool_shows() {
    let cgroup = TestCgroup::new("program-stats");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let _stats = BpfStats::enable();
    let infos = eventually(&agent, 10, |samples| {
        let infos: Vec<(String, String, String)> = samples
            .iter()
            .filter(|sample| sample.name == "bitsecure_program_info")
            .map(|sample| {
                let label = |key: &str| sample.labels.get(key).cloned().unwrap_or_default();
                (label("program"), label("id"), label("tag"))
            })
            .collect();
        let runs = value(samples, "bitsecure_program_runs_total", "count_egress").unwrap_or(0.0);
        if infos.len() >= PROGRAMS.len() && runs > 0.0 {
            Ok(infos)
        } else {
            // Traffic of the watched cgroup runs the socket programs.
            let _ = cgroup
                .command(Path::new("curl"))
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{}/-/healthy", agent.port),
                ])
                .status();
            Err(format!(
                "{} programs listed, count_egress ran {runs} times",
                infos.len()
            ))
        }
    });
    let samples = agent.scrape();
    for (program, id, tag) in &infos {
        let shown: serde_json::Value =
            serde_json::from_str(&sh("bpftool", &["-j", "prog", "show", "id", id])).unwrap();
        // bpftool shows at most 15 characters of a name.
        let name: String = program.chars().take(15).collect();
        assert_eq!(shown["name"], name.as_str(), "id {id}: {shown}");
        assert_eq!(shown["tag"], tag.as_str(), "{program}: {shown}");
        if PROGRAMS.contains(&program.as_str()) {
            let runs = value(&samples, "bitsecure_program_runs_total", program).unwrap();
            let kernel_runs = shown["run_cnt"].as_f64().unwrap_or(0.0);
            assert!(
                runs <= kernel_runs,
                "{program}: {runs} runs exported, the kernel counted {kernel_runs}"
            );
        }
    }
    assert!(
        value(
            &samples,
            "bitsecure_program_run_seconds_total",
            "count_egress"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        samples
            .iter()
            .find(|sample| sample.name == "bitsecure_bpf_stats_enabled")
            .map(|sample| sample.value),
        Some(1.0)
    );
}
