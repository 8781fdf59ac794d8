//! Privileged end-to-end tests of destination names and application identification: real
//! clients (`dig`, `openssl s_client`, `curl`, the rig's Stratum miners) in a watched cgroup
//! talk to real servers in a test network namespace, and the agent's /metrics must label each
//! flow with what it speaks and name each remote the way the client reached it.
//!
//! The independent truths: `dig` checks the test DNS server's answers; the expected names and
//! applications are what each client was told to do; for the flood, the receiving socket's own
//! count and the namespace's nftables counter.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, eventually},
    cgroup::TestCgroup,
    exposition::{Sample, sum_metric},
    process::{GeneratorReport, free_port, run_generator, scratch_dir, sh, spawn_until},
    testnet::TestNet,
};

use crate::{install_generator, install_rig};

/// Panics (the test fails, it does not skip) unless `program` is on PATH.
fn require_tool(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", "command -v \"$0\"", program])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{program}` is missing: install {package} (`cargo xtask setup` does)"
    );
}

/// Runs a client to completion; panics unless it succeeded. Returns its stdout.
fn run_client(command: &mut Command) -> String {
    let output = command.output().expect("run client");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(port, protocol, app)` of every traffic series of `process` (any if `None`) towards `remote`.
fn apps_of(
    samples: &[Sample],
    process: Option<&str>,
    remote: IpAddr,
) -> BTreeSet<(String, String, String)> {
    let remote = remote.to_string();
    samples
        .iter()
        .filter(|s| {
            s.name == "bitsecure_sent_bytes_total" || s.name == "bitsecure_received_bytes_total"
        })
        .filter(|s| s.value > 0.0)
        .filter(|s| {
            let of_process = |process| s.labels.get("process").map(String::as_str) == Some(process);
            process.is_none_or(of_process) && s.labels.get("remote") == Some(&remote)
        })
        .map(|s| {
            let label = |key: &str| s.labels.get(key).cloned().unwrap_or_default();
            (label("port"), label("protocol"), label("app"))
        })
        .collect()
}

/// remote → `(name, source)` rows of `bitsecure_remote_info`.
fn remote_info(samples: &[Sample]) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut info: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.name == "bitsecure_remote_info") {
        let label = |key: &str| sample.labels.get(key).cloned().unwrap_or_default();
        info.entry(label("remote"))
            .or_default()
            .insert((label("name"), label("source")));
    }
    info
}

/// A throwaway self-signed certificate and key for `openssl s_server`.
fn self_signed_certificate(common_name: &str) -> (String, String) {
    let dir = scratch_dir();
    let cert = dir.join("names-cert.pem").display().to_string();
    let key = dir.join("names-key.pem").display().to_string();
    let subject = format!("/CN={common_name}");
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            &subject,
            "-days",
            "1",
        ],
    );
    (cert, key)
}

/// One connection a client in the cgroup makes, and what the agent must make of it.
struct Expected {
    /// `None`: any process. dig resolves on threads named `isc-net-NNNN`, and the agent
    /// labels a socket with the comm of the thread that created it.
    process: Option<&'static str>,
    remote: IpAddr,
    /// `(port, protocol, app)` of every series of this process towards this remote.
    series: &'static [(&'static str, &'static str, &'static str)],
}

/// DNS (over UDP and TCP, with a CNAME chain and an AAAA answer), TLS by address with a server
/// name, HTTP by address with a Host header, and both Stratum flavours: each flow's `app`, and
/// each remote's name and where it came from.
#[test]
fn names_and_applications_of_real_clients() {
    for (program, package) in [
        ("dig", "bind9-dnsutils"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        require_tool(program, package);
    }
    let mut net = TestNet::new();
    // One address per remote, so each has exactly one name.
    let dns = IpAddr::V4(net.peer_v4);
    let pool = IpAddr::V4(net.peer_v4_host(11));
    let cdn = IpAddr::V4(net.peer_v4_host(12));
    let cdn6 = IpAddr::V6(net.peer_v6_host(0x12));
    let xmr = IpAddr::V4(net.peer_v4_host(13));
    let tls = IpAddr::V4(net.peer_v4_host(14));
    let web = IpAddr::V4(net.peer_v4_host(15));
    for address in [pool, cdn, cdn6, xmr, tls, web] {
        net.add_peer_address(address);
    }

    // The servers, in the namespace. tls.example.org and web.example.org are not in the DNS
    // data: the agent can only learn them from the TLS and HTTP clients.
    let server = install_generator("bsn-server");
    let records = [
        format!("pool.example.org=A:{pool}"),
        format!("xmr.example.org=A:{xmr}"),
        "www.example.org=CNAME:cdn.example.net".to_owned(),
        format!("cdn.example.net=A:{cdn}"),
        format!("cdn.example.net=AAAA:{cdn6}"),
    ];
    let mut dns_args = vec![
        "dns-serve".to_owned(),
        "--listen".to_owned(),
        format!("{dns}:53"),
    ];
    for record in &records {
        dns_args.extend(["--record".to_owned(), record.clone()]);
    }
    let dns_args: Vec<&str> = dns_args.iter().map(String::as_str).collect();
    net.spawn_server(&server, &dns_args);
    net.spawn_server(&server, &["serve", "--tcp", &format!("{cdn}:5000")]);
    net.spawn_server(&server, &["serve", "--tcp", &format!("[{cdn6}]:5000")]);
    let rig = install_rig("bsn-rig");
    for address in [pool, xmr] {
        let listen = format!("{address}:3333");
        net.spawn_server(
            &rig,
            &["pool", "--listen", &listen, "--job-interval-ms", "100"],
        );
    }
    net.spawn_server(&rig, &["monitor", "--listen", &format!("{web}:80")]);
    let (cert, key) = self_signed_certificate("tls.example.org");
    net.spawn_server_until(
        Path::new("openssl"),
        &[
            "s_server",
            "-accept",
            &format!("{tls}:443"),
            "-cert",
            &cert,
            "-key",
            &key,
            "-www",
        ],
        "ACCEPT",
    );

    let cgroup = TestCgroup::new("names");
    // dig resolves here for the clients that connect (a system resolver's part): its answers
    // name addresses for every process only as a trusted resolver's.
    let dig = std::fs::canonicalize(sh("sh", &["-c", "command -v dig"]).trim()).unwrap();
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[names]\ntrusted_resolvers = [\"{}\"]\n",
        cgroup.path.display(),
        dig.display()
    ));

    // Resolve with an independent client, which also checks the test server's answers.
    let dig = |name: &str, kind: &str, transport: &str| {
        run_client(cgroup.command(Path::new("dig")).args([
            &format!("@{dns}"),
            "-p",
            "53",
            name,
            kind,
            "+short",
            "+tries=1",
            "+time=5",
            transport,
        ]))
    };
    assert_eq!(dig("pool.example.org", "A", "+notcp"), format!("{pool}\n"));
    assert_eq!(
        dig("www.example.org", "A", "+notcp"),
        format!("cdn.example.net.\n{cdn}\n")
    );
    assert_eq!(
        dig("www.example.org", "AAAA", "+notcp"),
        format!("cdn.example.net.\n{cdn6}\n")
    );
    assert_eq!(dig("xmr.example.org", "A", "+tcp"), format!("{xmr}\n"));
    assert_eq!(
        dig("nothing.example.org", "A", "+notcp"),
        "",
        "NXDOMAIN has no answer"
    );

    // Connect to what DNS said, and by address with the name in TLS / HTTP.
    let miner = install_rig("bsn-miner");
    let pool_address = format!("{pool}:3333");
    run_client(
        cgroup
            .command(&miner)
            .args(["miner", "--pool", &pool_address, "--jobs", "3"]),
    );
    let xmrig = install_rig("bsn-xmrig");
    let xmr_address = format!("{xmr}:3333");
    run_client(cgroup.command(&xmrig).args([
        "miner",
        "--pool",
        &xmr_address,
        "--flavour",
        "login",
        "--jobs",
        "3",
    ]));
    let client = install_generator("bsn-tcp");
    for target in [format!("{cdn}:5000"), format!("[{cdn6}]:5000")] {
        run_generator(cgroup.command(&client).args([
            "tcp",
            "--connect",
            &target,
            "--upload",
            "1000",
        ]));
    }
    let tls_address = format!("{tls}:443");
    run_client(
        cgroup
            .command(Path::new("openssl"))
            .args([
                "s_client",
                "-connect",
                &tls_address,
                "-servername",
                "tls.example.org",
                "-brief",
            ])
            .stdin(Stdio::null()),
    );
    // A second name for the web server's address first (a CDN address serves many): the info
    // metric still has one row per remote, the name most of its flows use (two of three here,
    // and the latest), so a PromQL join on the remote stays one-to-one.
    let curl = |host: &str| {
        run_client(cgroup.command(Path::new("curl")).args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{web}:80/"),
        ]))
    };
    assert_eq!(curl("static.example.org"), "204");
    for _ in 0..2 {
        assert_eq!(curl("web.example.org"), "204", "the monitor answers 204");
    }

    let expected = [
        Expected {
            process: None,
            remote: dns,
            series: &[("53", "tcp", "dns"), ("53", "udp", "dns")],
        },
        Expected {
            process: Some("bsn-miner"),
            remote: pool,
            series: &[("3333", "tcp", "stratum")],
        },
        Expected {
            process: Some("bsn-xmrig"),
            remote: xmr,
            series: &[("3333", "tcp", "stratum")],
        },
        Expected {
            process: Some("bsn-tcp"),
            remote: cdn,
            series: &[("5000", "tcp", "unknown")],
        },
        Expected {
            process: Some("bsn-tcp"),
            remote: cdn6,
            series: &[("5000", "tcp", "unknown")],
        },
        Expected {
            process: Some("openssl"),
            remote: tls,
            series: &[("443", "tcp", "tls")],
        },
        Expected {
            process: Some("curl"),
            remote: web,
            series: &[("80", "tcp", "http")],
        },
    ];
    // Names as the client asked for them: www.example.org, never the CNAME target. The DNS
    // server's own address has no name.
    let names: BTreeMap<String, BTreeSet<(String, String)>> = [
        (pool, "pool.example.org", "dns"),
        (xmr, "xmr.example.org", "dns"),
        (cdn, "www.example.org", "dns"),
        (cdn6, "www.example.org", "dns"),
        (tls, "tls.example.org", "sni"),
        (web, "web.example.org", "http"),
    ]
    .into_iter()
    .map(|(remote, name, source)| {
        (
            remote.to_string(),
            BTreeSet::from([(name.to_owned(), source.to_owned())]),
        )
    })
    .collect();

    eventually(&agent, 20, |samples| {
        let mut wrong = Vec::new();
        for case in &expected {
            let got = apps_of(samples, case.process, case.remote);
            let want: BTreeSet<_> = case
                .series
                .iter()
                .map(|&(port, protocol, app)| {
                    (port.to_owned(), protocol.to_owned(), app.to_owned())
                })
                .collect();
            if got != want {
                wrong.push(format!(
                    "{:?} → {}: series {got:?}, expected {want:?}",
                    case.process, case.remote
                ));
            }
        }
        let info = remote_info(samples);
        if info != names {
            wrong.push(format!(
                "bitsecure_remote_info {info:?}, expected {names:?}"
            ));
        }
        // Five DNS responses reached dig (the NXDOMAIN one too), none unreadable, none lost.
        let counters = [
            ("bitsecure_dns_responses_total", vec![("result", "ok")], 5.0),
            (
                "bitsecure_dns_responses_total",
                vec![("result", "unparsable")],
                0.0,
            ),
            ("bitsecure_kernel_events_total", vec![("kind", "dns")], 5.0),
            ("bitsecure_kernel_events_dropped_total", vec![], 0.0),
            // One per named address: four from DNS, one from SNI, one from Host.
            ("bitsecure_names", vec![], 6.0),
            ("bitsecure_names_limit", vec![], 65_536.0),
        ];
        for (metric, labels, want) in counters {
            let got = sum_metric(samples, metric, &labels);
            if got != want {
                wrong.push(format!("{metric}{labels:?} = {got}, expected {want}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    });
}

/// 100,000 distinct forged DNS responses from port 53 to a socket in the watched cgroup that
/// asked nothing, with a name map of 1,000 entries and a 16 KiB ring buffer: every response
/// that reached the socket was either read (and refused as unsolicited: not one name taken) or
/// counted as dropped, memory stays flat and the agent keeps answering.
#[test]
fn a_dns_flood_is_fully_accounted_and_names_nothing() {
    const RESPONSES: u64 = 100_000;
    const MAX_NAMES: f64 = 1000.0;
    /// Growth of the agent's peak RSS allowed during the flood. A name map that ignored its
    /// bound would hold every name read: tens of thousands of entries of ~100 bytes.
    const RSS_GROWTH_BOUND: u64 = 8 * 1024 * 1024;
    let net = TestNet::new();
    let cgroup = TestCgroup::new("dns-flood");
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[names]\nmax_entries = {MAX_NAMES}\nring_buffer_bytes = 16384\n",
        cgroup.path.display()
    ));
    let rss_at_start = agent.peak_rss_bytes();

    let sink = install_generator("bsn-sink");
    let target = format!("{}:{}", net.host_v4, free_port());
    let receiver = spawn_until(
        cgroup.command(&sink).args([
            "--timeout-secs",
            "60",
            "udp-sink",
            "--listen",
            &target,
            "--idle-ms",
            "2000",
        ]),
        "ready",
    );
    let flooder = install_generator("bsn-flood");
    let start = Instant::now();
    let flood = run_generator(net.command(&flooder).args([
        "--timeout-secs",
        "60",
        "dns-flood",
        "--to",
        &target,
        "--from",
        &format!("{}:53", net.peer_v4),
        "--count",
        &RESPONSES.to_string(),
        "--rate",
        "50000",
    ]));
    let flood_time = start.elapsed();
    assert_eq!(flood.packets_sent, RESPONSES);
    let received = GeneratorReport::parse(&receiver.finish()).packets_received;
    let (crossed, _) = net.counter("received", "udp");
    // The truth is what reached the socket; the sink's count and nftables' must agree on it.
    assert_eq!(
        received, crossed,
        "the sink received {received} datagrams, nftables saw {crossed} leave for it"
    );
    assert!(
        received >= RESPONSES * 99 / 100,
        "only {received} of {RESPONSES} responses arrived"
    );

    let (read, dropped, names) = eventually(&agent, 20, |samples| {
        let read = sum_metric(samples, "bitsecure_kernel_events_total", &[("kind", "dns")]);
        let dropped = sum_metric(samples, "bitsecure_kernel_events_dropped_total", &[]);
        let accounted = (read + dropped) as u64;
        // More than the truth can never become right: fail at once.
        assert!(
            accounted <= received,
            "{read} DNS events read + {dropped} dropped > {received} datagrams"
        );
        let counted = sum_metric(
            samples,
            "bitsecure_received_packets_total",
            &[("process", "bsn-sink")],
        );
        if accounted == received && counted as u64 == received {
            Ok((read, dropped, sum_metric(samples, "bitsecure_names", &[])))
        } else {
            Err(format!(
                "{read} DNS events read + {dropped} dropped, agent counted {counted} packets; \
                 {received} datagrams reached the socket"
            ))
        }
    });
    let samples = agent.scrape();
    let peak_rss = agent.peak_rss_bytes();
    eprintln!(
        "flood: {RESPONSES} sent in {flood_time:?}, {received} received; {read} events read, \
         {dropped} dropped; {names} names; peak RSS {:.1} MiB (at start {:.1} MiB)",
        peak_rss as f64 / 1048576.0,
        rss_at_start as f64 / 1048576.0
    );
    assert!(
        dropped > 0.0,
        "a 16 KiB ring buffer cannot keep up with a flood: no drop was counted"
    );
    assert!(
        read > MAX_NAMES,
        "only {read} responses read: the flood would not have reached the name map's bound"
    );
    assert_eq!(
        names, 0.0,
        "{read} answers nobody asked for named {names} addresses"
    );
    assert_eq!(
        sum_metric(&samples, "bitsecure_names_limit", &[]),
        MAX_NAMES
    );
    assert_eq!(
        sum_metric(
            &samples,
            "bitsecure_dns_responses_total",
            &[("result", "unsolicited")]
        ),
        read
    );
    assert_eq!(
        sum_metric(
            &samples,
            "bitsecure_dns_responses_total",
            &[("result", "ok")]
        ),
        0.0
    );
    assert_eq!(
        sum_metric(
            &samples,
            "bitsecure_dns_responses_total",
            &[("result", "unparsable")]
        ),
        0.0
    );
    // Every packet from port 53 is a DNS event, never a first-payload one.
    assert_eq!(
        sum_metric(
            &samples,
            "bitsecure_kernel_events_total",
            &[("kind", "payload")]
        ),
        0.0
    );
    assert!(
        peak_rss <= rss_at_start + RSS_GROWTH_BOUND,
        "the agent's peak RSS grew from {rss_at_start} to {peak_rss} bytes"
    );
    let scrape_start = Instant::now();
    assert!(
        agent.try_get("/metrics").is_some(),
        "the agent stopped answering"
    );
    let scrape_time = scrape_start.elapsed();
    assert!(
        scrape_time < Duration::from_secs(1),
        "a scrape took {scrape_time:?}"
    );
}
