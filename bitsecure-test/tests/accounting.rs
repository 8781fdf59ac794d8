//! Privileged end-to-end tests of the kernel accounting: the real agent binary loads the real
//! programs, a generator (under a unique executable name) makes real traffic to a peer in a
//! test network namespace, and the agent's /metrics must match the nftables counters in the
//! peer namespace.
//!
//! Tolerances: bytes ±1%, packets ±1%. With the offload settings of
//! [`bitsecure_test::testnet::TestNet`] both are exact in practice (every packet of a flow
//! passes its socket's cgroup hooks); the 1% leaves room for the few packets the cgroup hooks
//! cannot see, e.g. an ACK re-sent by a TIME_WAIT socket, which the kernel sends from a socket
//! no process owns.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS},
    exposition::{Exported, traffic_by_process, within},
    process::{run_generator, scratch_dir, spawn_until, tail},
    testnet::TestNet,
};

use crate::install_generator;

const TOLERANCE: f64 = 0.01;
const SERVER: &str = "bsg-server";

/// What to compare: the series of `process` towards `remote` with `protocol`, against the
/// namespace counter `counter` (see [`bitsecure_test::testnet::COUNTED_PROTOCOLS`]).
struct Expectation<'a> {
    process: &'a str,
    remote: IpAddr,
    protocol: &'a str,
    counter: &'a str,
    /// The generator's own payload count: the wire must carry at least this much.
    min_sent_payload: u64,
    min_received_payload: u64,
}

/// Waits (up to 15 s: several polls) until the agent's numbers match nftables, then checks
/// that no other process was given any of this traffic.
fn assert_matches_nftables(agent: &Agent, net: &TestNet, expected: &Expectation<'_>) {
    let remote = expected.remote.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (sent_packets, sent_bytes) = net.counter("sent", expected.counter);
        let (received_packets, received_bytes) = net.counter("received", expected.counter);
        assert!(
            sent_bytes >= expected.min_sent_payload
                && received_bytes >= expected.min_received_payload,
            "nftables saw less than the generator's payload: sent {sent_bytes}, received {received_bytes}"
        );
        let truth = Exported {
            sent_bytes,
            received_bytes,
            sent_packets,
            received_packets,
        };
        let by_process = traffic_by_process(&agent.scrape(), |labels| {
            labels.get("remote") == Some(&remote)
                && labels.get("protocol").map(String::as_str) == Some(expected.protocol)
        });
        let mine = by_process
            .get(expected.process)
            .copied()
            .unwrap_or_default();
        let others: BTreeMap<_, _> = by_process
            .iter()
            .filter(|(process, traffic)| {
                *process != expected.process && **traffic != Exported::default()
            })
            .collect();
        let matches = within(mine.sent_bytes, truth.sent_bytes, TOLERANCE)
            && within(mine.received_bytes, truth.received_bytes, TOLERANCE)
            && within(mine.sent_packets, truth.sent_packets, TOLERANCE)
            && within(mine.received_packets, truth.received_packets, TOLERANCE);
        if matches && others.is_empty() {
            eprintln!("{}: agent {mine:?} nftables {truth:?}", expected.process);
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} to {remote} ({}): agent {mine:?}, nftables {truth:?}; other processes \
                 with this traffic: {others:?}\nagent log:\n{}",
                expected.process,
                expected.protocol,
                tail(&agent.log_text(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A namespace with the generator's echo server running in it on TCP and UDP port 5000.
fn net_with_server(server: &Path) -> TestNet {
    let mut net = TestNet::new();
    let (v4, v6) = (net.peer_v4, net.peer_v6);
    net.spawn_server(
        server,
        &[
            "serve",
            "--tcp",
            &format!("{v4}:5000"),
            "--udp",
            &format!("{v4}:5000"),
        ],
    );
    net.spawn_server(
        server,
        &[
            "serve",
            "--tcp",
            &format!("[{v6}]:5000"),
            "--udp",
            &format!("[{v6}]:5000"),
        ],
    );
    net
}

fn tcp_case(process: &str, remote: IpAddr, upload: u64, download: u64, extra: &[&str]) {
    let server = install_generator(SERVER);
    let net = net_with_server(&server);
    let agent = Agent::start();
    let generator = install_generator(process);
    let target = match remote {
        IpAddr::V4(_) => format!("{}:5000", net.peer_v4),
        IpAddr::V6(_) => format!("[{}]:5000", net.peer_v6),
    };
    let report = run_generator(
        std::process::Command::new(&generator)
            .args(["--timeout-secs", "60", "tcp", "--connect", &target])
            .args([
                "--upload",
                &upload.to_string(),
                "--download",
                &download.to_string(),
            ])
            .args(extra),
    );
    let remote = match remote {
        IpAddr::V4(_) => IpAddr::V4(net.peer_v4),
        IpAddr::V6(_) => IpAddr::V6(net.peer_v6),
    };
    assert_matches_nftables(
        &agent,
        &net,
        &Expectation {
            process,
            remote,
            protocol: "tcp",
            counter: "tcp",
            min_sent_payload: report.sent_bytes,
            min_received_payload: report.received_bytes,
        },
    );
}

const ANY_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const ANY_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

#[test]
fn tcp_upload_and_download_ipv4() {
    tcp_case("bsg-tcp4", ANY_V4, 20_000_000, 20_000_000, &[]);
}

#[test]
fn tcp_upload_and_download_ipv6() {
    tcp_case("bsg-tcp6", ANY_V6, 10_000_000, 10_000_000, &[]);
}

#[test]
fn tcp_sendfile_upload() {
    tcp_case(
        "bsg-sendfile",
        ANY_V4,
        20_000_000,
        0,
        &["--method", "sendfile"],
    );
}

#[test]
fn tcp_splice_upload() {
    tcp_case("bsg-splice", ANY_V4, 20_000_000, 0, &["--method", "splice"]);
}

#[test]
fn many_small_connections() {
    tcp_case(
        "bsg-many",
        ANY_V4,
        2_000,
        0,
        &["--connections", "400", "--parallel", "4"],
    );
}

#[test]
fn thirty_concurrent_connections() {
    tcp_case(
        "bsg-thirty",
        ANY_V4,
        1_000_000,
        1_000_000,
        &["--connections", "30", "--parallel", "30"],
    );
}

fn datagram_case(
    process: &str,
    v6: bool,
    subcommand: &[&str],
    protocol: &str,
    counter: &str,
    with_raw_server: bool,
) {
    let server = install_generator(SERVER);
    let mut net = net_with_server(&server);
    if with_raw_server {
        let bind = net.peer_v4.to_string();
        net.spawn_server(
            &server,
            &["serve", "--raw-protocol", "253", "--raw-bind", &bind],
        );
    }
    let agent = Agent::start();
    let generator = install_generator(process);
    let remote = if v6 {
        IpAddr::V6(net.peer_v6)
    } else {
        IpAddr::V4(net.peer_v4)
    };
    let arguments: Vec<String> = subcommand
        .iter()
        .map(|argument| {
            argument.replace("{peer}", &remote.to_string()).replace(
                "{peer:port}",
                &match remote {
                    IpAddr::V4(ip) => format!("{ip}:5000"),
                    IpAddr::V6(ip) => format!("[{ip}]:5000"),
                },
            )
        })
        .collect();
    let report = run_generator(
        std::process::Command::new(&generator)
            .args(["--timeout-secs", "60"])
            .args(&arguments),
    );
    assert_matches_nftables(
        &agent,
        &net,
        &Expectation {
            process,
            remote,
            protocol,
            counter,
            min_sent_payload: report.sent_bytes,
            min_received_payload: report.received_bytes,
        },
    );
}

#[test]
fn udp_ipv4() {
    datagram_case(
        "bsg-udp4",
        false,
        &[
            "udp",
            "--to",
            "{peer:port}",
            "--datagrams",
            "2000",
            "--size",
            "1200",
        ],
        "udp",
        "udp",
        false,
    );
}

#[test]
fn udp_ipv6() {
    datagram_case(
        "bsg-udp6",
        true,
        &[
            "udp",
            "--to",
            "{peer:port}",
            "--datagrams",
            "2000",
            "--size",
            "1200",
        ],
        "udp",
        "udp",
        false,
    );
}

#[test]
fn icmp_echo_with_payload() {
    datagram_case(
        "bsg-ping4",
        false,
        &["ping", "--to", "{peer}", "--count", "300", "--size", "1000"],
        "icmp",
        "icmp",
        false,
    );
}

#[test]
fn icmpv6_echo_with_payload() {
    datagram_case(
        "bsg-ping6",
        true,
        &["ping", "--to", "{peer}", "--count", "300", "--size", "1000"],
        "icmpv6",
        "icmpv6",
        false,
    );
}

#[test]
fn raw_ip_protocol_253() {
    datagram_case(
        "bsg-raw253",
        false,
        &[
            "raw",
            "--to",
            "{peer}",
            "--protocol",
            "253",
            "--count",
            "300",
            "--size",
            "800",
        ],
        "253",
        "raw253",
        true,
    );
}

#[test]
fn twenty_short_lived_processes() {
    let server = install_generator(SERVER);
    let net = net_with_server(&server);
    let agent = Agent::start();
    let generator = install_generator("bsg-short");
    let target = format!("{}:5000", net.peer_v4);
    let mut sent = 0;
    let mut received = 0;
    for _ in 0..20 {
        let report = run_generator(std::process::Command::new(&generator).args([
            "tcp",
            "--connect",
            &target,
            "--upload",
            "100000",
        ]));
        sent += report.sent_bytes;
        received += report.received_bytes;
    }
    assert_matches_nftables(
        &agent,
        &net,
        &Expectation {
            process: "bsg-short",
            remote: IpAddr::V4(net.peer_v4),
            protocol: "tcp",
            counter: "tcp",
            min_sent_payload: sent,
            min_received_payload: received,
        },
    );
}

#[test]
fn socket_opened_before_the_agent_started() {
    let server = install_generator(SERVER);
    let net = net_with_server(&server);
    let generator = install_generator("bsg-early");
    let go_file = scratch_dir().join(format!("go-{}", net.ns));
    let early = spawn_until(
        std::process::Command::new(&generator).args([
            "--timeout-secs",
            "60",
            "hold",
            "--connect",
            &format!("{}:5000", net.peer_v4),
            "--upload",
            "5000000",
            "--go-file",
            go_file.to_str().unwrap(),
        ]),
        "connected",
    );
    let agent = Agent::start();
    // The handshake happened before the agent; count from here on, on both sides.
    net.reset_counters();
    std::fs::write(&go_file, b"go").unwrap();
    early.finish();
    assert_matches_nftables(
        &agent,
        &net,
        &Expectation {
            process: "bsg-early",
            remote: IpAddr::V4(net.peer_v4),
            protocol: "tcp",
            counter: "tcp",
            min_sent_payload: 5_000_000,
            min_received_payload: 0,
        },
    );
}

#[test]
fn accepted_connections_are_attributed_to_the_server_with_its_port() {
    let net = TestNet::new();
    let agent = Agent::start();
    let generator = install_generator("bsg-accept");
    let listen = format!("{}:6000", net.host_v4);
    let server = spawn_until(
        std::process::Command::new(&generator).args([
            "--timeout-secs",
            "60",
            "tcp-serve",
            "--listen",
            &listen,
            "--connections",
            "20",
        ]),
        "ready",
    );
    // Let the agent see the listener while its process is alive: that is when /proc can
    // tell its executable (a process that is gone is known only by its kernel comm).
    std::thread::sleep(Duration::from_secs_f64(TEST_POLL_SECONDS * 3.0));
    let client = install_generator("bsg-peer-client");
    // 10 rounds, each one upload and one download connection: 20 accepted connections.
    run_generator(net.command(&client).args([
        "tcp",
        "--connect",
        &listen,
        "--upload",
        "1000000",
        "--download",
        "1000000",
        "--connections",
        "10",
        "--parallel",
        "5",
    ]));
    server.finish();
    assert_matches_nftables(
        &agent,
        &net,
        &Expectation {
            process: "bsg-accept",
            remote: IpAddr::V4(net.peer_v4),
            protocol: "tcp",
            counter: "tcp",
            min_sent_payload: 10_000_000,
            min_received_payload: 10_000_000,
        },
    );
    let samples = agent.scrape();
    let ports: Vec<&String> = samples
        .iter()
        .filter(|sample| sample.labels.get("process").map(String::as_str) == Some("bsg-accept"))
        .filter_map(|sample| sample.labels.get("port"))
        .collect();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|port| *port == "6000"),
        "service port of accepted connections: {ports:?}"
    );
    // Identity: the executable path of the server process is exported.
    let exe = generator.display().to_string();
    assert!(
        samples
            .iter()
            .any(|sample| sample.name == "bitsecure_process_info"
                && sample.labels.get("process").map(String::as_str) == Some("bsg-accept")
                && sample.labels.get("exe") == Some(&exe)),
        "no bitsecure_process_info for bsg-accept with exe {exe}"
    );
}

#[test]
fn loopback_tcp_inside_a_namespace() {
    let mut net = TestNet::new();
    let server = install_generator(SERVER);
    net.spawn_server(&server, &["serve", "--tcp", "127.0.0.1:7000"]);
    let agent = Agent::start();
    let generator = install_generator("bsg-loop");
    let report = run_generator(net.command(&generator).args([
        "tcp",
        "--connect",
        "127.0.0.1:7000",
        "--upload",
        "20000000",
        "--download",
        "20000000",
    ]));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (sent_packets, sent_bytes) = net.loopback_counter("sent");
        let (received_packets, received_bytes) = net.loopback_counter("received");
        assert!(sent_bytes >= report.sent_bytes && received_bytes >= report.received_bytes);
        // The server's accepted sockets are labelled port 7000 too: leave them out.
        let by_process = traffic_by_process(&agent.scrape(), |labels| {
            labels.get("remote").map(String::as_str) == Some("127.0.0.1")
                && labels.get("port").map(String::as_str) == Some("7000")
                && labels.get("process").map(String::as_str) != Some(SERVER)
        });
        let mine = by_process.get("bsg-loop").copied().unwrap_or_default();
        let truth = Exported {
            sent_bytes,
            received_bytes,
            sent_packets,
            received_packets,
        };
        let matches = within(mine.sent_bytes, sent_bytes, TOLERANCE)
            && within(mine.received_bytes, received_bytes, TOLERANCE)
            && within(mine.sent_packets, sent_packets, TOLERANCE)
            && within(mine.received_packets, received_packets, TOLERANCE);
        if matches && by_process.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "loopback: agent {by_process:?}, nftables {truth:?}\n{}",
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
