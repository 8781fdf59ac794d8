//! Privileged tests of "every byte on the wire": traffic that takes a path below the socket
//! hooks is not counted as flows, so it must show some other way. A packet socket (AF_PACKET)
//! sending hand-built frames, and a raw IP socket in another network namespace, are listed
//! with the process that holds them (`bitsecure_packet_sockets`), and go when it closes them.
//! A connection through NAT on this host is one flow, to the address the client asked for.

use std::{collections::BTreeSet, net::Ipv4Addr};

use bitsecure_test::{
    agent::{Agent, eventually},
    cgroup::TestCgroup,
    exposition::{Sample, sum_metric, traffic_by_process},
    process::{run_generator, scratch_dir, sh, spawn_until},
    testnet::TestNet,
};

use crate::install_generator;

/// `bitsecure_packet_sockets` of `process` (summed over its exe) with `kind` and `protocol`.
fn held(samples: &[Sample], process: &str, kind: &str, protocol: &str) -> f64 {
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
    let sender = install_generator("bsg-pkt-sender");
    let mut sender = spawn_until(
        std::process::Command::new(&sender).args([
            "packet-send",
            "--interface",
            net.host_interface(),
            "--from",
            &net.host_v4.to_string(),
            "--to",
            &net.peer_v4.to_string(),
            "--frames",
            &FRAMES.to_string(),
            "--size",
            "1000",
        ]),
        "ready",
    );
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

/// An nftables table in the host's namespace, deleted on drop.
struct HostNftTable(String);

impl Drop for HostNftTable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .status();
    }
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
