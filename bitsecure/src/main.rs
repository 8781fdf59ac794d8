//! `bitsecure`: the agent and its command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use log::error;

use bitsecure::{
    agent,
    commands::{self, AcceptFilter},
    config::{self, Config},
};

/// Is this dedicated machine doing only what it should on the network?
///
/// BitSecure counts every byte in the kernel (eBPF), per process and remote endpoint, exports
/// the counts to Prometheus, learns a baseline of normal traffic and shows every departure.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the eBPF programs, serve /metrics, compare with the baseline
    /// (needs root).
    ///
    /// Logs go to stderr; set RUST_LOG=debug for more. SIGHUP reloads the baseline; SIGINT
    /// or SIGTERM stop cleanly, detaching everything.
    Run(ConfigArg),
    /// Check a config file and print the effective configuration.
    Config {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the embedded default config file (with comments) and exit.
        #[arg(long, conflicts_with = "config")]
        default: bool,
    },
    /// List the traffic the running agent saw that no baseline rule expects.
    Unexpected {
        #[command(flatten)]
        agent: AgentArg,
        /// Print JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Record, review and extend the baseline of normal traffic.
    #[command(subcommand)]
    Baseline(BaselineCommand),
}

#[derive(Subcommand)]
enum BaselineCommand {
    /// Learn normal traffic for a while and write a baseline file (needs root).
    Record {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to record, e.g. 30m, 2h, 90s. Cover several cycles of your miner's job
        /// cadence so it can be detected.
        #[arg(long, short, value_parser = agent::parse_duration)]
        duration: std::time::Duration,
        /// Where to write; default: baseline.path of the config. An existing file is kept as
        /// FILE.bak.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Show the rules of a baseline file.
    Show(FileArg),
    /// Show what changed between two baseline files.
    Diff { old: PathBuf, new: PathBuf },
    /// Add unexpected traffic to the baseline (one entry, a filtered set, or all).
    ///
    /// Edits keep the file's comments and layout; the previous version is kept as FILE.bak.
    /// The running agent picks the change up by itself.
    Accept {
        #[command(flatten)]
        file: FileArg,
        #[command(flatten)]
        agent: AgentArg,
        /// Accept everything currently unexpected.
        #[arg(long, conflicts_with_all = ["process", "remote", "port", "protocol"])]
        all: bool,
        /// Only entries of this process.
        #[arg(long)]
        process: Option<String>,
        /// Only entries to this remote address.
        #[arg(long)]
        remote: Option<String>,
        /// Only entries with this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only entries with this protocol (tcp, udp, icmp, ...).
        #[arg(long)]
        protocol: Option<String>,
        /// A note stored with the new rules (who accepted them and why).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// TOML config file; without it the embedded default is used (`bitsecure config --default`).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct FileArg {
    /// The baseline file; default: baseline.path of the (default) config.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Config whose baseline.path to use.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct AgentArg {
    /// Address of the running agent; default: agent.listen of the (default) config.
    #[arg(long)]
    agent: Option<String>,
    /// Config whose agent.listen to use.
    #[arg(long = "agent-config")]
    agent_config: Option<PathBuf>,
}

impl FileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.file {
            Some(file) => Ok(file.clone()),
            None => Ok(Config::load(self.config.as_deref())?.baseline.path),
        }
    }
}

impl AgentArg {
    fn address(&self) -> anyhow::Result<String> {
        match &self.agent {
            Some(agent) => Ok(agent.clone()),
            None => Ok(Config::load(self.agent_config.as_deref())?
                .agent
                .listen
                .to_string()),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(config) => agent::run(Config::load(config.config.as_deref())?),
        Command::Config { config, default } => {
            if default {
                print!("{}", config::DEFAULT_CONFIG);
            } else {
                println!("{:#?}", Config::load(config.config.as_deref())?);
            }
            Ok(())
        }
        Command::Unexpected { agent, json } => commands::unexpected(&agent.address()?, json),
        Command::Baseline(BaselineCommand::Record {
            config,
            duration,
            output,
        }) => {
            let config = Config::load(config.config.as_deref())?;
            let output = output.unwrap_or_else(|| config.baseline.path.clone());
            agent::record(config, duration, &output)
        }
        Command::Baseline(BaselineCommand::Show(file)) => commands::show(&file.path()?),
        Command::Baseline(BaselineCommand::Diff { old, new }) => commands::diff(&old, &new),
        Command::Baseline(BaselineCommand::Accept {
            file,
            agent,
            all,
            process,
            remote,
            port,
            protocol,
            note,
        }) => {
            let filter = AcceptFilter {
                all,
                process,
                remote,
                port,
                protocol,
            };
            let added =
                commands::accept(&agent.address()?, &file.path()?, &filter, note.as_deref())?;
            eprintln!("{added} rules added");
            Ok(())
        }
    }
}
