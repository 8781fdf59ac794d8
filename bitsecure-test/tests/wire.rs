//! Privileged tests of "every byte on the wire": traffic that takes a path below the socket
//! hooks is not counted as flows, so it must show some other way. A packet socket (AF_PACKET)
//! sending hand-built frames, and a raw IP socket in another network namespace, are listed
//! with the process that holds them (`bitsecure_packet_sockets`), and go when it closes them.

use bitsecure_test::{
    agent::{Agent, eventually},
    exposition::{Sample, sum_metric},
    process::spawn_until,
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
