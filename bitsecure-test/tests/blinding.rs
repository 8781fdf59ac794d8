//! Privileged tests of "nobody can blind it": what anyone who can send packets can throw at a
//! listener in the watched cgroup — a SYN flood from 100,000 spoofed sources, thousands of
//! accepted connections, a UDP server answering thousands of client ports — must neither fill
//! the flow map nor hide a new connection opened meanwhile; and a server's handshakes are
//! accounted in its connections' series, so a recording of it has one rule per service. A
//! connection retransmitting to a peer gone dark long after its process closed it stays its
//! process's, and a server in a network namespace of its own (a container) is attributed
//! whether its sockets are older or newer than the agent.
//!
//! Truth is nftables in the peer namespace, per port ([`TestNet::count_tcp_port`]). Numbers
//! (map occupancy, overflow, agent memory) are printed on stderr:
//! `cargo xtask test -- blinding:: --nocapture`.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary, eventually},
    cgroup::TestCgroup,
    exposition::{Exported, Sample, process_traffic, sum_metric, traffic_by_process, within},
    process::{GeneratorReport, run_generator, scratch_dir, spawn_until, tail},
    testnet::TestNet,
};

use crate::{install_generator, install_rig};

const FLOOD_SOURCES: u32 = 100_000;
/// 100,000 SYNs in 5 s, the rate that filled the flow map before it had a peer map.
const FLOOD_PER_SECOND: u32 = 20_000;
const CONNECTIONS: u32 = 10_000;
const UDP_CLIENTS: u32 = 10_000;
const LISTEN_PORT: u16 = 6100;
const UDP_PORT: u16 = 6101;
/// The port of the server (in the namespace) the new connection goes to.
const NEW_CONNECTION_PORT: u16 = 7100;
const TOLERANCE: f64 = 0.01;
const MIB: f64 = 1024.0 * 1024.0;

/// A /14 of spoofed sources (262,144 addresses) from 100.64.0.0/10, keyed by pid so parallel
/// runs differ, routed to the peer ([`TestNet::route_block_to_peer`]): the listener's SYN-ACKs
/// reach the namespace, which answers each with a RST, as a host that never sent the SYN does.
fn spoofed_sources(net: &TestNet) -> Ipv4Addr {
    let block = Ipv4Addr::new(100, 64 + 4 * (std::process::id() % 16) as u8, 0, 0);
    net.route_block_to_peer(block, 14);
    block
}

/// Runs a generator in a thread; returns its report when joined.
fn in_background(mut command: Command) -> thread::JoinHandle<GeneratorReport> {
    thread::spawn(move || run_generator(&mut command))
}

fn close_to(agent: &Exported, truth: &Exported) -> bool {
    within(agent.sent_bytes, truth.sent_bytes, TOLERANCE)
        && within(agent.received_bytes, truth.received_bytes, TOLERANCE)
        && within(agent.sent_packets, truth.sent_packets, TOLERANCE)
        && within(agent.received_packets, truth.received_packets, TOLERANCE)
}

/// The TCP SYN cookies this host has sent so far (all namespaces' listeners share the
/// counter; only for the report). A SYN-ACK carrying a cookie belongs to no socket, so no
/// cgroup program sees it.
fn syncookies_sent() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "SyncookiesSent")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_syn_flood_neither_fills_the_flow_map_nor_hides_a_new_connection() {
    let mut net = TestNet::new();
    let first_source = spoofed_sources(&net);
    net.count_tcp_port(LISTEN_PORT);
    net.count_tcp_port(NEW_CONNECTION_PORT);
    let far_server = install_generator("bsg-far-server");
    net.spawn_server(
        &far_server,
        &[
            "serve",
            "--tcp",
            &format!("{}:{NEW_CONNECTION_PORT}", net.peer_v4),
        ],
    );
    let cgroup = TestCgroup::new("flood");
    let listen = format!("{}:{LISTEN_PORT}", net.host_v4);
    let udp = format!("{}:{UDP_PORT}", net.host_v4);
    let flooded = install_generator("bsg-flooded");
    let _listener = spawn_until(
        cgroup
            .command(&flooded)
            .args(["serve", "--tcp", &listen, "--udp", &udp]),
        "ready",
    );
    // The default poll interval (5 s), as on a rig: peer entries are folded after two idle
    // polls, so a 5-second flood is all in the kernel at once.
    let poll_seconds = bitsecure::config::Config::default()
        .agent
        .poll_interval_seconds;
    let mut agent = Agent::start_polling(
        &format!("cgroup = \"{}\"\n", cgroup.path.display()),
        poll_seconds,
    );
    let cookies_before = syncookies_sent();

    let flooder = install_generator("bsg-flooder");
    let mut flood = net.command(&flooder);
    flood.args([
        "--timeout-secs",
        "120",
        "syn-flood",
        "--target",
        &listen,
        "--first",
        &first_source.to_string(),
        "--sources",
        &FLOOD_SOURCES.to_string(),
        "--per-second",
        &FLOOD_PER_SECOND.to_string(),
    ]);
    let flood = in_background(flood);
    let churner = install_generator("bsg-churner");
    let mut churn = net.command(&churner);
    churn.args([
        "--timeout-secs",
        "120",
        "churn",
        "--connect",
        &listen,
        "--connections",
        &CONNECTIONS.to_string(),
        "--parallel",
        "8",
    ]);
    let churn = in_background(churn);
    let udp_client = install_generator("bsg-udp-clients");
    let mut clients = net.command(&udp_client);
    clients.args([
        "--timeout-secs",
        "120",
        "udp-clients",
        "--server",
        &udp,
        "--clients",
        &UDP_CLIENTS.to_string(),
    ]);
    let clients = in_background(clients);

    // Once a fifth of the flood is in, a uniquely named process in the watched cgroup opens a
    // new connection.
    let started = Instant::now();
    while net.counter("received", &format!("port{LISTEN_PORT}")).0 < u64::from(FLOOD_SOURCES / 5) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let newcomer = install_generator("bsg-newcomer");
    let report = run_generator(cgroup.command(&newcomer).args([
        "tcp",
        "--connect",
        &format!("{}:{NEW_CONNECTION_PORT}", net.peer_v4),
        "--upload",
        "1000000",
        "--download",
        "1000000",
    ]));
    assert!(
        !flood.is_finished(),
        "the flood ended before the new connection did: it was not opened during the flood"
    );

    // Map occupancy, as each poll reports it, until the load is over.
    let (mut max_flows, mut max_peers) = (0.0f64, 0.0f64);
    let mut watch = |samples: &[Sample]| {
        let entries = |map| sum_metric(samples, "bitsecure_map_entries", &[("map", map)]);
        max_flows = max_flows.max(entries("flows"));
        max_peers = max_peers.max(entries("peers"));
    };
    while !(flood.is_finished() && churn.is_finished() && clients.is_finished()) {
        watch(&agent.scrape());
        thread::sleep(Duration::from_millis(200));
    }
    let flood = flood.join().expect("flood thread");
    let churn = churn.join().expect("churn thread");
    let clients = clients.join().expect("udp-clients thread");
    assert_eq!(flood.packets_sent, u64::from(FLOOD_SOURCES));
    assert_eq!(clients.packets_received, u64::from(UDP_CLIENTS));

    // The new connection: exactly what nftables saw on its port, all of it its process's.
    let new_connection = net.traffic(&format!("port{NEW_CONNECTION_PORT}"));
    assert!(new_connection.sent_bytes >= report.sent_bytes);
    let mine = eventually(&agent, 30, |samples| {
        watch(samples);
        let mine = process_traffic(samples, "bsg-newcomer", "tcp");
        if mine == new_connection {
            Ok(mine)
        } else {
            Err(format!(
                "bsg-newcomer: agent {mine:?} vs nftables {new_connection:?}"
            ))
        }
    });

    // The listener: every handshake, accepted connection and client datagram is its, counted
    // whether or not its peer found room in the peer map; and once the load is over, the
    // peer entries are folded.
    let (listener_tcp, listener_udp, peers_left) = eventually(&agent, 60, |samples| {
        watch(samples);
        let tcp = (
            process_traffic(samples, "bsg-flooded", "tcp"),
            net.traffic(&format!("port{LISTEN_PORT}")),
        );
        let udp = (
            process_traffic(samples, "bsg-flooded", "udp"),
            net.traffic("udp"),
        );
        let peers = sum_metric(samples, "bitsecure_map_entries", &[("map", "peers")]);
        // A SYN-ACK carrying a SYN cookie belongs to no socket, so no cgroup program sees it:
        // the listener's sent side would be short by those (the RSTs from the namespace keep
        // the SYN queue short, so the listener sends none; the report shows how many were).
        let tcp_matches = close_to(&tcp.0, &tcp.1) && tcp.0.sent_bytes >= churn.received_bytes;
        if tcp_matches && close_to(&udp.0, &udp.1) && peers < 100.0 {
            Ok((tcp, udp, peers))
        } else {
            Err(format!(
                "listener TCP agent {:?} vs nftables {:?}; UDP agent {:?} vs nftables {:?}; \
                 {peers} peer entries left",
                tcp.0, tcp.1, udp.0, udp.1
            ))
        }
    });
    let samples = agent.scrape();
    let failures = |map| {
        sum_metric(
            &samples,
            "bitsecure_map_insert_failures_total",
            &[("map", map)],
        )
    };
    let folded_peers = sum_metric(&samples, "bitsecure_folded_peers_total", &[]);
    let capacity = sum_metric(&samples, "bitsecure_map_capacity", &[("map", "flows")]);
    let cookies = syncookies_sent() - cookies_before;
    let rss = agent.peak_rss_bytes();
    eprintln!(
        "flood: {FLOOD_SOURCES} spoofed SYNs at {FLOOD_PER_SECOND}/s + {CONNECTIONS} \
         connections + {UDP_CLIENTS} UDP clients; flow map at most {max_flows} of {capacity}, \
         peer map at most {max_peers}, {peers_left} left; failed inserts: flows {}, peers {} \
         (counted without their remote); {folded_peers} peer entries folded; listener TCP agent \
         {:?} vs nftables {:?} (SYN cookies sent meanwhile, host-wide: {cookies}); UDP agent {:?} \
         vs nftables {:?}; new connection {mine:?}; agent peak RSS {:.1} MiB",
        failures("flows"),
        failures("peers"),
        listener_tcp.0,
        listener_tcp.1,
        listener_udp.0,
        listener_udp.1,
        rss as f64 / MIB,
    );
    assert!(
        max_flows < capacity / 2.0,
        "the flow map reached {max_flows} of {capacity} entries under the flood"
    );
    assert_eq!(failures("flows"), 0.0, "flow-map inserts failed");
    assert!(folded_peers > 0.0, "no peer entry was folded");
    // More peers than the peer map holds came within two polls: the overflow is counted
    // and said.
    assert!(
        failures("peers") > 0.0,
        "the peer map never filled: the flood was too slow to test its overflow"
    );
    let log = agent.log_text();
    assert!(
        log.contains("the kernel peer map is full"),
        "the full peer map is not in the log:\n{}",
        tail(&log, 20)
    );
    assert!(agent.is_running(), "the agent died");
}

/// A recording of an HTTP server that accepts a connection every 100 ms: one rule for the
/// service, with its application — not a second, `unknown` one for its handshakes (which run
/// on the listening socket, before the accepted socket exists).
#[test]
fn a_recorded_server_has_one_rule_per_service() {
    const PORT: u16 = 8480;
    let net = TestNet::new();
    let cgroup = TestCgroup::new("server-recording");
    let listen = format!("{}:{PORT}", net.host_v4);
    let monitor = install_rig("bsg-http-server");
    let _server = spawn_until(
        cgroup
            .command(&monitor)
            .args(["monitor", "--listen", &listen]),
        "ready",
    );
    let reporter = install_rig("bsg-reporter");
    let mut reporter = net
        .command(&reporter)
        .args([
            "reporter",
            "--to",
            &listen,
            "--bytes",
            "2000",
            "--every-ms",
            "100",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the reporter");
    let dir = scratch_dir();
    let baseline = dir.join(format!("server-recording-{}.toml", net.ns));
    let config = dir.join(format!("server-recording-{}-config.toml", net.ns));
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:1\"\npoll_interval_seconds = {TEST_POLL_SECONDS}\n\
             cgroup = \"{}\"\n[kernel]\npin_path = \"\"\n[baseline]\npath = \"{}\"\n",
            cgroup.path.display(),
            baseline.display()
        ),
    )
    .unwrap();
    let output = Command::new(agent_binary())
        .args(["baseline", "record", "--duration", "10s", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = reporter.kill();
    let _ = reporter.wait();
    assert!(
        output.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&baseline).unwrap();
    let recorded: toml::Table = toml::from_str(&text).unwrap();
    let rules: Vec<&toml::Value> = recorded["rule"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter(|rule| rule["process"].as_str() == Some("bsg-http-server"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(rules.len(), 1, "rules of the server:\n{text}");
    assert_eq!(rules[0]["port"].as_integer(), Some(PORT.into()), "{text}");
    assert_eq!(rules[0]["app"].as_str(), Some("http"), "{text}");
}

/// A connection whose process exits while its peer has gone dark: the kernel keeps
/// retransmitting its data and FIN for about 100 s (`tcp_orphan_retries`), long after the
/// descriptor was released. Every retransmission is its process's — nothing `unknown` — and
/// its entries go once the connection is done.
#[test]
fn a_connection_retransmitting_to_a_peer_gone_dark_stays_with_its_process() {
    const PORT: u16 = 7200;
    let mut net = TestNet::new();
    net.count_tcp_port(PORT);
    let server = install_generator("bsg-dark-server");
    let target = format!("{}:{PORT}", net.peer_v4);
    net.spawn_server(&server, &["serve", "--tcp", &target]);
    let cgroup = TestCgroup::new("dark-peer");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let client = install_generator("bsg-dark-client");
    let go_file = scratch_dir().join(format!("dark-peer-{}.go", net.ns));
    let mut holder = spawn_until(
        cgroup.command(&client).args([
            "--timeout-secs",
            "2",
            "hold",
            "--connect",
            &target,
            "--upload",
            "100000",
            "--go-file",
            go_file.to_str().unwrap(),
        ]),
        "connected",
    );
    // The peer goes dark: what the host sends is counted (priority 0), then dropped.
    net.nft_script(
        "dark",
        &format!(
            "table inet bitsecure_dark {{\n  chain input {{\n    type filter hook input \
             priority 10; policy accept;\n    ip saddr {} tcp dport {PORT} drop\n  }}\n}}\n",
            net.host_v4
        ),
    );
    std::fs::write(&go_file, "").unwrap();
    // The watchdog ends the process 2 s into its upload: the socket is released with data
    // and a FIN unacknowledged.
    let _ = holder.child.wait();
    let released = Instant::now();
    let port_counter = format!("port{PORT}");
    let socket_gone = || {
        let sockets = bitsecure_test::process::sh("ss", &["-Htn", "dst", &target]);
        sockets.trim().is_empty()
    };
    let (mine, lived) = eventually(&agent, 200, |samples| {
        let by_process = traffic_by_process(samples, |labels| {
            labels.get("remote") == Some(&net.peer_v4.to_string())
                && labels.get("protocol").map(String::as_str) == Some("tcp")
        });
        let unknown = by_process.get("unknown").copied().unwrap_or_default();
        assert_eq!(
            unknown,
            Exported::default(),
            "late packets counted as unknown, {:?} after the release",
            released.elapsed()
        );
        let mine = by_process
            .get("bsg-dark-client")
            .copied()
            .unwrap_or_default();
        let truth = net.traffic(&port_counter);
        let entries = sum_metric(samples, "bitsecure_map_entries", &[("map", "flows")]);
        let lived = released.elapsed();
        if socket_gone() && mine == truth && entries == 0.0 {
            Ok((mine, lived))
        } else {
            Err(format!(
                "{lived:?} after the release: agent {mine:?} vs nftables {truth:?}; socket \
                 gone: {}; {entries} flow entries",
                socket_gone()
            ))
        }
    });
    eprintln!("dark peer: retransmitted for about {lived:?} after the release; agent {mine:?}");
    // Long enough to outlast a socket folded at its release plus the 30 s its owner is
    // remembered.
    assert!(
        lived > Duration::from_secs(45),
        "the connection was done {lived:?} after its release: too soon to test late packets"
    );
}

/// A server in a network namespace of its own (a container), in the watched cgroup: the
/// agent's sock_diag cannot see its sockets, `/proc/<pid>/net` of its namespace can.
fn server_in_another_namespace(sockets_before_agent: bool) {
    const PORT: u16 = 5300;
    const UPLOAD: u64 = 40_000_000;
    let mut net = TestNet::new();
    let name = if sockets_before_agent {
        "bsg-ns-early"
    } else {
        "bsg-ns-late"
    };
    let cgroup = TestCgroup::new(name);
    let server = install_generator(name);
    let tcp = format!("{}:{PORT}", net.peer_v4);
    let start_server = |net: &mut TestNet| {
        // The cgroup first (the shell), then the namespace (`ip netns exec` execs the server).
        let mut command = cgroup.command(Path::new("ip"));
        command
            .args(["netns", "exec", &net.ns])
            .arg(&server)
            .args(["serve", "--tcp", &tcp, "--udp", &tcp]);
        spawn_until(&mut command, "ready")
    };
    let (agent, _server) = if sockets_before_agent {
        let server = start_server(&mut net);
        let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
        (agent, server)
    } else {
        let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
        (agent, start_server(&mut net))
    };
    let client = install_generator("bsg-ns-client");
    run_generator(Command::new(&client).args([
        "tcp",
        "--connect",
        &tcp,
        "--upload",
        &UPLOAD.to_string(),
    ]));
    run_generator(Command::new(&client).args([
        "udp",
        "--to",
        &tcp,
        "--datagrams",
        "2000",
        "--size",
        "1200",
    ]));
    // The server's view: what the host sent, it received.
    let mirrored = |protocol| net.traffic(protocol).seen_from_the_other_end();
    const TOLERANCE: f64 = 0.005;
    let near = |agent: &Exported, truth: &Exported| {
        within(agent.sent_bytes, truth.sent_bytes, TOLERANCE)
            && within(agent.received_bytes, truth.received_bytes, TOLERANCE)
            && within(agent.sent_packets, truth.sent_packets, TOLERANCE)
            && within(agent.received_packets, truth.received_packets, TOLERANCE)
    };
    let (tcp, udp) = eventually(&agent, 30, |samples| {
        let tcp = (process_traffic(samples, name, "tcp"), mirrored("tcp"));
        let udp = (process_traffic(samples, name, "udp"), mirrored("udp"));
        let unknown = (
            process_traffic(samples, "unknown", "tcp"),
            process_traffic(samples, "unknown", "udp"),
        );
        if near(&tcp.0, &tcp.1) && near(&udp.0, &udp.1) {
            Ok((tcp, udp))
        } else {
            Err(format!(
                "{name}: TCP agent {:?} vs nftables {:?}; UDP agent {:?} vs nftables {:?}; \
                 unknown {unknown:?}",
                tcp.0, tcp.1, udp.0, udp.1
            ))
        }
    });
    assert!(tcp.1.received_bytes >= UPLOAD);
    eprintln!(
        "{name}: TCP agent {:?} vs nftables {:?}; UDP agent {:?} vs nftables {:?}",
        tcp.0, tcp.1, udp.0, udp.1
    );
}

#[test]
fn a_server_in_another_namespace_with_sockets_older_than_the_agent_is_attributed() {
    server_in_another_namespace(true);
}

#[test]
fn a_server_in_another_namespace_with_sockets_newer_than_the_agent_is_attributed() {
    server_in_another_namespace(false);
}

/// A connection that waits in the listen backlog (its client's data with it) for 3 s before
/// its server accepts it: no process holds it yet, so no /proc entry names its owner. Its
/// listener's process, the one to accept it, is named, rather than `unknown` after the
/// lookups run out — in the agent's network namespace and in another.
fn connection_accepted_late(server_in_other_namespace: bool) {
    const PORT: u16 = 5310;
    let net = TestNet::new();
    let name = if server_in_other_namespace {
        "bsg-late-ns"
    } else {
        "bsg-late-host"
    };
    let cgroup = TestCgroup::new(name);
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let server = install_generator(name);
    let (listen, mut command) = if server_in_other_namespace {
        let mut command = cgroup.command(Path::new("ip"));
        command.args(["netns", "exec", &net.ns]).arg(&server);
        (format!("{}:{PORT}", net.peer_v4), command)
    } else {
        (format!("{}:{PORT}", net.host_v4), cgroup.command(&server))
    };
    command.args([
        "--timeout-secs",
        "60",
        "tcp-serve",
        "--listen",
        &listen,
        "--connections",
        "1",
        // Six polls of TEST_POLL_SECONDS: twice the lookups after which an owner is given up.
        "--accept-after-ms",
        "3000",
    ]);
    let server = spawn_until(&mut command, "ready");
    let client = install_generator("bsg-late-client");
    let mut client = if server_in_other_namespace {
        Command::new(&client)
    } else {
        net.command(&client)
    };
    run_generator(client.args(["tcp", "--connect", &listen, "--upload", "100000"]));
    server.finish();
    let host = net.traffic("tcp");
    let expected = if server_in_other_namespace {
        // The server's view: what the host sent, it received.
        host.seen_from_the_other_end()
    } else {
        host
    };
    let mine = eventually(&agent, 20, |samples| {
        let mine = process_traffic(samples, name, "tcp");
        let unknown = process_traffic(samples, "unknown", "tcp");
        if mine == expected && unknown == Exported::default() {
            Ok(mine)
        } else {
            Err(format!(
                "server: agent {mine:?} vs nftables {expected:?}; unknown {unknown:?}"
            ))
        }
    });
    assert!(mine.received_bytes >= 100_000);
}

#[test]
fn a_connection_accepted_late_is_its_listeners() {
    connection_accepted_late(false);
}

#[test]
fn a_connection_accepted_late_by_a_server_in_another_namespace_is_its_listeners() {
    connection_accepted_late(true);
}

/// A connection its server never accepts: the server exits with it (and its client's data) in
/// the backlog. No process ever released it, yet it is done — TCP CLOSE when its listener
/// closes — so it is folded like any closed socket; its bytes are its listener's process's.
#[test]
fn a_connection_never_accepted_is_folded_when_its_listener_closes() {
    const PORT: u16 = 5320;
    let net = TestNet::new();
    let name = "bsg-no-accept";
    let cgroup = TestCgroup::new(name);
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let server = install_generator(name);
    let listen = format!("{}:{PORT}", net.host_v4);
    // The watchdog ends the server after 2 s, long before it would accept.
    let server = spawn_until(
        cgroup.command(&server).args([
            "--timeout-secs",
            "2",
            "tcp-serve",
            "--listen",
            &listen,
            "--connections",
            "1",
            "--accept-after-ms",
            "60000",
        ]),
        "ready",
    );
    let client = install_generator("bsg-no-client");
    // Reset when the listener goes: its failure is expected.
    let output = net
        .command(&client)
        .args([
            "--timeout-secs",
            "20",
            "tcp",
            "--connect",
            &listen,
            "--upload",
            "100000",
        ])
        .output()
        .expect("run the client");
    assert!(!output.status.success(), "the connection was served");
    // It ends by its watchdog, a failure by design.
    let mut server = server;
    let _ = server.child.wait();
    let expected = net.traffic("tcp");
    // What the backlogged socket's receive window took before the reset.
    assert!(
        expected.received_bytes >= 10_000,
        "the client sent too little: {expected:?}"
    );
    eventually(&agent, 20, |samples| {
        let mine = process_traffic(samples, name, "tcp");
        let unknown = process_traffic(samples, "unknown", "tcp");
        let entries = sum_metric(samples, "bitsecure_map_entries", &[("map", "flows")]);
        if mine == expected && unknown == Exported::default() && entries == 0.0 {
            Ok(())
        } else {
            Err(format!(
                "server: agent {mine:?} vs nftables {expected:?}; unknown {unknown:?}; \
                 {entries} flow entries left"
            ))
        }
    });
}
