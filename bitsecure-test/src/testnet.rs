//! Shared machinery of the privileged integration tests: a test network namespace with a veth
//! pair and nftables counters (the independent truth), the real agent binary, and the traffic
//! generator installed under unique executable names.
//!
//! These tests need root. They fail (never skip) when they cannot run.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);
static NEXT_NET: AtomicU32 = AtomicU32::new(1);

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn require_root() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and create network namespaces: run them as \
         root (`sudo cargo xtask test`)"
    );
}

/// Where this test run keeps its files (generator copies, configs, logs).
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitsecure-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Copies the traffic generator to `name` (≤ 15 bytes, so the kernel comm is exactly `name`).
pub fn install_generator(name: &str) -> PathBuf {
    install_as(env!("CARGO_BIN_EXE_bitsecure-trafficgen"), name)
}

/// Copies the simulated rig's programs (`bitsecure-rig`) to `name`, as [`install_generator`].
pub fn install_rig(name: &str) -> PathBuf {
    install_as(env!("CARGO_BIN_EXE_bitsecure-rig"), name)
}

fn install_as(binary: &str, name: &str) -> PathBuf {
    assert!(name.len() <= 15, "{name} would be truncated in comm");
    let path = scratch_dir().join(name);
    // Copy then rename: another test may be running the previous copy ("text file busy").
    let unique = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
    let staging = scratch_dir().join(format!(".{name}.{unique}"));
    std::fs::copy(binary, &staging).unwrap_or_else(|e| panic!("copy {binary}: {e}"));
    std::fs::rename(&staging, &path).unwrap_or_else(|e| panic!("install {name}: {e}"));
    path
}

/// What the generator reports about itself.
#[derive(Debug, serde::Deserialize)]
pub struct GeneratorReport {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

impl GeneratorReport {
    /// The report a generator printed last (its final line).
    pub fn parse(output: &str) -> Self {
        let line = output.lines().last().expect("generator printed nothing");
        serde_json::from_str(line).unwrap_or_else(|error| panic!("bad report {line}: {error}"))
    }
}

/// Retries `run` while it fails with "text file busy": a test thread copying a generator while
/// another forks leaves the copy's write descriptor open in the child for a moment.
fn retry_busy<T>(mut run: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    for _ in 0..50 {
        match run() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
    run()
}

/// Runs a generator client to completion; panics unless it succeeded.
pub fn run_generator(command: &mut Command) -> GeneratorReport {
    let output = retry_busy(|| command.output()).expect("run generator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "generator {command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    GeneratorReport::parse(&stdout)
}

/// A long-running generator (server or `hold`) whose stdout is drained in the background.
/// Killed on drop if still running, so no test leaves a generator (or its cgroup) behind.
pub struct Spawned {
    pub child: Child,
    output: Option<std::thread::JoinHandle<String>>,
}

impl Spawned {
    /// Waits for the process; panics unless it succeeded. Returns what it printed.
    pub fn finish(mut self) -> String {
        let status = self.child.wait().expect("wait for generator");
        let output = self
            .output
            .take()
            .map(|reader| reader.join().expect("stdout reader"))
            .unwrap_or_default();
        assert!(status.success(), "generator failed ({status}): {output}");
        output
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a long-running program and waits for it to print the line `marker` (after any
/// others: `openssl s_server` talks first).
pub fn spawn_until(command: &mut Command, marker: &str) -> Spawned {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = retry_busy(|| command.spawn()).expect("spawn generator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.trim() == marker => break,
            Some(Ok(line)) => before.push(line),
            other => {
                let _ = child.kill();
                panic!("{command:?} did not print {marker}: {before:?} then {other:?}")
            }
        }
    }
    // Keep reading, or the generator dies of EPIPE when it prints its report.
    let output =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    Spawned {
        child,
        output: Some(output),
    }
}

/// A network namespace joined to the root namespace by a veth pair, with nftables counters
/// in the namespace counting what crosses the peer's interface, per protocol.
pub struct TestNet {
    pub ns: String,
    host_if: String,
    peer_if: String,
    pub host_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
    children: Vec<Spawned>,
}

/// Protocols the namespace's nftables counters tell apart.
/// `loopback` counts TCP over the namespace's own lo to/from port [`LOOPBACK_PORT`].
pub const COUNTED_PROTOCOLS: [&str; 6] = ["tcp", "udp", "icmp", "icmpv6", "raw253", "loopback"];
/// The TCP port whose loopback traffic the `loopback` counters count.
pub const LOOPBACK_PORT: u16 = 7000;

impl TestNet {
    pub fn new() -> Self {
        require_root();
        let index = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        assert!(index < 250, "too many test namespaces");
        let pid = std::process::id() % 100_000;
        let ns = format!("bstest{pid}n{index}");
        let host_if = format!("bsh{pid}n{index}");
        let peer_if = format!("bsp{pid}n{index}");
        // Subnets keyed by pid and index so parallel test binaries do not collide.
        let subnet = ((pid % 200) as u8, index as u8);
        let host_v4 = Ipv4Addr::new(10, 200 + (subnet.0 % 50), subnet.1, 1);
        let peer_v4 = Ipv4Addr::new(10, 200 + (subnet.0 % 50), subnet.1, 2);
        let host_v6: Ipv6Addr = format!("fd00:b5:{pid:x}:{index:x}::1").parse().unwrap();
        let peer_v6: Ipv6Addr = format!("fd00:b5:{pid:x}:{index:x}::2").parse().unwrap();

        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh("ip", &["netns", "add", &ns]);
        let net = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            peer_if: peer_if.clone(),
            host_v4,
            peer_v4,
            host_v6,
            peer_v6,
            children: Vec::new(),
        };
        sh(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ],
        );
        sh("ip", &["link", "set", &peer_if, "netns", &ns]);
        sh(
            "ip",
            &["addr", "add", &format!("{host_v4}/24"), "dev", &host_if],
        );
        sh(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{host_v6}/64"),
                "dev",
                &host_if,
                "nodad",
            ],
        );
        sh("ip", &["link", "set", &host_if, "up"]);
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{peer_v4}/24"),
                "dev",
                &peer_if,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &ns,
                "-6",
                "addr",
                "add",
                &format!("{peer_v6}/64"),
                "dev",
                &peer_if,
                "nodad",
            ],
        );
        sh("ip", &["-n", &ns, "link", "set", &peer_if, "up"]);
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        // The host segments its GSO super-packets in software at the veth (TSO off), so the
        // agent's GSO correction is exercised and the peer receives real wire packets; GRO on
        // the host side merges what it receives. The peer sends wire-sized packets only
        // (gso_max_segs 1): nftables' output hook sees packets before segmentation, so only
        // then do its counters equal what crosses the wire.
        sh("ethtool", &["-K", &host_if, "tso", "off", "gro", "on"]);
        sh(
            "ip",
            &["-n", &ns, "link", "set", &peer_if, "gso_max_segs", "1"],
        );
        net.install_counters();
        net
    }

    fn install_counters(&self) {
        let (h4, h6) = (self.host_v4, self.host_v6);
        let mut rules = String::from("table inet bitsecure_test {\n");
        for protocol in COUNTED_PROTOCOLS {
            rules += &format!(
                "  counter host_sent_{protocol} {{}}\n  counter host_received_{protocol} {{}}\n"
            );
        }
        // Seen from the host: what the peer receives the host sent, and vice versa. ICMP
        // counts echo messages only (not neighbour discovery or errors).
        let matches = [
            ("tcp", "meta l4proto tcp"),
            ("udp", "meta l4proto udp"),
            ("raw253", "meta l4proto 253"),
        ];
        rules += "  chain input {\n    type filter hook input priority 0; policy accept;\n";
        for (name, matcher) in matches {
            rules += &format!("    ip saddr {h4} {matcher} counter name host_sent_{name}\n");
            rules += &format!("    ip6 saddr {h6} {matcher} counter name host_sent_{name}\n");
        }
        rules += &format!("    ip saddr {h4} icmp type echo-request counter name host_sent_icmp\n");
        rules +=
            &format!("    ip6 saddr {h6} icmpv6 type echo-request counter name host_sent_icmpv6\n");
        rules += &format!(
            "    iifname \"lo\" ip saddr 127.0.0.1 tcp sport {LOOPBACK_PORT} counter name host_received_loopback\n"
        );
        rules += "  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n";
        for (name, matcher) in matches {
            rules += &format!("    ip daddr {h4} {matcher} counter name host_received_{name}\n");
            rules += &format!("    ip6 daddr {h6} {matcher} counter name host_received_{name}\n");
        }
        rules +=
            &format!("    ip daddr {h4} icmp type echo-reply counter name host_received_icmp\n");
        rules += &format!(
            "    ip6 daddr {h6} icmpv6 type echo-reply counter name host_received_icmpv6\n"
        );
        rules += &format!(
            "    oifname \"lo\" ip daddr 127.0.0.1 tcp dport {LOOPBACK_PORT} counter name host_sent_loopback\n"
        );
        rules += "  }\n}\n";
        let rules_file = scratch_dir().join(format!("{}.nft", self.ns));
        std::fs::write(&rules_file, rules).expect("write nft rules");
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "-f",
                rules_file.to_str().unwrap(),
            ],
        );
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Starts `program args` in the namespace, waits for its `ready`, and stops it on drop.
    pub fn spawn_server(&mut self, program: &Path, args: &[&str]) {
        self.spawn_server_until(program, args, "ready");
    }

    /// [`TestNet::spawn_server`] for a program that says `marker` when it is ready.
    pub fn spawn_server_until(&mut self, program: &Path, args: &[&str], marker: &str) {
        let child = spawn_until(self.command(program).args(args), marker);
        self.children.push(child);
    }

    /// Address `host` of the peer's IPv4 subnet (the peer itself is .2, the host side .1).
    pub fn peer_v4_host(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.peer_v4.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// Address `host` of the peer's IPv6 subnet (the peer itself is ::2, the host side ::1).
    pub fn peer_v6_host(&self, host: u16) -> Ipv6Addr {
        let mut segments = self.peer_v6.segments();
        segments[7] = host;
        Ipv6Addr::from(segments)
    }

    /// Gives the peer one more address (of its subnet, e.g. [`TestNet::peer_v4_host`]), so a
    /// test can have several remotes. Checks that the host routes it into the veth: traffic
    /// to an address that is not on the link would leave by the default route.
    pub fn add_peer_address(&self, address: IpAddr) {
        let (family, prefix) = match address {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        let with_prefix = format!("{address}/{prefix}");
        let mut args = vec![
            "-n",
            &self.ns,
            family,
            "addr",
            "add",
            &with_prefix,
            "dev",
            &self.peer_if,
        ];
        if address.is_ipv6() {
            args.push("nodad");
        }
        sh("ip", &args);
        let route = sh("ip", &[family, "route", "get", &address.to_string()]);
        assert!(
            route
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["dev", self.host_if.as_str()])
                && !route.contains(" via "),
            "{address} is not routed straight into the test veth {}: {route}",
            self.host_if
        );
    }

    /// The nftables counter `host_{direction}_{protocol}`: (packets, bytes).
    pub fn counter(&self, direction: &str, protocol: &str) -> (u64, u64) {
        let name = format!("host_{direction}_{protocol}");
        let text = sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "list",
                "counter",
                "inet",
                "bitsecure_test",
                &name,
            ],
        );
        let number = |key: &str| -> u64 {
            let mut words = text.split_whitespace();
            words.find(|word| *word == key);
            words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name}: {text}"))
        };
        (number("packets"), number("bytes"))
    }

    /// The `loopback` counter: what a client in the namespace sent to / received from
    /// 127.0.0.1:[`LOOPBACK_PORT`].
    pub fn loopback_counter(&self, direction: &str) -> (u64, u64) {
        self.counter(direction, "loopback")
    }

    /// Zeroes every counter (after the agent starts, for traffic on pre-existing sockets).
    pub fn reset_counters(&self) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "reset",
                "counters",
                "table",
                "inet",
                "bitsecure_test",
            ],
        );
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for spawned in &mut self.children {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
        }
        // Deleting the namespace deletes the peer end and with it the whole veth pair.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// One sample of the exposition format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The real agent binary, with a config of its own, stopped (SIGTERM) on drop.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    extra: String,
}

/// How often the test agents poll; short so the tests are quick.
pub const TEST_POLL_SECONDS: f64 = 0.5;

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `extra` config this agent was started with.
    pub fn extra_config(&self) -> &str {
        &self.extra
    }

    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts the agent with `extra` TOML appended to a test config.
    pub fn start_with(extra: &str) -> Self {
        Self::start_polling(extra, TEST_POLL_SECONDS)
    }

    /// [`Agent::start_with`], polling every `poll_seconds` (e.g. the default 5 s).
    pub fn start_polling(extra: &str, poll_seconds: f64) -> Self {
        require_root();
        let original_extra = extra.to_owned();
        let port = free_port();
        let dir = scratch_dir();
        let config = dir.join(format!("agent-{port}.toml"));
        // Tables before [agent], so `extra` may start with more [agent] keys. Unless the test
        // brings its own, the baseline is a scratch file that is never learned.
        let baseline = if extra.contains("[baseline]") {
            String::new()
        } else {
            format!(
                "[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
                dir.join(format!("baseline-{port}.toml")).display()
            )
        };
        // Nothing is pinned unless the test asks for it: every agent starts from empty maps.
        let (kernel, extra) = if extra.contains("pin_path") {
            (String::new(), extra.to_owned())
        } else if extra.contains("[kernel]") {
            (
                String::new(),
                extra.replacen("[kernel]\n", "[kernel]\npin_path = \"\"\n", 1),
            )
        } else {
            ("[kernel]\npin_path = \"\"\n".to_owned(), extra.to_owned())
        };
        std::fs::write(
            &config,
            format!(
                "{baseline}{kernel}[agent]\nlisten = \"127.0.0.1:{port}\"\npoll_interval_seconds = {poll_seconds:?}\n{extra}"
            ),
        )
        .expect("write config");
        let log = dir.join(format!("agent-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_bitsecure"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("start agent");
        let mut agent = Self {
            child,
            port,
            log,
            extra: original_extra,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = agent.child.try_wait().expect("wait agent") {
                panic!("agent exited with {status}: {}", agent.log_text());
            }
            if agent.try_get("/metrics").is_some()
                && agent.log_text().contains("attached to cgroup")
            {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent did not come up: {}", agent.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`; `None` if the agent does not answer.
    pub fn try_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait agent").is_none()
    }

    /// The agent's peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the agent's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmHWM in the agent's status: {status}"))
    }

    pub fn scrape(&self) -> Vec<Sample> {
        let text = self.try_get("/metrics").expect("agent answers /metrics");
        parse_exposition(&text)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory arguments; the pid is our own child's.
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "cannot signal the agent");
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory arguments; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent ignored SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in terminate.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Scrapes until `check` accepts the samples (returning what it found) or `seconds` have
/// passed (then panics with the last reason and the agent's log).
pub fn eventually<T>(
    agent: &Agent,
    seconds: u64,
    mut check: impl FnMut(&[Sample]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match check(&agent.scrape()) {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => {
                panic!("{why}\nagent log (tail):\n{}", tail(&agent.log_text(), 30))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port nothing listens on (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// Parses the Prometheus text format (enough of it for our own output).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = index + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// Traffic of one process as the agent exports it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Exported {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_packets: u64,
    pub received_packets: u64,
}

/// Sums the traffic counters per process over the series that match `filter`.
pub fn traffic_by_process(
    samples: &[Sample],
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, Exported> {
    let mut by_process: BTreeMap<String, Exported> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| filter(&sample.labels)) {
        let Some(process) = sample.labels.get("process") else {
            continue;
        };
        let entry = by_process.entry(process.clone()).or_default();
        let value = sample.value as u64;
        match sample.name.as_str() {
            "bitsecure_sent_bytes_total" => entry.sent_bytes += value,
            "bitsecure_received_bytes_total" => entry.received_bytes += value,
            "bitsecure_sent_packets_total" => entry.sent_packets += value,
            "bitsecure_received_packets_total" => entry.received_packets += value,
            _ => {}
        }
    }
    by_process
}

/// The sum of the samples named `name` that carry all of `labels`.
pub fn sum_metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// |a - b| ≤ tolerance × b (b is the independent truth).
pub fn within(measured: u64, truth: u64, tolerance: f64) -> bool {
    (measured as f64 - truth as f64).abs() <= tolerance * truth as f64
}

/// Where cgroup v2 is mounted (found the agent's way).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    bitsecure::cgroup::cgroup2_mount_from(&mounts).expect("cgroup v2 mounted")
}

/// A child cgroup of the cgroup v2 mount, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let path = cgroup2_mount().join(format!("bitsecure-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("create test cgroup");
        Self { path }
    }

    /// A command that runs `program` inside this cgroup.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
            .arg(&self.path)
            .arg(program);
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The cgroup can only be removed once its processes have exited.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Programs of ours attached to `cgroup`, as bpftool (an independent view) lists them.
pub fn attached_programs(cgroup: &Path) -> usize {
    let listing = sh(
        "bpftool",
        &["cgroup", "show", &cgroup.display().to_string()],
    );
    listing
        .lines()
        .filter(|line| {
            [
                "count_egress",
                "count_ingress",
                "record_owner",
                "mark_released",
                "mark_passive",
            ]
            .iter()
            .any(|name| line.contains(name))
        })
        .count()
}
