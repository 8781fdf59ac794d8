//! `cargo xtask bench`: the agent's overhead, measured for real.
//!
//! Builds a network namespace joined to the root namespace by a veth pair, then runs iperf3
//! workloads without and with the agent, interleaved, and reports medians. While the agent is
//! attached, BPF run-time statistics give each program's average cost. Finally the agent runs
//! with 10,000 live UDP flows while its CPU time and memory are read from /proc. Everything
//! created (namespace, veth, processes, sysctl) is undone by drop guards, also on error.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::util;

const HOST_ADDR: &str = "10.254.254.1";
const NS_ADDR: &str = "10.254.254.2";
/// iperf3 server ports (not the default 5201, which someone else may be using).
const VETH_PORT: u16 = 25201;
const LOOPBACK_PORT: u16 = 25202;
const AGENT_LISTEN: &str = "127.0.0.1:19977";
/// Remote ports of the synthetic flows: one flow per port.
const FLOW_PORTS: std::ops::Range<u16> = 20000..30000;
const PROGRAMS: [&str; 5] = [
    "count_egress",
    "count_ingress",
    "record_owner",
    "mark_released",
    "mark_passive",
];
const BPF_STATS: &str = "kernel.bpf_stats_enabled";

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Interleaved runs of each workload without and with the agent; medians are reported.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: u32,
    /// Duration of each iperf3 run, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Window over which the agent's CPU use is measured with 10,000 live flows, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    cpu_window_secs: u64,
    /// Smoke test: 1 repetition, 2 s runs and a 10 s CPU window (overrides the above).
    #[arg(long)]
    quick: bool,
}

/// Runs the whole benchmark and writes target/bench/report.md.
pub fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let (repetitions, seconds, cpu_window) = if args.quick {
        (1, 2, 10)
    } else {
        (args.repetitions, args.seconds, args.cpu_window_secs)
    };
    util::cargo(root, &["build", "--release", "--package", "bitsecure"])?;
    let out = root.join("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = out.join("agent.toml");
    fs::write(
        &config,
        format!("[agent]\nlisten = \"{AGENT_LISTEN}\"\n[kernel]\npin_path = \"\"\n"),
    )
    .context("cannot write the agent config")?;
    let agent_bin = root.join("target/release/bitsecure");
    let start_agent = || Agent::start(&agent_bin, &config, &out.join("agent.log"));

    let mut lab = Lab::create(&out)?;
    lab.start_iperf_servers(&out)?;
    let mut samples = vec![(Vec::new(), Vec::new()); WORKLOADS.len()];
    let mut runs: HashMap<&str, (u64, u64)> = HashMap::new();
    for rep in 1..=repetitions {
        // Alternate which half goes first (ABBA), so a drift of the shared machine during the
        // run does not always favour the same side.
        for with_agent in if rep % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        } {
            let side = if with_agent { "with" } else { "without" };
            progress(&format!("repetition {rep}/{repetitions} {side} the agent"));
            let agent = with_agent.then(&start_agent).transpose()?;
            for (workload, (without, with)) in WORKLOADS.iter().zip(&mut samples) {
                let rate = workload.measure(seconds)?;
                if with_agent {
                    with.push(rate)
                } else {
                    without.push(rate)
                }
            }
            if let Some(agent) = agent {
                agent.stop()?;
            }
        }
    }

    // BPF stats cost two clock reads per program run, so they are on only for this separate
    // measurement, never while throughput is compared.
    progress("program run times (BPF stats on)");
    let agent = start_agent()?;
    util::output(command("sysctl", &["-w", &format!("{BPF_STATS}=1")]))?;
    let before = program_stats(agent.pid)?;
    for workload in WORKLOADS {
        workload.measure(seconds)?;
    }
    let after = program_stats(agent.pid)?;
    util::output(command("sysctl", &["-w", &format!("{BPF_STATS}=0")]))?;
    for (id, (name, time, count)) in after {
        let (_, time0, count0) = before.get(&id).copied().unwrap_or_default();
        let total = runs.entry(name).or_default();
        *total = (
            total.0 + time.saturating_sub(time0),
            total.1 + count.saturating_sub(count0),
        );
    }
    agent.stop()?;

    let mut rows: Vec<Row> = WORKLOADS.iter().zip(&samples).map(Workload::row).collect();
    rows.extend(PROGRAMS.iter().map(|name| {
        let (time, count) = runs.get(name).copied().unwrap_or_default();
        let average = (count > 0).then(|| time as f64 / count as f64);
        Row::limit(&format!("{name} (ns/run, {count} runs)"), average, 100.0)
    }));
    rows.extend(measure_agent_at_scale(&start_agent, cpu_window)?);
    drop(lab);
    write_report(&rows, &out, repetitions, seconds, cpu_window)
}

fn progress(message: &str) {
    println!("[bench] {message}");
}

/// The namespace, veth pair, iperf3 servers and sysctl change; all undone on drop.
struct Lab {
    netns: String,
    veth: String,
    servers: Vec<Child>,
    /// `kernel.bpf_stats_enabled` before we set it, to restore.
    bpf_stats: Option<String>,
    /// The same value on disk, for the next run if this one is killed (Ctrl-C skips drops).
    saved_bpf_stats: PathBuf,
}

impl Lab {
    fn create(out: &Path) -> anyhow::Result<Self> {
        recover_interrupted_run(out);
        let used = util::output(command(
            "ip",
            &["-o", "addr", "show", "to", "10.254.254.0/24"],
        ))?;
        if !used.trim().is_empty() {
            bail!("10.254.254.0/24 is already in use (another bench running?):\n{used}");
        }
        let id = std::process::id();
        let mut lab = Self {
            netns: format!("bsbench{id}"),
            veth: format!("bsb{id}a"),
            servers: Vec::new(),
            bpf_stats: None,
            saved_bpf_stats: out.join("bpf_stats_enabled.saved"),
        };
        let (ns, host, peer) = (lab.netns.clone(), lab.veth.clone(), format!("bsb{id}b"));
        progress(&format!("creating namespace {ns}, veth {host} <-> {peer}"));
        for args in [
            vec!["netns", "add", &ns],
            vec!["link", "add", &host, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &ns],
            vec!["addr", "add", "10.254.254.1/24", "dev", &host],
            vec!["link", "set", &host, "up"],
            vec!["-n", &ns, "addr", "add", "10.254.254.2/24", "dev", &peer],
            vec!["-n", &ns, "link", "set", &peer, "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ] {
            util::status(command("ip", &args))?;
        }
        let previous = util::output(command("sysctl", &["-n", BPF_STATS]))?;
        fs::write(&lab.saved_bpf_stats, previous.trim()).context("cannot save the sysctl")?;
        lab.bpf_stats = Some(previous.trim().to_owned());
        // Off while throughput is measured; on only around the program run-time measurement.
        util::output(command("sysctl", &["-w", &format!("{BPF_STATS}=0")]))?;
        Ok(lab)
    }

    /// One iperf3 server inside the namespace (veth) and one on loopback in the root namespace.
    fn start_iperf_servers(&mut self, out: &Path) -> anyhow::Result<()> {
        let in_ns = ["ip", "netns", "exec", &self.netns, "iperf3", "-B", NS_ADDR];
        let servers: [(&str, &[&str], u16); 2] = [
            ("veth", &in_ns, VETH_PORT),
            ("loopback", &["iperf3", "-B", "127.0.0.1"], LOOPBACK_PORT),
        ];
        for (name, argv, port) in servers {
            let mut iperf = command(argv[0], &argv[1..]);
            iperf.args(["-s", "--forceflush", "-p", &port.to_string()]);
            let log = out.join(format!("iperf3-{name}.log"));
            self.servers.push(spawn_logged(iperf, &log)?);
            let child = self.servers.last_mut().context("no server")?;
            wait_for_log(child, &log, "Server listening", Duration::from_secs(10))?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(previous) = self.bpf_stats.take() {
            let _ = util::try_output(command(
                "sysctl",
                &["-w", &format!("{BPF_STATS}={previous}")],
            ));
            let _ = fs::remove_file(&self.saved_bpf_stats);
        }
        // Deleting the namespace destroys the veth pair with it; the explicit delete covers a
        // failure between creating the pair and moving one end into the namespace.
        let _ = util::try_output(command("ip", &["link", "del", &self.veth]));
        let _ = util::try_output(command("ip", &["netns", "del", &self.netns]));
        progress(&format!("removed namespace {}", self.netns));
    }
}

/// Undoes what a killed run left: its namespace (and so its veth pair) and the sysctl.
fn recover_interrupted_run(out: &Path) {
    let namespaces = util::try_output(command("ip", &["netns", "list"])).unwrap_or_default();
    for name in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name.strip_prefix("bsbench") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            progress(&format!("removing {name}, left by an interrupted run"));
            let _ = util::try_output(command("ip", &["netns", "del", name]));
        }
    }
    let saved = out.join("bpf_stats_enabled.saved");
    if let Ok(previous) = fs::read_to_string(&saved) {
        let _ = util::try_output(command(
            "sysctl",
            &["-w", &format!("{BPF_STATS}={previous}")],
        ));
        let _ = fs::remove_file(saved);
    }
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    command
}

/// Spawns `command` with stdout and stderr written to `log`.
fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    command
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))
}

/// Waits until `log` contains `needle`; fails with the log's tail on timeout or early exit.
fn wait_for_log(
    child: &mut Child,
    log: &Path,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        let exited = child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            let why = exited.map_or(format!("not within {timeout:?}"), |s| {
                format!("exited ({s})")
            });
            bail!(
                "no {needle:?} in {}: {why}; its tail:\n{tail}",
                log.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running agent; stopped with SIGTERM on drop if not stopped explicitly.
struct Agent {
    child: Child,
    pid: u32,
}

impl Agent {
    fn start(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut run = Command::new(binary);
        run.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null());
        let child = spawn_logged(run, log)?;
        let mut agent = Self {
            pid: child.id(),
            child,
        };
        wait_for_log(
            &mut agent.child,
            log,
            "attached to cgroup",
            Duration::from_secs(30),
        )
        .context("the agent did not attach")?;
        progress(&format!("agent {} attached", agent.pid));
        Ok(agent)
    }

    /// Stops the agent; fails unless it exited cleanly.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("the agent exited with {status}; see target/bench/agent.log");
        }
        Ok(())
    }

    /// SIGTERM, then up to 10 s to exit before SIGKILL. Returns at once if already reaped.
    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = util::try_output(command("kill", &["-TERM", &self.pid.to_string()]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// An iperf3 client run against one of our servers.
struct Workload {
    name: &'static str,
    server: &'static str,
    port: u16,
    /// Small-packet UDP (packets/s received) instead of bulk TCP (bits/s received).
    udp: bool,
    max_loss_percent: f64,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "TCP bulk, loopback (Gbit/s)",
        server: "127.0.0.1",
        port: LOOPBACK_PORT,
        udp: false,
        max_loss_percent: 2.0,
    },
    Workload {
        name: "TCP bulk, veth (Gbit/s)",
        server: NS_ADDR,
        port: VETH_PORT,
        udp: false,
        max_loss_percent: 2.0,
    },
    Workload {
        name: "UDP 64 B, veth (kpackets/s)",
        server: NS_ADDR,
        port: VETH_PORT,
        udp: true,
        max_loss_percent: 5.0,
    },
];

impl Workload {
    /// One iperf3 run; returns Gbit/s (TCP) or thousands of packets/s (UDP), receiver side.
    fn measure(&self, seconds: u32) -> anyhow::Result<f64> {
        // `timeout`: a wedged server must not hang the bench.
        let limit = (seconds + 30).to_string();
        let (port, secs) = (self.port.to_string(), seconds.to_string());
        let mut iperf = command("timeout", &[&limit, "iperf3", "-J", "-t", &secs]);
        iperf.args(["-c", self.server, "-p", &port]);
        if self.udp {
            iperf.args(["-u", "-l", "64", "-b", "0"]);
        }
        let output = iperf.output().context("cannot start iperf3")?;
        let json: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("{iperf:?} printed no JSON ({})", output.status))?;
        if let Some(error) = json.get("error") {
            bail!("{iperf:?} failed: {error}");
        }
        let sum = json.pointer("/end/sum_received");
        let number = |key: &str| sum.and_then(|sum| sum.get(key)?.as_f64());
        let value = if self.udp {
            // Received = datagrams the server counted minus those it saw missing.
            let received = number("packets")
                .zip(number("lost_packets"))
                .map(|(p, l)| p - l);
            received.zip(number("seconds")).map(|(n, s)| n / s / 1e3)
        } else {
            number("bits_per_second").map(|bits| bits / 1e9)
        };
        let value = value.with_context(|| format!("no end.sum_received in {iperf:?}'s JSON"))?;
        progress(&format!("  {}: {value:.3}", self.name));
        Ok(value)
    }

    /// The report row for the samples `(without, with)`.
    fn row((workload, (without, with)): (&Workload, &(Vec<f64>, Vec<f64>))) -> Row {
        let (median_without, median_with) = (median(without), median(with));
        let loss = (1.0 - median_with / median_without) * 100.0;
        Row {
            metric: workload.name.to_owned(),
            without: spread(without),
            with: spread(with),
            ratio: format!("{:.3} ({loss:.1}% loss)", median_with / median_without),
            target: format!("<= {}% loss", workload.max_loss_percent),
            pass: Some(loss <= workload.max_loss_percent),
        }
    }
}

/// Our programs' `id -> (name, run_time_ns, run_cnt)`, from `bpftool prog show`.
fn program_stats(pid: u32) -> anyhow::Result<HashMap<u64, (&'static str, u64, u64)>> {
    let text = util::output(command("bpftool", &["prog", "show", "--json"]))?;
    let json: Value = serde_json::from_str(&text).context("bpftool printed invalid JSON")?;
    let mut stats = HashMap::new();
    for prog in json.as_array().context("bpftool did not print a list")? {
        let name = prog.get("name").and_then(Value::as_str).unwrap_or_default();
        // bpftool shows names truncated to 15 characters.
        let Some(ours) = PROGRAMS
            .iter()
            .find(|full| !name.is_empty() && full.starts_with(name))
        else {
            continue;
        };
        // Someone else's agent (e.g. a test) may have programs of the same names loaded.
        let pids = prog.get("pids").and_then(Value::as_array);
        let pid_matches = |p: &Value| p.get("pid").and_then(Value::as_u64) == Some(pid.into());
        if pids.is_none_or(|pids| pids.iter().any(pid_matches)) {
            let number = |key: &str| prog.get(key).and_then(Value::as_u64).unwrap_or(0);
            stats.insert(
                number("id"),
                (*ours, number("run_time_ns"), number("run_cnt")),
            );
        }
    }
    Ok(stats)
}

/// Starts the agent, keeps 10,000 UDP flows live, and reads its CPU time and memory.
fn measure_agent_at_scale(
    start_agent: &dyn Fn() -> anyhow::Result<Agent>,
    window: u64,
) -> anyhow::Result<Vec<Row>> {
    progress("with the agent and 10,000 live flows");
    let agent = start_agent()?;
    // One socket, many remote ports: each port is a flow of its own in the agent's key.
    let socket = UdpSocket::bind((HOST_ADDR, 0)).context("cannot bind a UDP socket")?;
    let wanted = FLOW_PORTS.len() as f64;
    let mut flows = 0.0;
    // The agent reads the kernel map every poll interval (5 s): give it a few.
    for _ in 0..60 {
        send_round(&socket);
        flows = scrape_flow_entries()?;
        if flows >= wanted {
            break;
        }
    }
    ensure!(
        flows >= wanted,
        "the agent reports {flows} flows, expected {wanted}"
    );
    progress(&format!(
        "agent sees {flows} flows; measuring its CPU for {window} s"
    ));
    let ticks_per_second = util::try_output(command("getconf", &["CLK_TCK"]))
        .and_then(|text| text.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let (ticks, started) = (cpu_ticks(agent.pid)?, Instant::now());
    while started.elapsed().as_secs() < window {
        send_round(&socket);
    }
    let seconds = (cpu_ticks(agent.pid)? - ticks) as f64 / ticks_per_second;
    let cpu = seconds / started.elapsed().as_secs_f64() * 100.0;
    let flows = scrape_flow_entries()?;
    let megabytes = |key| status_kib(agent.pid, key).map(|kib| kib * 1024.0 / 1e6);
    let (peak, current) = (megabytes("VmHWM:")?, megabytes("VmRSS:")?);
    agent.stop()?;
    Ok(vec![
        Row::limit("Agent CPU, 10k flows (% of a core)", Some(cpu), 1.0),
        Row::limit("Agent peak RSS, VmHWM (MB)", Some(peak), 50.0),
        Row::limit("Agent RSS at the end, VmRSS (MB)", Some(current), 50.0),
        Row {
            metric: "Flows in the agent's map at the end".into(),
            with: flows.to_string(),
            target: format!(">= {wanted}"),
            pass: Some(flows >= wanted),
            ..Row::default()
        },
    ])
}

/// Sends one 64-byte datagram to every flow port, then sleeps out the rest of a second.
fn send_round(socket: &UdpSocket) {
    let round = Instant::now();
    for port in FLOW_PORTS {
        // Nothing listens there: the datagram only has to leave, so errors don't matter.
        let _ = socket.send_to(&[0; 64], (NS_ADDR, port));
    }
    thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
}

/// `bitsecure_map_entries{map="flows"}` from the agent's /metrics.
fn scrape_flow_entries() -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect(AGENT_LISTEN).context("cannot reach the agent")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("cannot read /metrics")?;
    let value = response
        .lines()
        .find_map(|line| line.strip_prefix("bitsecure_map_entries{map=\"flows\"} "))
        .context("/metrics has no bitsecure_map_entries{map=\"flows\"}")?;
    value
        .trim()
        .parse()
        .context("bad bitsecure_map_entries value")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (which may contain spaces), fields 3, 4, ...: utime is field 14.
    let (_, rest) = stat.rsplit_once(')').context("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| -> anyhow::Result<u64> {
        Ok(fields.get(index).context("short /proc/PID/stat")?.parse()?)
    };
    Ok(field(14 - 3)? + field(15 - 3)?)
}

/// A `kB` value from /proc/PID/status, e.g. `VmHWM:`.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|line| line.strip_prefix(key));
    let kib = line.with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    let kib = kib.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("bad {key} value {kib:?}"))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// "median (min-max)", or just the value for a single sample.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        1 => format!("{:.3}", median(values)),
        _ => format!("{:.3} ({min:.2}-{max:.2})", median(values)),
    }
}

/// One line of the report; `pass` is `None` when the value could not be measured.
#[derive(Default)]
struct Row {
    metric: String,
    without: String,
    with: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

impl Row {
    /// A with-agent value that must not exceed `max`.
    fn limit(metric: &str, value: Option<f64>, max: f64) -> Self {
        Self {
            metric: metric.to_owned(),
            with: value.map_or("n/a".into(), |value| format!("{value:.2}")),
            target: format!("<= {max}"),
            pass: value.map(|value| value <= max),
            ..Self::default()
        }
    }
}

/// Prints the report and writes it to `out/report.md`; fails if a value is missing.
fn write_report(rows: &[Row], out: &Path, reps: u32, secs: u32, window: u64) -> anyhow::Result<()> {
    let report = format!(
        "# BitSecure overhead benchmark\n\n{}\nThroughput and packet rate: medians (min-max) of \
         {reps} interleaved runs (alternating which side goes first) without / with the agent, {secs} s each. Program run times: \
         averages over one extra with-agent run of each workload, the only time kernel.bpf_stats_enabled=1 (it adds two clock reads per run, included in these figures). CPU and memory: agent \
         with 10,000 live flows, CPU over {window} s, MB = 10^6 bytes.\n",
        table(rows)
    );
    println!("\n{report}");
    let path = out.join("report.md");
    fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    progress(&format!("report written to {}", path.display()));
    let missing = rows.iter().filter(|row| row.pass.is_none()).count();
    if missing > 0 {
        bail!("{missing} measurement(s) could not be made (n/a in the report)");
    }
    Ok(())
}

/// A Markdown table, padded so that it reads well as plain text too.
fn table(rows: &[Row]) -> String {
    let header = [
        "Metric",
        "Without",
        "With",
        "With/without",
        "Target",
        "Result",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|row| {
            let result = match row.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "MISSING",
            };
            [
                &row.metric,
                &row.without,
                &row.with,
                &row.ratio,
                &row.target,
                result,
            ]
            .map(|cell| if cell.is_empty() { "-" } else { cell })
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            cells
                .iter()
                .map(|row| row[column].len())
                .fold(header[column].len(), usize::max)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut line = String::from("|");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} |");
        }
        line + "\n"
    };
    let rules: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let mut text = line(&header) + &line(&rules.iter().map(String::as_str).collect::<Vec<_>>());
    for row in &cells {
        text += &line(row);
    }
    text
}
