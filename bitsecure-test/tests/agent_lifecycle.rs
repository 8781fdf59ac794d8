//! Privileged tests of the agent as a program: clear failures on bad input, watching only a
//! configured cgroup, full kernel maps and cardinality limits made visible, and a shutdown
//! that detaches everything.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use bitsecure_test::{
    agent::{Agent, TEST_POLL_SECONDS, agent_binary},
    cgroup::{TestCgroup, attached_programs},
    exposition::{Sample, traffic_by_process},
    process::{require_root, run_generator, scratch_dir},
    testnet::TestNet,
};

use crate::install_generator;

fn agent_command(config_text: &str, name: &str) -> (Command, PathBuf) {
    let config = scratch_dir().join(name);
    std::fs::write(&config, config_text).unwrap();
    let mut command = Command::new(agent_binary());
    command.args(["run", "--config"]).arg(&config);
    (command, config)
}

#[test]
fn bad_config_is_refused_with_the_line_and_a_nonzero_exit() {
    let (mut command, _) = agent_command(
        "[agent]\nlisten = \"127.0.0.1:1\"\n\n[kernel]\nflow_capacity = \"lots\"\n",
        "bad-type.toml",
    );
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // EX_CONFIG: the unit's RestartPreventExitStatus=78 stops restarting it.
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("line 5") && stderr.contains("flow_capacity"),
        "{stderr}"
    );

    let (mut command, _) = agent_command("[agent]\nlisten_address = \"x\"\n", "unknown-key.toml");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // EX_CONFIG: the unit's RestartPreventExitStatus=78 stops restarting it.
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("listen_address") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn taken_port_fails_before_touching_the_kernel() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (mut command, _) = agent_command(
        &format!("[agent]\nlisten = \"127.0.0.1:{port}\"\n"),
        "taken.toml",
    );
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Not a config error: the port or the cgroup may be there at the next try.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("attached"), "{stderr}");
}

#[test]
fn missing_cgroup_path_is_a_clear_error() {
    let (mut command, _) = agent_command(
        "[agent]\ncgroup = \"/sys/fs/cgroup/no-such-slice\"\n",
        "nocg.toml",
    );
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Not a config error: the port or the cgroup may be there at the next try.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-slice"), "{stderr}");
}

#[test]
fn shutdown_detaches_every_program() {
    require_root();
    // A cgroup of its own: agents of tests running at the same time attach to the root.
    let cgroup = TestCgroup::new("shutdown");
    assert_eq!(attached_programs(&cgroup.path), 0);
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    assert_eq!(attached_programs(&cgroup.path), 5, "five programs attached");
    let status = agent.stop();
    assert!(status.success(), "agent exit status {status}");
    assert_eq!(attached_programs(&cgroup.path), 0, "programs left attached");
}

#[test]
fn watches_only_the_configured_cgroup() {
    let mut net = TestNet::new();
    let server = install_generator("bsg-server");
    net.spawn_server(
        &server,
        &["serve", "--tcp", &format!("{}:5000", net.peer_v4)],
    );
    let cgroup = TestCgroup::new("slice");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let inside = install_generator("bsg-inside");
    let outside = install_generator("bsg-outside");
    let target = format!("{}:5000", net.peer_v4);
    let upload = ["tcp", "--connect", &target, "--upload", "2000000"];
    let inside_report = run_generator(cgroup.command(&inside).args(upload));
    run_generator(Command::new(&outside).args(upload));

    let remote = net.peer_v4.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let by_process = traffic_by_process(&agent.scrape(), |labels| {
            labels.get("remote") == Some(&remote)
        });
        let seen_inside = by_process
            .get("bsg-inside")
            .map_or(0, |traffic| traffic.sent_bytes);
        assert!(
            !by_process.contains_key("bsg-outside"),
            "traffic outside the cgroup was counted: {by_process:?}"
        );
        if seen_inside >= inside_report.sent_bytes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inside traffic not counted: {by_process:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The other process has had time to show up by now if it were wrongly counted.
    std::thread::sleep(Duration::from_secs_f64(TEST_POLL_SECONDS * 3.0));
    let by_process = traffic_by_process(&agent.scrape(), |labels| {
        labels.get("remote") == Some(&remote)
    });
    assert!(!by_process.contains_key("bsg-outside"), "{by_process:?}");
}

fn metric(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            label.is_none_or(|(key, value)| {
                sample.labels.get(key).map(String::as_str) == Some(value)
            })
        })
        .map(|sample| sample.value)
        .sum()
}

#[test]
fn full_flow_map_is_reported_not_hidden() {
    let mut net = TestNet::new();
    let server = install_generator("bsg-server");
    net.spawn_server(
        &server,
        &["serve", "--tcp", &format!("{}:5000", net.peer_v4)],
    );
    let cgroup = TestCgroup::new("full");
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[kernel]\nflow_capacity = 64\n",
        cgroup.path.display()
    ));
    let generator = install_generator("bsg-flood");
    // 150 connections = 150 flows within a second, far more than 64 entries.
    let target = format!("{}:5000", net.peer_v4);
    run_generator(cgroup.command(&generator).args([
        "--timeout-secs",
        "60",
        "tcp",
        "--connect",
        &target,
        "--upload",
        "100",
        "--connections",
        "150",
        "--parallel",
        "8",
    ]));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let samples = agent.scrape();
        let failures = metric(
            &samples,
            "bitsecure_map_insert_failures_total",
            Some(("map", "flows")),
        );
        let entries = metric(&samples, "bitsecure_map_entries", Some(("map", "flows")));
        let capacity = metric(&samples, "bitsecure_map_capacity", Some(("map", "flows")));
        assert_eq!(capacity, 64.0);
        assert!(entries <= 64.0, "map holds {entries} > capacity");
        if failures > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no insert failures reported; entries {entries}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn cardinality_limit_folds_remotes_into_other_and_keeps_totals() {
    let mut net = TestNet::new();
    let server = install_generator("bsg-server");
    let (v4, v6) = (net.peer_v4, net.peer_v6);
    net.spawn_server(&server, &["serve", "--udp", &format!("{v4}:5000")]);
    net.spawn_server(&server, &["serve", "--udp", &format!("[{v6}]:5000")]);
    // Watch only the generator's cgroup, so no other traffic takes the one remote slot.
    let cgroup = TestCgroup::new("fold");
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[metrics]\nmax_remotes = 1\n",
        cgroup.path.display()
    ));
    let generator = install_generator("bsg-fold");
    for (target, datagrams) in [
        (format!("{v4}:5000"), "300"),
        (format!("[{v6}]:5000"), "100"),
    ] {
        run_generator(cgroup.command(&generator).args([
            "udp",
            "--to",
            &target,
            "--datagrams",
            datagrams,
            "--size",
            "500",
        ]));
        // Separate polls, so the first remote is admitted before the second appears.
        std::thread::sleep(Duration::from_secs_f64(TEST_POLL_SECONDS * 3.0));
    }
    let remotes = [v4.to_string(), v6.to_string(), "other".to_owned()];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let samples = agent.scrape();
        let by_remote = |remote: &str| {
            traffic_by_process(&samples, |labels| {
                labels.get("remote").map(String::as_str) == Some(remote)
                    && labels.get("protocol").map(String::as_str) == Some("udp")
            })
            .get("bsg-fold")
            .copied()
            .unwrap_or_default()
        };
        let total: u64 = remotes
            .iter()
            .map(|remote| by_remote(remote).sent_bytes)
            .sum();
        let (_, nft_sent) = net.counter("sent", "udp");
        let folded = metric(&samples, "bitsecure_folded_flows_total", None);
        // One address got its own series (the one with more bytes came first), the other
        // was folded into "other"; nothing was lost on the way.
        let own = by_remote(&v4.to_string()).sent_bytes;
        let other = by_remote("other").sent_bytes;
        let v6_own = by_remote(&v6.to_string()).sent_bytes;
        if total == nft_sent && own > 0 && other > 0 && v6_own == 0 && folded > 0.0 {
            let series = metric(&samples, "bitsecure_traffic_series", None);
            assert!(series >= 2.0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "own {own} other {other} v6 {v6_own} total {total} nft {nft_sent} folded {folded}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn help_explains_the_commands() {
    let output = Command::new(agent_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for expected in ["run", "config", "Prometheus"] {
        assert!(help.contains(expected), "--help lacks {expected}: {help}");
    }
    let output = Command::new(agent_binary())
        .args(["config", "--default"])
        .output()
        .unwrap();
    let default = String::from_utf8_lossy(&output.stdout);
    assert!(default.contains("listen = \"127.0.0.1:9977\""), "{default}");
}

#[test]
fn closed_sockets_are_folded_out_of_the_kernel_maps_without_losing_bytes() {
    let mut net = TestNet::new();
    let server = install_generator("bsg-server");
    net.spawn_server(
        &server,
        &["serve", "--tcp", &format!("{}:5000", net.peer_v4)],
    );
    let cgroup = TestCgroup::new("fold-closed");
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", cgroup.path.display()));
    let generator = install_generator("bsg-closer");
    let target = format!("{}:5000", net.peer_v4);
    run_generator(cgroup.command(&generator).args([
        "tcp",
        "--connect",
        &target,
        "--upload",
        "5000",
        "--connections",
        "200",
        "--parallel",
        "4",
    ]));
    let remote = net.peer_v4.to_string();
    // Closed sockets are folded a grace period (2 s with this poll interval) after close.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = agent.scrape();
        let closed = metric(&samples, "bitsecure_closed_sockets_total", None);
        let entries = metric(&samples, "bitsecure_map_entries", Some(("map", "flows")));
        let sent = traffic_by_process(&samples, |labels| labels.get("remote") == Some(&remote))
            .get("bsg-closer")
            .map_or(0, |traffic| traffic.sent_bytes);
        let (_, nft_sent) = net.counter("sent", "tcp");
        if closed >= 200.0 && entries < 10.0 && sent == nft_sent {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "closed {closed}, flow entries {entries}, sent {sent} vs nftables {nft_sent}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// After attaching, the thread serving HTTP holds no capability at all, the poller only the
/// two it needs to read other processes' /proc entries and the guard the two it needs to check
/// and re-attach the programs — read from the kernel's own view of
/// the running agent.
#[test]
fn capabilities_are_dropped_after_attaching() {
    let agent = Agent::start();
    let pid = agent.pid();
    let status =
        |path: String| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let field = |text: &str, key: &str| -> u64 {
        let hex = text
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    // A new thread names itself once running: until then the poller shows as "bitsecure".
    let poller_named = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "poller")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !poller_named() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let main = status(format!("/proc/{pid}/status"));
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(field(&main, key), 0, "main (HTTP) thread {key}\n{main}");
    }
    let poller_caps = (1u64 << 2) | (1u64 << 19); // CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE
    let guard_caps = (1u64 << 12) | (1u64 << 39); // CAP_NET_ADMIN, CAP_BPF
    let mut poller_seen = false;
    let mut guard_seen = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let text = status(path.join("status").display().to_string());
        let name = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("Name:")
            .trim();
        let effective = field(&text, "CapEff:");
        let allowed = if name == "guard" {
            guard_caps
        } else {
            poller_caps
        };
        assert_eq!(
            field(&text, "CapBnd:") & !allowed,
            0,
            "{name}: bounding set\n{text}"
        );
        if name == "guard" {
            guard_seen = true;
            assert_eq!(effective, guard_caps, "guard\n{text}");
        } else if name == "poller" {
            poller_seen = true;
            assert_eq!(effective, poller_caps, "poller\n{text}");
        } else {
            assert_eq!(effective, 0, "thread {name} holds capabilities\n{text}");
        }
    }
    assert!(poller_seen, "no poller thread in /proc/{pid}/task");
    assert!(guard_seen, "no guard thread in /proc/{pid}/task");

    // The narrowed agent still attributes traffic (the /proc path for sockets older than the
    // agent runs under these capabilities in accounting.rs).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let _client = std::net::TcpStream::connect(address).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let name = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log_text();
        if log.contains(&format!("new process on the network: {name}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test process was never attributed:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The exposition follows the exporter conventions: gzip for a client that asks (curl's own
/// decompression is the independent check: the same metrics as the plain body, in a fraction
/// of the bytes), `/-/healthy` and `/-/ready`, `process_*` metrics, and a `build_info` that
/// names the commit, the compiler and the eBPF object.
#[test]
fn exposition_is_gzipped_on_request_with_health_process_and_build_metrics() {
    let agent = Agent::start();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", agent.port);
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Ready once polled: the test agent polls at once, so within a few polls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&["-o", "/dev/null", "-w", "%{http_code}", &url("/-/ready")]) != "200" {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(curl(&[&url("/-/healthy")]), "Healthy\n");

    let families = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let plain = curl(&[&url("/metrics")]);
    let headers = curl(&[
        "--compressed",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url("/metrics"),
    ]);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-encoding: gzip"),
        "{headers}"
    );
    let compressed_bytes: usize = curl(&[
        "-H",
        "Accept-Encoding: gzip",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &url("/metrics"),
    ])
    .parse()
    .unwrap();
    // Fetched after the plain body: it has every family of it (more may have appeared since,
    // e.g. the guard's first check of the programs).
    let decompressed = curl(&["--compressed", &url("/metrics")]);
    let (before, after) = (families(&plain), families(&decompressed));
    assert!(before.is_subset(&after), "{before:?}\n{after:?}");
    assert!(
        compressed_bytes * 3 < plain.len(),
        "gzip: {compressed_bytes} bytes for {} plain",
        plain.len()
    );
    // Without Accept-Encoding: no gzip.
    let identity = curl(&["-D", "-", "-o", "/dev/null", &url("/metrics")]);
    assert!(!identity.to_ascii_lowercase().contains("content-encoding"));

    let samples = agent.scrape();
    assert!(metric(&samples, "process_resident_memory_bytes", None) > 1e6);
    assert!(metric(&samples, "process_open_fds", None) > 0.0);
    let build = samples
        .iter()
        .find(|sample| sample.name == "bitsecure_build_info")
        .expect("build_info");
    let label = |key: &str| build.labels.get(key).cloned().unwrap_or_default();
    let version = Command::new(agent_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("bitsecure {}", label("version"))
    );
    assert!(label("rustc").starts_with("rustc "), "{build:?}");
    assert!(!label("revision").is_empty(), "{build:?}");
    let hash = label("ebpf_sha256");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{build:?}"
    );
}

/// systemd's `Type=notify` protocol, spoken to a socket of the test's own (as systemd would
/// bind one): `READY=1` only once the agent has polled (its `/-/ready` says so too),
/// `WATCHDOG=1` a few times per `WATCHDOG_USEC` while it runs, `STOPPING=1` at SIGTERM.
#[test]
fn systemd_hears_ready_after_the_first_poll_a_fed_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = bitsecure_test::process::scratch_dir().join(format!("notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let receive = |until: Duration| {
        let deadline = Instant::now() + until;
        let mut messages = Vec::new();
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(length) = socket.recv(&mut buffer) {
                // One datagram per notification, its states one per line.
                messages.push(String::from_utf8_lossy(&buffer[..length]).trim().to_owned());
            }
        }
        messages
    };
    // A 2 s watchdog: fed every 0.5 s at most apart.
    let agent = Agent::start_with_env(
        "",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let first = receive(Duration::from_secs(3));
    let ready_at = first
        .iter()
        .position(|message| message.lines().any(|line| line == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 in {first:?}"));
    assert!(
        agent.try_get("/-/ready").is_some(),
        "READY=1 sent, but /-/ready does not answer 200"
    );
    let fed = first
        .iter()
        .filter(|message| *message == "WATCHDOG=1")
        .count();
    assert!(
        fed >= 4,
        "the watchdog was fed {fed} times in 3 s: {first:?}"
    );
    assert_eq!(
        first.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "READY=1 once: {first:?} (first at {ready_at})"
    );
    agent.signal(libc::SIGTERM);
    let last = receive(Duration::from_secs(3));
    assert!(
        last.iter().any(|message| message == "STOPPING=1"),
        "no STOPPING=1 at SIGTERM: {last:?}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Off loopback the agent serves TLS with basic auth, as Prometheus' exporters do: a real
/// Prometheus scrapes it over HTTPS with the right password (`up` 1), not with a wrong one
/// or over plain HTTP (`up` 0), from another address of the host (as from another machine);
/// curl gets 401 without credentials, gzip with them. The CLI on the rig itself still talks
/// plain HTTP to loopback, without a password.
#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    // A non-loopback address of this host for the scrapes to come from.
    let net = bitsecure_test::testnet::TestNet::new();
    let host = net.host_v4;
    let dir = scratch_dir().join(format!("tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let openssl = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=rig", "-addext"])
        .arg(format!("subjectAltName=IP:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(openssl.status.success(), "{openssl:?}");
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let agent = Agent::start_on_all_addresses(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[agent.basic_auth_users]\nprometheus = \"{hash}\"\n",
        cert.display(),
        key.display()
    ));
    let url = format!("https://{host}:{}/metrics", agent.port);
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]),
        "401"
    );
    let headers = curl(&[
        "-u",
        "prometheus:s3cret",
        "--compressed",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-encoding: gzip"),
        "{headers}"
    );

    let prometheus_port = bitsecure_test::process::free_port();
    let job = |name: &str, scheme: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scrape_interval: 1s\n    scheme: {scheme}\n    \
             tls_config:\n      ca_file: {}\n    basic_auth:\n      username: prometheus\n      \
             password: {password}\n    static_configs:\n      - targets: [\"{host}:{}\"]\n",
            cert.display(),
            agent.port
        )
    };
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  evaluation_interval: 1s\nscrape_configs:\n{}{}{}",
            job("tls", "https", "s3cret"),
            job("wrong-password", "https", "nope"),
            job("plain", "http", "s3cret")
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus: run `cargo xtask setup`");
    let up = |job: &str| -> Option<String> {
        let output = Command::new("curl")
            .args([
                "-sS",
                "-G",
                &format!("http://127.0.0.1:{prometheus_port}/api/v1/query"),
            ])
            .arg("--data-urlencode")
            .arg(format!("query=up{{job=\"{job}\"}}"))
            .output()
            .ok()?;
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = ["tls", "wrong-password", "plain"].map(up).to_vec();
        if seen.iter().all(Option::is_some) && seen[0].as_deref() == Some("1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(
        seen,
        [
            Some("1".to_owned()),
            Some("0".to_owned()),
            Some("0".to_owned())
        ],
        "up of the tls, wrong-password and plain jobs"
    );
    // The CLI on the rig: plain HTTP to loopback, no password (it fails otherwise).
    agent.unexpected();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's own history (`/api/history`): a process's live points add up to what it sent
/// (nftables' count), the points without its traffic are 0 or unknown; after a clean restart
/// the next agent shows the same points.
#[test]
fn history_holds_a_process_traffic_without_prometheus() {
    let mut net = TestNet::new();
    let target = format!("{}:5000", net.peer_v4);
    net.spawn_server(
        &crate::install_generator("bsh-server"),
        &["serve", "--udp", &target],
    );
    let cgroup = TestCgroup::new("history");
    let dir = scratch_dir().join(format!("history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        cgroup.path.display(),
        dir.join("baseline.toml").display()
    );
    let agent = Agent::start_with(&config);
    let process = "bsh-client";
    run_generator(cgroup.command(&crate::install_generator(process)).args([
        "udp",
        "--to",
        &target,
        "--datagrams",
        "200",
        "--size",
        "1000",
    ]));
    let (_, sent) = net.counter("sent", "udp");
    // The 10-s point of the traffic closes once the clock passes it.
    std::thread::sleep(Duration::from_secs(12));
    let body = agent
        .try_get("/api/history?range=120")
        .expect("/api/history");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["step_seconds"], 10);
    let series = view["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["process"] == process
                && s["kind"] == "live"
                && s["direction"] == "sent"
                && s["rule"] == ""
        })
        .unwrap_or_else(|| panic!("no live sent series of {process}: {body}"));
    let values: Vec<f64> = series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_f64().unwrap_or(0.0))
        .collect();
    assert_eq!(values.len(), 12);
    let total: f64 = values.iter().map(|rate| rate * 10.0).sum();
    assert!(
        (total - sent as f64).abs() <= sent as f64 * 0.001,
        "history has {total} bytes, nftables counted {sent}: {values:?}"
    );
    // The traffic took a second or two: one or two points hold it, the others are quiet.
    assert!(
        values.iter().filter(|rate| **rate > 0.0).count() <= 2,
        "{values:?}"
    );

    // A clean restart keeps it (saved beside the baseline, loaded at start).
    assert!(agent.stop().success());
    assert!(dir.join("history.json").exists());
    let again = Agent::start_with(&config);
    let body = again
        .try_get("/api/history?range=300")
        .expect("/api/history");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let restored: f64 = view["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["process"] == process
                && s["kind"] == "live"
                && s["direction"] == "sent"
                && s["rule"] == ""
        })
        .flat_map(|s| s["values"].as_array().unwrap().clone())
        .map(|value| value.as_f64().unwrap_or(0.0) * 10.0)
        .sum();
    assert!(
        (restored - total).abs() < 1.0,
        "after the restart {restored} bytes, before {total}: {body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
