//! `bitsecure-rig`: a simulated crypto-mining rig on this machine, for the demo (`cargo xtask
//! demo`) and its end-to-end test. `demo` builds the whole scene — remote sites in network
//! namespaces, the rig's programs in a cgroup, the agent and a real Prometheus — and plays a
//! scenario; the other subcommands are the programs of that scene (see [`actors`]).

mod actors;
mod day;
mod demo;
mod lab;
mod prometheus;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bitsecure-rig",
    version,
    about = "A simulated mining rig: the BitSecure demo and the programs it runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the rig, learn its baseline with the agent, inject anomalies, and show what
    /// Prometheus (with the bundled alert rules) and the dashboard queries say. Needs root.
    Demo(demo::DemoArgs),
    /// A quiet day: 10 minutes of learning, then a time-compressed day of rare-but-normal
    /// life (reconnects with lookups, hourly jobs, a restart, an NTP burst) that must page
    /// nobody, then two attacks that must. Needs root.
    Day(day::DayArgs),
    /// Stratum-like pool: pushes a job to every subscribed miner each interval.
    Pool(actors::PoolArgs),
    /// Stratum-like miner: subscribes and submits a share per job.
    Miner(actors::MinerArgs),
    /// HTTP endpoint accepting the reporter's POSTs.
    Monitor(actors::MonitorArgs),
    /// Posts a stats document every interval (or `--count` times).
    Reporter(actors::ReporterArgs),
    /// Answers every UDP datagram (DNS- or NTP-like server).
    UdpResponder(actors::UdpResponderArgs),
    /// Answers DNS A questions from a zone file (read again for every query).
    DnsServer(actors::DnsServerArgs),
    /// Sends a UDP request every interval and waits briefly for the answer.
    UdpTicker(actors::UdpTickerArgs),
    /// Sends DNS queries for random names under a domain (a DNS tunnel).
    DnsBurst(actors::DnsBurstArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Day(args) => day::run(args),
        Command::Pool(args) => actors::pool(args),
        Command::Miner(args) => actors::miner(args),
        Command::Monitor(args) => actors::monitor(args),
        Command::Reporter(args) => actors::reporter(args),
        Command::UdpResponder(args) => actors::udp_responder(args),
        Command::DnsServer(args) => actors::dns_server(args),
        Command::UdpTicker(args) => actors::udp_ticker(args),
        Command::DnsBurst(args) => actors::dns_burst(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bitsecure-rig: {error:#}");
            ExitCode::FAILURE
        }
    }
}
