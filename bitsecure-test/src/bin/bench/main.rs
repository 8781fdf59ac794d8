//! `bitsecure-bench`: the agent's overhead, measured for real (`cargo xtask bench` builds the
//! release binaries and runs it as root).
//!
//! Builds a network namespace joined to the root namespace by a veth pair, then runs iperf3
//! workloads without and with the agent, interleaved, and reports medians. While the agent is
//! attached, BPF run-time statistics give each program's average cost. Finally the agent runs
//! with 10,000 live UDP flows while its CPU time and memory are read from /proc. Everything
//! created (namespace, veth, processes, sysctl) is undone by drop guards, also on error.

mod agent;
mod measure;
mod report;

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bitsecure_test::{
    lab::{NetLab, Subnet},
    process::run,
};
use clap::Parser;

use crate::{
    agent::{Agent, spawn_logged, wait_for_log},
    measure::{WORKLOADS, Workload, measure_agent_at_scale, program_runs},
    report::{Row, write_report},
};

const HOST_ADDR: &str = "10.254.254.1";
const NS_ADDR: &str = "10.254.254.2";
/// iperf3 server ports (not the default 5201, which someone else may be using).
const VETH_PORT: u16 = 25201;
const LOOPBACK_PORT: u16 = 25202;
const AGENT_LISTEN: &str = "127.0.0.1:19977";
/// Remote ports of the synthetic flows: one flow per port.
const FLOW_PORTS: std::ops::Range<u16> = 20000..30000;
/// The agent's programs, by the names the agent gives them.
const PROGRAMS: [&str; 7] = {
    let [egress, ingress, create, release, sock_ops] = bitsecure::kernel::programs::PROGRAM_NAMES;
    use bitsecure::kernel::interfaces::{INTERFACE_EGRESS, INTERFACE_INGRESS};
    [
        egress,
        ingress,
        create,
        release,
        sock_ops,
        INTERFACE_EGRESS,
        INTERFACE_INGRESS,
    ]
};
const BPF_STATS: &str = "kernel.bpf_stats_enabled";
/// Prefix of the benchmark's namespace; the rest of its name is the pid of the run.
const NETNS_PREFIX: &str = "bsbench";

/// The options are those of `cargo xtask bench`, which passes them on with the two paths.
#[derive(Parser)]
#[command(
    name = "bitsecure-bench",
    version,
    about = "Measures the BitSecure agent's overhead (as root); `cargo xtask bench` runs it"
)]
struct Args {
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
    /// The agent binary to measure (a release build).
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Where the config, logs and report.md go (`cargo xtask bench`: target/bench).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// An earlier build of the agent: its programs' run times are measured alternately with
    /// those of --agent, in the same run, and reported side by side.
    #[arg(long, value_name = "PATH")]
    compare_agent: Option<PathBuf>,
}

fn main() -> ExitCode {
    match bench(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bitsecure-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole benchmark and writes `OUT/report.md`.
fn bench(args: &Args) -> anyhow::Result<()> {
    let (repetitions, seconds, cpu_window) = if args.quick {
        (1, 2, 10)
    } else {
        (args.repetitions, args.seconds, args.cpu_window_secs)
    };
    let out = args.out.clone();
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = out.join("agent.toml");
    fs::write(
        &config,
        format!("[agent]\nlisten = \"{AGENT_LISTEN}\"\n[kernel]\npin_path = \"\"\n"),
    )
    .context("cannot write the agent config")?;
    let agent_bin = args.agent.clone();
    let start_agent = || Agent::start(&agent_bin, &config, &out.join("agent.log"));

    let mut lab = Lab::create(&out)?;
    lab.start_iperf_servers(&out)?;
    let mut samples = vec![(Vec::new(), Vec::new()); WORKLOADS.len()];
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
    // measurement, never while throughput is compared. With an earlier build to compare, the
    // two builds take turns (ABBA), as the throughput runs do.
    let builds: Vec<&Path> = std::iter::once(agent_bin.as_path())
        .chain(args.compare_agent.as_deref())
        .collect();
    let mut runs: Vec<HashMap<&str, (u64, u64)>> = vec![HashMap::new(); builds.len()];
    let stat_rounds = if builds.len() > 1 { repetitions } else { 1 };
    for round in 1..=stat_rounds {
        let mut order: Vec<usize> = (0..builds.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for build in order {
            progress(&format!(
                "program run times (BPF stats on), round {round}/{stat_rounds}, {}",
                builds[build].display()
            ));
            let agent = Agent::start(builds[build], &config, &out.join("agent.log"))?;
            program_runs(&agent, seconds, &mut runs[build])?;
            agent.stop()?;
        }
    }

    let mut rows: Vec<Row> = WORKLOADS.iter().zip(&samples).map(Workload::row).collect();
    let average = |runs: &HashMap<&str, (u64, u64)>, name: &str| {
        let (time, count) = runs.get(name).copied().unwrap_or_default();
        ((count > 0).then(|| time as f64 / count as f64), count)
    };
    rows.extend(PROGRAMS.iter().map(|name| {
        let (value, count) = average(&runs[0], name);
        Row::limit(&format!("{name} (ns/run, {count} runs)"), value, 100.0)
    }));
    if let Some(earlier) = runs.get(1) {
        rows.extend(
            PROGRAMS
                .iter()
                .map(|name| Row::versus(name, average(earlier, name).0, average(&runs[0], name).0)),
        );
    }
    rows.extend(measure_agent_at_scale(&start_agent, cpu_window)?);
    drop(lab);
    write_report(&rows, &out, repetitions, seconds, cpu_window)
}

fn progress(message: &str) {
    println!("[bench] {message}");
}

/// The namespace, veth pair, iperf3 servers and sysctl change; all undone on drop.
struct Lab {
    net: Option<NetLab>,
    servers: Vec<Child>,
    /// `kernel.bpf_stats_enabled` before we set it, to restore.
    bpf_stats: Option<String>,
    /// The same value on disk, for the next run if this one is killed (Ctrl-C skips drops).
    saved_bpf_stats: PathBuf,
}

impl Lab {
    fn create(out: &Path) -> anyhow::Result<Self> {
        recover_interrupted_run(out);
        let used = run("ip", &["-o", "addr", "show", "to", "10.254.254.0/24"])?;
        if !used.trim().is_empty() {
            bail!("10.254.254.0/24 is already in use (another bench running?):\n{used}");
        }
        let id = std::process::id();
        let (ns, host, peer) = (
            format!("{NETNS_PREFIX}{id}"),
            format!("bsb{id}a"),
            format!("bsb{id}b"),
        );
        let mut lab = Self {
            net: None,
            servers: Vec::new(),
            bpf_stats: None,
            saved_bpf_stats: out.join("bpf_stats_enabled.saved"),
        };
        progress(&format!("creating namespace {ns}, veth {host} <-> {peer}"));
        let subnet = Subnet {
            host: IpAddr::V4(HOST_ADDR.parse::<Ipv4Addr>()?),
            peer: IpAddr::V4(NS_ADDR.parse::<Ipv4Addr>()?),
            prefix_len: 24,
        };
        lab.net = Some(NetLab::create(&ns, &host, &peer, &[subnet])?);
        let previous = run("sysctl", &["-n", BPF_STATS])?;
        fs::write(&lab.saved_bpf_stats, previous.trim()).context("cannot save the sysctl")?;
        lab.bpf_stats = Some(previous.trim().to_owned());
        // Off while throughput is measured; on only around the program run-time measurement.
        run("sysctl", &["-w", &format!("{BPF_STATS}=0")])?;
        Ok(lab)
    }

    fn net(&self) -> anyhow::Result<&NetLab> {
        self.net.as_ref().context("the namespace is gone")
    }

    /// One iperf3 server inside the namespace (veth) and one on loopback in the root namespace.
    fn start_iperf_servers(&mut self, out: &Path) -> anyhow::Result<()> {
        let namespace = self.net()?.namespace().to_owned();
        let in_ns = ["ip", "netns", "exec", &namespace, "iperf3", "-B", NS_ADDR];
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
            let _ = run("sysctl", &["-w", &format!("{BPF_STATS}={previous}")]);
            let _ = fs::remove_file(&self.saved_bpf_stats);
        }
        if let Some(net) = self.net.take() {
            let namespace = net.namespace().to_owned();
            drop(net);
            progress(&format!("removed namespace {namespace}"));
        }
    }
}

/// Undoes what a killed run left: its namespace (and so its veth pair) and the sysctl.
fn recover_interrupted_run(out: &Path) {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    for name in NetLab::remove_stale(NETNS_PREFIX, |pid| !alive(pid)) {
        progress(&format!("removed {name}, left by an interrupted run"));
    }
    let saved = out.join("bpf_stats_enabled.saved");
    if let Ok(previous) = fs::read_to_string(&saved) {
        let _ = run("sysctl", &["-w", &format!("{BPF_STATS}={previous}")]);
        let _ = fs::remove_file(saved);
    }
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    command
}
