//! Privileged tests of "nobody can fool it: who really talks". A rule expects a program — its
//! executable (path and SHA-256) and the cgroup the kernel recorded when the socket was made —
//! not just a name any process can take. The truth each check is held against comes from
//! outside the agent: the path the test installed, `sha256sum`, the cgroup directory the test
//! made.

use std::path::{Path, PathBuf};

use bitsecure_test::{
    agent::{Agent, eventually, learnt_baseline},
    cgroup::{TestCgroup, cgroup2_mount},
    exposition::{Sample, sum_metric},
    process::{Spawned, scratch_dir, sh, spawn_until},
    testnet::TestNet,
};

use crate::{install_generator, rule_of};

/// The miner's name; every impostor takes it.
const MINER: &str = "bsg-imp-miner";

/// A miner-like client in `cgroup`: one connection to `pool`, a small job every 300 ms.
fn mine(cgroup: &TestCgroup, program: &Path, pool: &str, extra: &[&str]) -> Spawned {
    spawn_until(
        cgroup.command(program).args(extra).args([
            "periodic",
            "--connect",
            pool,
            "--every-ms",
            "300",
            "--job-bytes",
            "1500",
        ]),
        "connected",
    )
}

/// The cgroup path of a test cgroup as rules write it (`/bitsecure-test-...`).
fn rule_cgroup(cgroup: &TestCgroup) -> String {
    let relative = cgroup.path.strip_prefix(cgroup2_mount()).unwrap();
    format!("/{}", relative.display())
}

/// `sha256sum`'s hash of a file: the independent truth.
fn sha256sum(path: &Path) -> String {
    let out = sh("sha256sum", &[&path.display().to_string()]);
    out.split_whitespace().next().unwrap().to_owned()
}

fn bitsecure(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bitsecure_test::agent::agent_binary())
        .args(args)
        .output()
        .unwrap()
}

/// The agent's unexpected list.
/// `bitsecure_impostor_bytes_total` of one impostor of the miner.
fn impostor_bytes(samples: &[Sample], exe: &str, cgroup: &str) -> f64 {
    sum_metric(
        samples,
        "bitsecure_impostor_bytes_total",
        &[("process", MINER), ("exe", exe), ("cgroup", cgroup)],
    )
}

/// Learns the real miner (exe, hash, cgroup from the kernel), then runs three impostors beside
/// it: a copy of its binary under another path, its own binary started from another cgroup,
/// and another program that renamed itself (`prctl(PR_SET_NAME)`). Each is unexpected, listed
/// on its own as an impostor of the miner; the miner stays expected.
#[test]
fn impostors_of_an_expected_process_are_unexpected_and_named_as_such() {
    let mut net = TestNet::new();
    let pool = format!("{}:3333", net.peer_v4);
    net.spawn_server(
        &install_generator("bsg-imp-pool"),
        &["serve", "--tcp", &pool],
    );
    let rig = TestCgroup::new("imp-rig");
    let elsewhere = TestCgroup::new("imp-else");
    let miner_exe = install_generator(MINER);
    let baseline = scratch_dir().join(format!("impostors-{}.toml", net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "[baseline]\npath = \"{}\"\nlearn_seconds = 4\n",
        baseline.display()
    ));
    let _miner = mine(&rig, &miner_exe, &pool, &[]);

    // The learnt rule pins the program: its path, its content, its cgroup.
    let text = learnt_baseline(&agent, &baseline);
    let rule = rule_of(&text, MINER);
    assert_eq!(rule["exe"].as_str(), miner_exe.to_str(), "{text}");
    assert_eq!(
        rule["sha256"].as_str(),
        Some(sha256sum(&miner_exe).as_str())
    );
    assert_eq!(rule["cgroup"].as_str(), Some(rule_cgroup(&rig).as_str()));

    // The impostors.
    let copy_dir = scratch_dir().join(format!("impostor-copy-{}", net.ns));
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy: PathBuf = copy_dir.join(MINER);
    std::fs::copy(&miner_exe, &copy).unwrap();
    let renamer = install_generator("bsg-imp-other");
    let _copy = mine(&rig, &copy, &pool, &[]);
    let _moved = mine(&elsewhere, &miner_exe, &pool, &[]);
    let _renamed = mine(&rig, &renamer, &pool, &["--comm", MINER]);
    let (rig_cgroup, other_cgroup) = (rule_cgroup(&rig), rule_cgroup(&elsewhere));
    let impostors = [
        (copy.display().to_string(), rig_cgroup.clone()),
        (miner_exe.display().to_string(), other_cgroup.clone()),
        (renamer.display().to_string(), rig_cgroup.clone()),
    ];
    eventually(&agent, 20, |samples| {
        let missing: Vec<&(String, String)> = impostors
            .iter()
            .filter(|(exe, cgroup)| impostor_bytes(samples, exe, cgroup) == 0.0)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not reported as impostors: {missing:?}"))
        }
    });
    let list = agent.unexpected();
    let mine: Vec<&serde_json::Value> = list
        .iter()
        .filter(|entry| entry["process"] == MINER)
        .collect();
    for (exe, cgroup) in &impostors {
        let entry = mine
            .iter()
            .find(|entry| entry["exe"] == exe.as_str() && entry["cgroup"] == cgroup.as_str())
            .unwrap_or_else(|| panic!("no entry for {exe} in {cgroup}: {list:#?}"));
        assert_eq!(entry["impostor_of"]["exe"], miner_exe.to_str().unwrap());
        assert_eq!(entry["impostor_of"]["cgroup"], rig_cgroup.as_str());
        assert_eq!(entry["port"], 3333);
    }
    // The real miner is none of them: still expected, and never counted as an impostor.
    assert_eq!(mine.len(), impostors.len(), "{list:#?}");
    let samples = agent.scrape();
    assert_eq!(
        impostor_bytes(&samples, miner_exe.to_str().unwrap(), &rig_cgroup),
        0.0
    );
    // And the terminal view says it in words.
    let shown = bitsecure(&[
        "unexpected",
        "--agent",
        &format!("127.0.0.1:{}", agent.port),
    ]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "! {MINER} is an impostor of `{MINER}`: it runs {} in cgroup {rig_cgroup}",
            copy.display()
        )),
        "{shown}"
    );
}

/// The miner's binary replaced at the same path (an update, or a patched binary): its traffic
/// is still its rule's, and `bitsecure_executable_changed` says the content changed until
/// `baseline accept --executable` takes the new hash, noted in the file.
#[test]
fn a_changed_executable_is_reported_until_accepted() {
    let mut net = TestNet::new();
    let pool = format!("{}:3333", net.peer_v4);
    net.spawn_server(
        &install_generator("bsg-upd-pool"),
        &["serve", "--tcp", &pool],
    );
    let rig = TestCgroup::new("upd-rig");
    let name = "bsg-upd-miner";
    let miner_exe = install_generator(name);
    let before = sha256sum(&miner_exe);
    let baseline = scratch_dir().join(format!("updated-{}.toml", net.ns));
    std::fs::write(
        &baseline,
        format!(
            "format_version = 1\n\n[[rule]]\nprocess = \"{name}\"\nexe = \"{}\"\nsha256 = \
             \"{before}\"\nremote = \"{}\"\nport = 3333\nprotocol = \"tcp\"\n",
            miner_exe.display(),
            net.peer_v4
        ),
    )
    .unwrap();
    let agent = Agent::start_with(&format!(
        "[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        baseline.display()
    ));
    let changed = |samples: &[Sample]| {
        sum_metric(
            samples,
            "bitsecure_executable_changed",
            &[("process", name), ("exe", miner_exe.to_str().unwrap())],
        )
    };
    let rule_bytes = |samples: &[Sample]| {
        sum_metric(samples, "bitsecure_rule_bytes_total", &[("process", name)])
    };
    {
        let _miner = mine(&rig, &miner_exe, &pool, &[]);
        eventually(&agent, 15, |samples| {
            if rule_bytes(samples) > 0.0 && changed(samples) == 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "the original miner: rule bytes {}, changed {}",
                    rule_bytes(samples),
                    changed(samples)
                ))
            }
        });
    }
    // Replaced in place: other content (a trailing byte does not stop an ELF from running).
    let mut content = std::fs::read(&miner_exe).unwrap();
    content.extend_from_slice(b"patched");
    let staging = miner_exe.with_extension("new");
    std::fs::write(&staging, content).unwrap();
    std::fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&staging, &miner_exe).unwrap();
    let after = sha256sum(&miner_exe);
    assert_ne!(before, after);
    let _patched = mine(&rig, &miner_exe, &pool, &[]);
    eventually(&agent, 15, |samples| match changed(samples) {
        1.0 => Ok(()),
        n => Err(format!("bitsecure_executable_changed = {n}")),
    });
    // Still the rule's traffic: nothing of the miner is unexpected.
    assert!(
        !agent
            .unexpected()
            .iter()
            .any(|entry| entry["process"] == name),
        "the patched miner's traffic left its rule"
    );

    let address = format!("127.0.0.1:{}", agent.port);
    let exe = miner_exe.display().to_string();
    let file = baseline.display().to_string();
    let accepted = bitsecure(&[
        "baseline",
        "accept",
        "--executable",
        &exe,
        "--agent",
        &address,
        "--file",
        &file,
    ]);
    assert!(accepted.status.success(), "{accepted:?}");
    let text = std::fs::read_to_string(&baseline).unwrap();
    assert!(text.contains(&format!("sha256 = \"{after}\"")), "{text}");
    assert!(
        text.contains("# executable change accepted ") && text.contains(&before),
        "{text}"
    );
    eventually(&agent, 15, |samples| match changed(samples) {
        0.0 => Ok(()),
        n => Err(format!("after accept: bitsecure_executable_changed = {n}")),
    });
}
