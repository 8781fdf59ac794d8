//! Privileged tests of "nobody can fool it: to whom really". A rule by name accepts the
//! addresses the name was resolved to; an attacker who could name their own address
//! `pool.example.org` would make their traffic expected. A DNS answer names addresses only when
//! it answers a question the receiving socket asked that server, and only for the process that
//! asked (or for everyone, if a trusted system resolver asked). The truth: which answers the
//! test sent, and the bytes the clients themselves report.

use std::net::IpAddr;

use bitsecure_test::{
    agent::{Agent, eventually, learnt_baseline},
    cgroup::TestCgroup,
    exposition::{Sample, sum_metric},
    process::{free_port, run_generator, scratch_dir, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

/// The miner; the baseline expects its traffic to `pool.example.org`.
const MINER: &str = "bsf-miner";
const POOL_NAME: &str = "pool.example.org";

fn dns_results(samples: &[Sample], result: &str) -> f64 {
    sum_metric(
        samples,
        "bitsecure_dns_responses_total",
        &[("result", result)],
    )
}

/// Unexpected bytes the miner sent to `remote`.
fn unexpected_sent(samples: &[Sample], remote: IpAddr) -> f64 {
    sum_metric(
        samples,
        "bitsecure_unexpected_sent_bytes_total",
        &[("process", MINER), ("remote", &remote.to_string())],
    )
}

/// Another process asks its own DNS server, which names a C2 address `pool.example.org`; a
/// datagram from port 53 over loopback forges the same for a socket that asked nothing. Neither
/// makes the miner's traffic to those addresses match its `pool.example.org` rule; the forgery
/// is counted as unsolicited. When the miner itself resolves the name, its own answer names the
/// address for it (a hijack of the miner's own DNS, which `names that move` is for).
#[test]
fn forged_dns_answers_do_not_make_a_c2_address_the_pool() {
    let mut net = TestNet::new();
    let c2 = net.peer_v4_host(21);
    let c2_loopback_forged = net.peer_v4_host(22);
    for address in [c2, c2_loopback_forged] {
        net.add_peer_address(IpAddr::V4(address));
    }
    // The attacker's DNS server names its C2 address as the pool; the C2 addresses serve TCP.
    let server = install_generator("bsf-server");
    let dns = format!("{}:53", net.peer_v4);
    net.spawn_server(
        &server,
        &[
            "dns-serve",
            "--listen",
            &dns,
            "--record",
            &format!("{POOL_NAME}=A:{c2}"),
        ],
    );
    for address in [c2, c2_loopback_forged] {
        net.spawn_server(&server, &["serve", "--tcp", &format!("{address}:3333")]);
    }
    let cgroup = TestCgroup::new("forged");
    let baseline = scratch_dir().join(format!("forged-{}.toml", net.ns));
    std::fs::write(
        &baseline,
        format!(
            "format_version = 1\n\n[[rule]]\nprocess = \"{MINER}\"\nremote = \"{POOL_NAME}\"\n\
             port = 3333\nprotocol = \"tcp\"\n"
        ),
    )
    .unwrap();
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        cgroup.path.display(),
        baseline.display()
    ));
    let miner = install_generator(MINER);
    let upload = |target: IpAddr, bytes: u64| {
        run_generator(cgroup.command(&miner).args([
            "tcp",
            "--connect",
            &format!("{target}:3333"),
            "--upload",
            &bytes.to_string(),
        ]))
    };

    // 1. Another process asks the attacker's server: its answer is its own.
    let evil = install_generator("bsf-evil");
    run_generator(
        cgroup
            .command(&evil)
            .args(["dns-query", "--server", &dns, "--name", POOL_NAME]),
    );
    eventually(&agent, 15, |samples| match dns_results(samples, "ok") {
        1.0 => Ok(()),
        n => Err(format!("the attacker's own answer: ok = {n}")),
    });
    let sent = upload(IpAddr::V4(c2), 10_000).sent_bytes;
    eventually(&agent, 15, |samples| {
        let unexpected = unexpected_sent(samples, IpAddr::V4(c2));
        if unexpected >= sent as f64 {
            Ok(())
        } else {
            Err(format!(
                "the miner's {sent} bytes to {c2}: {unexpected} unexpected (another process's \
                 answer named it the pool?)"
            ))
        }
    });

    // 2. A forged answer over loopback, to a socket of the miner itself that asked nothing.
    let sink_at = format!("127.0.0.1:{}", free_port());
    let sink = spawn_until(
        cgroup.command(&miner).args([
            "--timeout-secs",
            "30",
            "udp-sink",
            "--listen",
            &sink_at,
            "--idle-ms",
            "1000",
        ]),
        "ready",
    );
    const FORGED: u32 = 3;
    let forger = install_generator("bsf-forger");
    run_generator(std::process::Command::new(&forger).args([
        "dns-flood",
        "--to",
        &sink_at,
        "--from",
        "127.0.0.1:53",
        "--count",
        &FORGED.to_string(),
        "--name",
        POOL_NAME,
        "--first-address",
        &c2_loopback_forged.to_string(),
        "--ttl",
        "3600",
    ]));
    let received = bitsecure_test::process::GeneratorReport::parse(&sink.finish());
    assert_eq!(received.packets_received, u64::from(FORGED));
    eventually(&agent, 15, |samples| {
        match dns_results(samples, "unsolicited") {
            n if n == f64::from(FORGED) => Ok(()),
            n => Err(format!("unsolicited answers counted: {n}, {FORGED} sent")),
        }
    });
    let sent = upload(IpAddr::V4(c2_loopback_forged), 10_000).sent_bytes;
    eventually(&agent, 15, |samples| {
        let unexpected = unexpected_sent(samples, IpAddr::V4(c2_loopback_forged));
        if unexpected >= sent as f64 {
            Ok(())
        } else {
            Err(format!(
                "the miner's {sent} bytes to {c2_loopback_forged}: {unexpected} unexpected \
                 (the forged answer named it the pool?)"
            ))
        }
    });

    // 3. The miner asks the same server itself: its own answer names the address for it, and
    // its traffic there is the rule's (the check can tell the difference).
    run_generator(cgroup.command(&miner).args([
        "dns-query",
        "--server",
        &dns,
        "--name",
        POOL_NAME,
    ]));
    let rule_sent = |samples: &[bitsecure_test::exposition::Sample]| {
        sum_metric(
            samples,
            "bitsecure_rule_bytes_total",
            &[("process", MINER), ("direction", "sent")],
        )
    };
    let samples = agent.scrape();
    let (before, rule_before) = (
        unexpected_sent(&samples, IpAddr::V4(c2)),
        rule_sent(&samples),
    );
    let sent = upload(IpAddr::V4(c2), 50_000).sent_bytes;
    eventually(&agent, 15, |samples| {
        let rule = rule_sent(samples) - rule_before;
        let unexpected = unexpected_sent(samples, IpAddr::V4(c2)) - before;
        if rule > 0.0 && unexpected < sent as f64 {
            Ok(())
        } else {
            Err(format!(
                "after the miner's own lookup: rule bytes +{rule}, {unexpected} of {sent} bytes \
                 unexpected"
            ))
        }
    });
}

/// The pool's name, answered after learning with an address outside the network it had while
/// learning (a DNS or BGP hijack, or a pool that moved): its traffic stays the rule's, the
/// move is reported, and accepting it adds the network to the rule.
#[test]
fn a_name_answered_outside_its_learnt_networks_is_reported_as_moved() {
    let mut net = TestNet::new();
    let pool = IpAddr::V4(net.peer_v4_host(11));
    net.add_peer_address(pool);
    // Another /24, routed to the peer, unique to this network.
    let octets = net.peer_v4.octets();
    let block = std::net::Ipv4Addr::new(172, 16 + octets[1] % 16, octets[2], 0);
    net.route_block_to_peer(block, 24);
    let moved = IpAddr::V4(std::net::Ipv4Addr::new(
        172,
        16 + octets[1] % 16,
        octets[2],
        9,
    ));
    let server = install_generator("bsv-server");
    let learnt_dns = format!("{}:53", net.peer_v4);
    let hijacked_dns = format!("{}:53", net.peer_v4_host(53));
    net.add_peer_address(IpAddr::V4(net.peer_v4_host(53)));
    for (listen, address) in [(&learnt_dns, pool), (&hijacked_dns, moved)] {
        net.spawn_server(
            &server,
            &[
                "dns-serve",
                "--listen",
                listen,
                "--record",
                &format!("{POOL_NAME}=A:{address}"),
            ],
        );
    }
    net.spawn_server(&server, &["serve", "--tcp", "0.0.0.0:3333"]);
    let cgroup = TestCgroup::new("moved");
    let baseline = scratch_dir().join(format!("moved-{}.toml", net.ns));
    let _ = std::fs::remove_file(&baseline);
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 4\n",
        cgroup.path.display(),
        baseline.display()
    ));
    let miner = install_generator("bsv-miner");
    let resolve_and_mine = |dns: &str, address: IpAddr| {
        run_generator(cgroup.command(&miner).args([
            "dns-query",
            "--server",
            dns,
            "--name",
            POOL_NAME,
        ]));
        run_generator(cgroup.command(&miner).args([
            "tcp",
            "--connect",
            &format!("{address}:3333"),
            "--upload",
            "2000",
        ]));
    };
    resolve_and_mine(&learnt_dns, pool);
    resolve_and_mine(&learnt_dns, pool);
    let text = learnt_baseline(&agent, &baseline);
    let learnt = format!("{}.{}.{}.0/24", octets[0], octets[1], octets[2]);
    assert!(
        text.contains(&format!("remote = \"{POOL_NAME}\""))
            && text.contains(&format!("prefixes = [\"{learnt}\"]")),
        "the pool's rule by name with its network:\n{text}"
    );

    // Hijacked: the name now answers outside that network.
    resolve_and_mine(&hijacked_dns, moved);
    let labels = [
        ("process", "bsv-miner"),
        ("name", POOL_NAME),
        ("remote", &moved.to_string()),
    ];
    let moved_text = moved.to_string();
    eventually(&agent, 15, |samples| {
        match sum_metric(samples, "bitsecure_name_moved", &labels) {
            1.0 => Ok(()),
            n => Err(format!("bitsecure_name_moved {n}")),
        }
    });
    // Its traffic is still the rule's: nothing to the moved address is unexpected.
    assert_eq!(unexpected_sent_to(&agent.scrape(), moved), 0.0);

    let address = format!("127.0.0.1:{}", agent.port);
    let file = baseline.display().to_string();
    let accepted = std::process::Command::new(bitsecure_test::agent::agent_binary())
        .args([
            "baseline",
            "accept",
            "--moved-name",
            POOL_NAME,
            "--agent",
            &address,
            "--file",
            &file,
        ])
        .output()
        .unwrap();
    assert!(accepted.status.success(), "{accepted:?}");
    let text = std::fs::read_to_string(&baseline).unwrap();
    let block_text = format!("{block}/24");
    assert!(
        text.contains(&format!("\"{learnt}\", \"{block_text}\"")) && text.contains("# a move of"),
        "{text}"
    );
    eventually(&agent, 15, |samples| {
        match sum_metric(samples, "bitsecure_name_moved", &[("remote", &moved_text)]) {
            0.0 => Ok(()),
            n => Err(format!("after accept: bitsecure_name_moved {n}")),
        }
    });
}

/// Unexpected bytes sent to `remote` by any process.
fn unexpected_sent_to(samples: &[Sample], remote: IpAddr) -> f64 {
    sum_metric(
        samples,
        "bitsecure_unexpected_sent_bytes_total",
        &[("remote", &remote.to_string())],
    )
}
