//! What the benchmark measures: iperf3 workloads (throughput and packet rate), our programs'
//! run time from BPF statistics, and the agent's CPU and memory with 10,000 live flows.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use bitsecure_test::process::run;
use serde_json::Value;

use crate::{
    AGENT_LISTEN, BPF_STATS, FLOW_PORTS, HOST_ADDR, LOOPBACK_PORT, NS_ADDR, PROGRAMS, VETH_PORT,
    agent::Agent,
    command, progress,
    report::{Row, median, spread},
};

/// An iperf3 client run against one of our servers.
pub struct Workload {
    name: &'static str,
    server: &'static str,
    port: u16,
    /// Small-packet UDP (packets/s received) instead of bulk TCP (bits/s received).
    udp: bool,
    max_loss_percent: f64,
}

pub const WORKLOADS: [Workload; 3] = [
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
    pub fn measure(&self, seconds: u32) -> anyhow::Result<f64> {
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
    pub fn row((workload, (without, with)): (&Workload, &(Vec<f64>, Vec<f64>))) -> Row {
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

/// Runs every workload once with BPF stats on and adds each program's run time and run count
/// (of `agent`'s programs) to `runs`.
pub fn program_runs(
    agent: &Agent,
    seconds: u32,
    runs: &mut HashMap<&'static str, (u64, u64)>,
) -> anyhow::Result<()> {
    run("sysctl", &["-w", &format!("{BPF_STATS}=1")])?;
    let measured = (|| {
        let before = program_stats(agent.pid)?;
        for workload in WORKLOADS {
            workload.measure(seconds)?;
        }
        anyhow::Ok((before, program_stats(agent.pid)?))
    })();
    run("sysctl", &["-w", &format!("{BPF_STATS}=0")])?;
    let (before, after) = measured?;
    for (id, (name, time, count)) in after {
        let (_, time0, count0) = before.get(&id).copied().unwrap_or_default();
        let total = runs.entry(name).or_default();
        total.0 += time.saturating_sub(time0);
        total.1 += count.saturating_sub(count0);
    }
    Ok(())
}

/// Our programs' `id -> (name, run_time_ns, run_cnt)`, from `bpftool prog show`.
pub fn program_stats(pid: u32) -> anyhow::Result<HashMap<u64, (&'static str, u64, u64)>> {
    let text = run("bpftool", &["prog", "show", "--json"])?;
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
pub fn measure_agent_at_scale(
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
    let ticks_per_second = run("getconf", &["CLK_TCK"])
        .ok()
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
            metric: "Flows in the agent's maps at the end".into(),
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

/// Flows in the agent's kernel maps, from its /metrics: `bitsecure_map_entries` of the flow
/// map and (where there is one) the peer map, which holds an unconnected socket's remotes.
fn scrape_flow_entries() -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect(AGENT_LISTEN).context("cannot reach the agent")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("cannot read /metrics")?;
    let values: Vec<f64> = response
        .lines()
        .filter_map(|line| {
            ["flows", "peers"].iter().find_map(|map| {
                line.strip_prefix(&format!("bitsecure_map_entries{{map=\"{map}\"}} "))
            })
        })
        .map(|value| {
            value
                .trim()
                .parse()
                .context("bad bitsecure_map_entries value")
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        !values.is_empty(),
        "/metrics has no bitsecure_map_entries{{map=\"flows\"}}"
    );
    Ok(values.iter().sum())
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
