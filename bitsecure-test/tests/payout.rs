//! Privileged tests of "nobody can fool it: to whose wallet". The account a miner logs in with
//! (Stratum V1 `mining.authorize`, sent after `mining.subscribe`; or the xmrig `login`) is
//! learnt beside its rule; the same miner, binary and pool logging in with another account is
//! listed with both accounts, counted and accepted only on purpose. The truth: the account the
//! test gave the miner on its command line.

use bitsecure_test::{
    agent::{Agent, agent_binary, eventually, learnt_baseline},
    cgroup::TestCgroup,
    exposition::{Sample, sum_metric},
    process::{Spawned, scratch_dir},
    testnet::TestNet,
};

use crate::{install_rig, rule_of};

const MINER: &str = "bsp-miner";
const WALLET: &str = "4OwnersWallet.rig01";
const THIEF: &str = "4ThiefsWallet.rig01";
const THIEF_XMRIG: &str = "4OtherThief+1000";

fn bitsecure(args: &[&str]) -> std::process::Output {
    std::process::Command::new(agent_binary())
        .args(args)
        .output()
        .unwrap()
}

fn payout_changed(samples: &[Sample], account: &str) -> f64 {
    sum_metric(
        samples,
        "bitsecure_payout_changed_bytes_total",
        &[("process", MINER), ("account", account)],
    )
}

/// The miner's entries in the agent's unexpected list.
fn listed(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .unexpected()
        .into_iter()
        .filter(|entry| entry["process"] == MINER)
        .collect()
}

#[test]
fn a_miner_paying_another_account_is_listed_alerted_and_accepted_only_on_purpose() {
    let mut net = TestNet::new();
    let pool = format!("{}:3333", net.peer_v4);
    net.spawn_server(
        &install_rig("bsp-pool"),
        &["pool", "--listen", &pool, "--job-interval-ms", "300"],
    );
    let cgroup = TestCgroup::new("payout");
    let baseline = scratch_dir().join(format!("payout-{}.toml", net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\n",
        cgroup.path.display(),
        baseline.display()
    ));
    let miner = install_rig(MINER);
    let mine = |account: &str, flavour: &str| -> Spawned {
        let mut command = cgroup.command(&miner);
        command.args([
            "miner",
            "--pool",
            &pool,
            "--worker",
            account,
            "--flavour",
            flavour,
        ]);
        // The rig's miner prints nothing: wait for its connection through the agent instead.
        command.stdout(std::process::Stdio::null());
        let child = command.spawn().expect("start the miner");
        Spawned::from_child(child)
    };

    // Learnt: the account beside the rule (V1: the login is the second message).
    let owner = mine(WALLET, "v1");
    let text = learnt_baseline(&agent, &baseline);
    let rule = rule_of(&text, MINER);
    assert_eq!(rule["account"].as_str(), Some(WALLET), "{text}");
    drop(owner);

    // The same miner, binary and pool, another wallet.
    let thief = mine(THIEF, "v1");
    eventually(&agent, 20, |samples| match payout_changed(samples, THIEF) {
        bytes if bytes > 0.0 => Ok(()),
        _ => Err(format!("no payout change counted for {THIEF}")),
    });
    let entries = listed(&agent);
    let entry = entries
        .iter()
        .find(|entry| entry["account"] == THIEF)
        .unwrap_or_else(|| panic!("{THIEF} not listed: {entries:#?}"));
    assert_eq!(entry["expected_account"], WALLET);
    assert_eq!(entry["port"], 3333);
    let address = format!("127.0.0.1:{}", agent.port);
    let shown = bitsecure(&["unexpected", "--agent", &address]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "! {MINER} pays another account on {}:3333: it logged in as {THIEF}, the baseline \
             expects {WALLET}",
            net.peer_v4
        )),
        "{shown}"
    );
    // The owner's own account is never counted as a change.
    assert_eq!(payout_changed(&agent.scrape(), WALLET), 0.0);
    drop(thief);

    // Accepted on purpose: the rule takes the new account, noted in the file.
    let file_arg = baseline.display().to_string();
    let accepted = bitsecure(&[
        "baseline",
        "accept",
        "--process",
        MINER,
        "--agent",
        &address,
        "--file",
        &file_arg,
    ]);
    assert!(accepted.status.success(), "{accepted:?}");
    let text = std::fs::read_to_string(&baseline).unwrap();
    assert!(text.contains(&format!("account = \"{THIEF}\"")), "{text}");
    assert!(
        text.contains("# payout account change accepted ") && text.contains(WALLET),
        "{text}"
    );
    eventually(&agent, 15, |_| {
        let left = listed(&agent);
        if left.iter().all(|entry| entry["account"] != THIEF) {
            Ok(())
        } else {
            Err(format!("still listed after accept: {left:#?}"))
        }
    });

    // The xmrig flavour's `login` is read too.
    let _other = mine(THIEF_XMRIG, "login");
    eventually(&agent, 20, |samples| {
        match payout_changed(samples, THIEF_XMRIG) {
            bytes if bytes > 0.0 => Ok(()),
            _ => Err(format!("no payout change counted for {THIEF_XMRIG}")),
        }
    });
}
