//! Privileged tests of the names processes ask for: what a process resolved while learning is
//! written on its DNS rule; a name it never asked before is listed (once, however often it is
//! asked); thousands of distinct names under one domain in a minute — data leaving inside DNS
//! questions, through the usual resolver — raise the tunnelling signal, counted exactly against
//! the queries the client itself reports.

use bitsecure_test::{
    agent::{Agent, agent_binary, eventually, learnt_baseline},
    cgroup::TestCgroup,
    exposition::sum_metric,
    process::{run_generator, scratch_dir},
    testnet::TestNet,
};

use crate::install_generator;

const MINER: &str = "bsq-miner";

/// The agent's whole baseline view (`/api/baseline`).
fn view(agent: &Agent) -> serde_json::Value {
    let body = agent.try_get("/api/baseline").expect("the agent answers");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn new_names_are_listed_once_and_a_burst_of_names_is_a_tunnel() {
    let mut net = TestNet::new();
    let dns = format!("{}:53", net.peer_v4);
    net.spawn_server(
        &install_generator("bsq-dns"),
        &[
            "dns-serve",
            "--listen",
            &dns,
            "--record",
            &format!("pool.example.org=A:{}", net.peer_v4_host(11)),
            "--record",
            &format!("new.example.org=A:{}", net.peer_v4_host(12)),
        ],
    );
    let cgroup = TestCgroup::new("dnsq");
    let baseline = scratch_dir().join(format!("dnsq-{}.toml", net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\n\
         dns_tunnel_names_per_minute = 100\n",
        cgroup.path.display(),
        baseline.display()
    ));
    let miner = install_generator(MINER);
    let ask = |program: &std::path::Path, name: &str, count: u32, every_ms: u64| {
        run_generator(cgroup.command(program).args([
            "--timeout-secs",
            "120",
            "dns-query",
            "--server",
            &dns,
            "--name",
            name,
            "--count",
            &count.to_string(),
            "--every-ms",
            &every_ms.to_string(),
        ]))
    };

    // Learning: the miner resolves its pool now and then.
    ask(&miner, "pool.example.org", 3, 500);
    let text = learnt_baseline(&agent, &baseline);
    assert!(
        text.contains("asks = [\"pool.example.org\"]"),
        "the miner's DNS rule lists what it asked:\n{text}"
    );

    // Its pool again: nothing new. A name it never asked: listed once, however often asked.
    ask(&miner, "pool.example.org", 2, 0);
    ask(&miner, "new.example.org", 3, 0);
    let new = eventually(&agent, 15, |_| {
        let view = view(&agent);
        let names: Vec<serde_json::Value> =
            view["new_names"].as_array().cloned().unwrap_or_default();
        match names.as_slice() {
            [one] if one["queries"] == 3 => Ok(one.clone()),
            _ => Err(format!("new names: {names:#?}")),
        }
    });
    assert_eq!(new["process"], MINER);
    assert_eq!(new["name"], "new.example.org");
    assert_eq!(
        sum_metric(
            &agent.scrape(),
            "bitsecure_dns_new_names",
            &[("process", MINER)]
        ),
        1.0
    );
    let shown = std::process::Command::new(agent_binary())
        .args([
            "unexpected",
            "--agent",
            &format!("127.0.0.1:{}", agent.port),
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "{MINER} asked {} for new.example.org (3 queries",
            net.peer_v4
        )),
        "{shown}"
    );

    // 3,000 random names under one domain in about 30 s: the tunnelling signal, the count
    // exactly the queries the client sent.
    let tunnel = install_generator("bsq-tunnel");
    let sent = ask(&tunnel, "{}.t.example.net", 3000, 10).packets_sent;
    assert_eq!(sent, 3000);
    let labels = [("process", "bsq-tunnel"), ("domain", "t.example.net")];
    eventually(&agent, 15, |samples| {
        match sum_metric(samples, "bitsecure_dns_tunnel_names_per_minute", &labels) {
            n if n == sent as f64 => Ok(()),
            n => Err(format!("tunnel names per minute {n}, {sent} sent")),
        }
    });
    assert_eq!(
        sum_metric(
            &agent.scrape(),
            "bitsecure_kernel_events_dropped_total",
            &[]
        ),
        0.0
    );
    // The miner's few lookups never look like one.
    assert_eq!(
        sum_metric(
            &agent.scrape(),
            "bitsecure_dns_tunnel_names_per_minute",
            &[("process", MINER)]
        ),
        0.0
    );
}
