//! Privileged tests of "every byte on the wire": traffic that takes a path below the socket
//! hooks is not counted as flows, so it must show some other way. A packet socket (AF_PACKET)
//! sending hand-built frames, and a raw IP socket in another network namespace, are listed
//! with the process that holds them (`bitsecure_packet_sockets`), and go when it closes them;
//! the baseline says who may hold one. A connection through NAT on this host (or REDIRECT in a
//! namespace) is one flow, to the address the client asked for. The interface totals, which
//! count what packet sockets send, are in `interface_totals.rs`.

use std::{collections::BTreeSet, net::Ipv4Addr};

use bitsecure_test::{
    agent::{Agent, eventually},
    cgroup::TestCgroup,
    exposition::{Sample, process_traffic, sum_metric, traffic_by_process},
    process::{run_generator, scratch_dir, sh},
    testnet::{HostNftTable, LOOPBACK_PORT, TestNet, nft_counter},
};

use crate::install_generator;

/// `bitsecure_packet_sockets` of `process` (summed over its exe) with `kind` and `protocol`.
pub(crate) fn held(samples: &[Sample], process: &str, kind: &str, protocol: &str) -> f64 {
    sum_metric(
        samples,
        "bitsecure_packet_sockets",
        &[("process", process), ("kind", kind), ("protocol", protocol)],
    )
}

#[test]
fn packet_and_raw_sockets_are_listed_with_their_process() {
    const FRAMES: u32 = 4096;
    let mut net = TestNet::new();
    let agent = Agent::start();
    // A raw IP socket (protocol 253) held by a server in the test namespace.
    let raw_server = install_generator("bsg-raw-holder");
    net.spawn_server(
        &raw_server,
        &[
            "serve",
            "--raw-protocol",
            "253",
            "--raw-bind",
            &net.peer_v4.to_string(),
        ],
    );
    // 4 MiB of frames through a packet socket on the host's veth, below every socket hook.
    let mut sender = net.send_frames(&install_generator("bsg-pkt-sender"), FRAMES, &[]);
    let exe = sender_exe_label(&agent);
    eventually(&agent, 15, |samples| {
        let packet = held(samples, "bsg-pkt-sender", "packet", "ipv4");
        let raw = held(samples, "bsg-raw-holder", "raw", "253");
        // The frames are real: the namespace received them.
        let (frames, _) = net.counter("sent", "udp");
        if packet == 1.0 && raw == 1.0 && frames >= u64::from(FRAMES) {
            Ok(())
        } else {
            Err(format!(
                "packet sockets of bsg-pkt-sender: {packet}, raw sockets of bsg-raw-holder: \
                 {raw}; nftables saw {frames} of the {FRAMES} frames"
            ))
        }
    });
    assert!(exe.ends_with("bsg-pkt-sender"), "exe label {exe:?}");
    // Closed (the process ends): no longer listed.
    let _ = sender.child.kill();
    let _ = sender.child.wait();
    eventually(&agent, 15, |samples| {
        match held(samples, "bsg-pkt-sender", "packet", "ipv4") {
            0.0 => Ok(()),
            n => Err(format!(
                "still {n} packet sockets listed for bsg-pkt-sender"
            )),
        }
    });
}

/// The `exe` label the agent gives the packet socket sender, once listed.
fn sender_exe_label(agent: &Agent) -> String {
    eventually(agent, 15, |samples| {
        samples
            .iter()
            .find(|sample| {
                sample.name == "bitsecure_packet_sockets"
                    && sample.labels.get("process").map(String::as_str) == Some("bsg-pkt-sender")
            })
            .and_then(|sample| sample.labels.get("exe").cloned())
            .ok_or_else(|| "bsg-pkt-sender not listed".to_owned())
    })
}

/// An OUTPUT DNAT rule sends a connection to an address nobody has to the server in the test
/// namespace, as a Docker published port or a Kubernetes ClusterIP does: what leaves carries
/// the translated address, what comes back the original. The connection is one flow, keyed by
/// the address the client connected to, and equals nftables' count of it.
#[test]
fn a_connection_through_output_nat_is_one_flow_to_the_address_asked_for() {
    const PORT: u16 = 7300;
    let mut net = TestNet::new();
    net.count_tcp_port(PORT);
    let server = install_generator("bsg-nat-server");
    net.spawn_server(
        &server,
        &["serve", "--tcp", &format!("{}:{PORT}", net.peer_v4)],
    );
    // A service address from the benchmarking range, keyed by pid; routed to the peer so the
    // connect finds a route before the DNAT rewrites it.
    let service = Ipv4Addr::new(198, 18, (std::process::id() % 250) as u8, 7);
    sh(
        "ip",
        &[
            "route",
            "replace",
            &format!("{service}/32"),
            "via",
            &net.peer_v4.to_string(),
        ],
    );
    let table = HostNftTable(format!("bitsecure_nat_{}", std::process::id()));
    let rules = scratch_dir().join(format!("{}.nft", table.0));
    std::fs::write(
        &rules,
        format!(
            "table ip {} {{\n  chain output {{\n    type nat hook output priority -100; policy \
             accept;\n    ip daddr {service} tcp dport {PORT} dnat to {}:{PORT}\n  }}\n}}\n",
            table.0, net.peer_v4
        ),
    )
    .unwrap();
    sh("nft", &["-f", rules.to_str().unwrap()]);
    let cgroup = TestCgroup::new("nat-client");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let client = install_generator("bsg-natted");
    run_generator(cgroup.command(&client).args([
        "tcp",
        "--connect",
        &format!("{service}:{PORT}"),
        "--upload",
        "1000000",
        "--download",
        "1000000",
    ]));
    let _ = std::process::Command::new("ip")
        .args(["route", "del", &format!("{service}/32")])
        .status();
    let truth = net.traffic(&format!("port{PORT}"));
    let service = service.to_string();
    eventually(&agent, 15, |samples| {
        let remotes: BTreeSet<&str> = samples
            .iter()
            .filter(|sample| sample.name == "bitsecure_sent_bytes_total")
            .filter(|sample| sample.labels.get("process").map(String::as_str) == Some("bsg-natted"))
            .filter_map(|sample| sample.labels.get("remote").map(String::as_str))
            .collect();
        let mine = traffic_by_process(samples, |labels| labels.get("remote") == Some(&service))
            .get("bsg-natted")
            .copied()
            .unwrap_or_default();
        if remotes == BTreeSet::from([service.as_str()]) && mine == truth {
            Ok(())
        } else {
            Err(format!(
                "bsg-natted: remotes {remotes:?} (want only {service}); to {service}: agent \
                 {mine:?} vs nftables {truth:?}"
            ))
        }
    });
}

/// `bitsecure_unexpected_packet_sockets` of `process` with `kind`.
fn unexpected_held(samples: &[Sample], process: &str, kind: &str) -> f64 {
    sum_metric(
        samples,
        "bitsecure_unexpected_packet_sockets",
        &[("process", process), ("kind", kind)],
    )
}

/// The baseline names who may hold a packet socket: a process it does not name holding one is
/// unexpected, and so is the expected process holding another kind (a raw socket) — the way
/// around a check by name alone. Learning records the holders it sees.
#[test]
fn a_packet_socket_the_baseline_does_not_expect_is_unexpected() {
    let mut net = TestNet::new();
    let baseline = scratch_dir().join(format!("packet-baseline-{}.toml", std::process::id()));
    std::fs::write(
        &baseline,
        "format_version = 1\n\n[[packet_socket]]\nprocess = \"bsg-pkt-known\"\nkind = \
         \"packet\"\nprotocol = \"ipv4\"\n",
    )
    .unwrap();
    let agent = Agent::start_with(&format!(
        "[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        baseline.display()
    ));
    let known = install_generator("bsg-pkt-known");
    let rogue = install_generator("bsg-pkt-rogue");
    let _known = net.send_frames(&known, 1, &[]);
    let _rogue = net.send_frames(&rogue, 1, &[]);
    eventually(&agent, 15, |samples| {
        let listed = (
            held(samples, "bsg-pkt-known", "packet", "ipv4"),
            held(samples, "bsg-pkt-rogue", "packet", "ipv4"),
        );
        let unexpected = (
            unexpected_held(samples, "bsg-pkt-known", "packet"),
            unexpected_held(samples, "bsg-pkt-rogue", "packet"),
        );
        if listed == (1.0, 1.0) && unexpected == (0.0, 1.0) {
            Ok(())
        } else {
            Err(format!(
                "listed (known, rogue) {listed:?}, unexpected {unexpected:?} (want (0, 1))"
            ))
        }
    });
    // The expected process, holding a raw socket instead: not what the baseline says.
    net.spawn_server(
        &known,
        &[
            "serve",
            "--raw-protocol",
            "253",
            "--raw-bind",
            &net.peer_v4.to_string(),
        ],
    );
    eventually(&agent, 15, |samples| {
        match unexpected_held(samples, "bsg-pkt-known", "raw") {
            1.0 => Ok(()),
            n => Err(format!("bsg-pkt-known's raw socket: unexpected {n}")),
        }
    });
}

/// A packet socket held while the agent learns is written to the baseline and expected after.
#[test]
fn a_packet_socket_held_while_learning_is_expected_afterwards() {
    let net = TestNet::new();
    let baseline = scratch_dir().join(format!("packet-learn-{}.toml", std::process::id()));
    let _ = std::fs::remove_file(&baseline);
    let learner = install_generator("bsg-pkt-learnt");
    let _learner = net.send_frames(&learner, 1, &[]);
    let agent = Agent::start_with(&format!(
        "[baseline]\npath = \"{}\"\nlearn_seconds = 3\n",
        baseline.display()
    ));
    eventually(&agent, 20, |samples| {
        let monitoring =
            sum_metric(samples, "bitsecure_baseline_learning", &[]) == 0.0 && baseline.exists();
        let listed = held(samples, "bsg-pkt-learnt", "packet", "ipv4");
        if monitoring && listed == 1.0 {
            Ok(())
        } else {
            Err(format!("monitoring: {monitoring}, listed {listed}"))
        }
    });
    let text = std::fs::read_to_string(&baseline).unwrap();
    assert!(
        text.contains("[[packet_socket]]\nprocess = \"bsg-pkt-learnt\"\n"),
        "{text}"
    );
    // Expected: never flagged, poll after poll.
    for _ in 0..4 {
        let samples = agent.scrape();
        assert_eq!(unexpected_held(&samples, "bsg-pkt-learnt", "packet"), 0.0);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// An OUTPUT REDIRECT rule in a test namespace (a local proxy, a Kubernetes node port): a
/// client there connects to an address on its subnet that nobody has, port 80, and the rule
/// sends it to a server on the namespace's 127.0.0.1. The client's connection is one series,
/// keyed by the address and port it asked for, equal to nftables' count of it.
#[test]
fn a_connection_redirected_in_a_namespace_is_one_flow_to_the_address_asked_for() {
    let mut net = TestNet::new();
    let asked = net.peer_v4_host(77);
    net.nft_script(
        "redirect",
        &format!(
            "table ip bitsecure_redirect {{\n  chain output {{\n    type nat hook output \
             priority -100; policy accept;\n    ip daddr {asked} tcp dport 80 redirect to :{LOOPBACK_PORT}\n  }}\n}}\n\
             table ip bitsecure_redirected {{\n  counter to_server {{}}\n  counter to_client {{}}\n  \
             chain output {{\n    type filter hook output priority 0; policy accept;\n    \
             tcp dport {LOOPBACK_PORT} counter name to_server\n    tcp sport {LOOPBACK_PORT} \
             counter name to_client\n  }}\n}}\n"
        ),
    );
    let server = install_generator("bsg-redir-srv");
    net.spawn_server(
        &server,
        &["serve", "--tcp", &format!("127.0.0.1:{LOOPBACK_PORT}")],
    );
    let agent = Agent::start();
    let client = install_generator("bsg-redirected");
    run_generator(net.command(&client).args([
        "tcp",
        "--connect",
        &format!("{asked}:80"),
        "--upload",
        "500000",
        "--download",
        "500000",
    ]));
    // Both directions leave through the namespace's output hook (client and server are local).
    let counter = |name| nft_counter(&net.ns, "ip", "bitsecure_redirected", name);
    let (sent_packets, sent_bytes) = counter("to_server");
    let (received_packets, received_bytes) = counter("to_client");
    let asked = asked.to_string();
    eventually(&agent, 15, |samples| {
        let series: BTreeSet<(String, String)> = samples
            .iter()
            .filter(|sample| sample.name == "bitsecure_sent_bytes_total")
            .filter(|sample| {
                sample.labels.get("process").map(String::as_str) == Some("bsg-redirected")
            })
            .map(|sample| {
                let label = |key: &str| sample.labels.get(key).cloned().unwrap_or_default();
                (label("remote"), label("port"))
            })
            .collect();
        let mine = process_traffic(samples, "bsg-redirected", "tcp");
        let truth = (sent_packets, sent_bytes, received_packets, received_bytes);
        let measured = (
            mine.sent_packets,
            mine.sent_bytes,
            mine.received_packets,
            mine.received_bytes,
        );
        if series == BTreeSet::from([(asked.clone(), "80".to_owned())]) && measured == truth {
            Ok(())
        } else {
            Err(format!(
                "bsg-redirected: series {series:?} (want only {asked} port 80); (sent packets, \
                 bytes, received packets, bytes) {measured:?} vs nftables {truth:?}"
            ))
        }
    });
}
