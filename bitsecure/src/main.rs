//! `bitsecure`: the agent and its command line.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use log::{error, info};

use bitsecure::{
    agent,
    cli::{
        check,
        commands::{self, AcceptFilter},
        rules, top,
    },
    config::{self, Config},
    human,
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

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the eBPF programs, serve /metrics, compare with the baseline
    /// (needs root).
    ///
    /// Logs go to stderr; set RUST_LOG=debug for more. SIGHUP reloads the baseline; SIGINT
    /// or SIGTERM stop cleanly. With kernel.pin_path (the default) the programs stay attached
    /// and counting until the next start continues the counters; `bitsecure uninstall`
    /// removes them. Without pinning, stopping detaches everything.
    Run(ConfigArg),
    /// Remove the pinned kernel state (detaching the programs and freeing the maps) and the
    /// agent's state file. Stop the agent first; the config and baseline are kept.
    Uninstall(ConfigArg),
    /// Diagnose whether this host can run the agent: kernel, kernel config, cgroup v2, bpffs,
    /// privileges, listen port, baseline, memlock.
    ///
    /// Prints one line per check (OK, WARN or FAIL), each problem followed by its fix. Exits 0
    /// when nothing FAILs, 1 otherwise. Run it as the user the agent runs as.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON (for scripts): one object per check, then the counts.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and print where it comes from and the effective configuration.
    Config {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the embedded default config file (with comments) and exit.
        #[arg(long, conflicts_with = "config")]
        default: bool,
        /// Print the effective configuration as JSON (for scripts).
        #[arg(long, conflicts_with = "default")]
        json: bool,
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
    /// Print the Prometheus alert and recording rules for these agents (a file for
    /// Prometheus' rule_files), fitted to your scrape job's name and runbook address.
    ///
    /// Example: bitsecure rules --job rigs > /etc/prometheus/bitsecure.rules.yml
    Rules {
        /// The job_name of the scrape config that scrapes the agents (the agent-down alerts
        /// select it).
        #[arg(long, default_value = rules::DEFAULT_JOB)]
        job: String,
        /// Address of the runbook (docs/runbook.md, e.g. a copy on your wiki) the alerts'
        /// runbook_url points to; each alert adds its section as #alertname.
        #[arg(long, value_name = "URL", default_value = rules::DEFAULT_RUNBOOK)]
        runbook_base: String,
    },
    /// The live view in a terminal (for a rig reached over SSH): each process's rate beside
    /// what the baseline expects, and the unexpected list, riskiest first; `a` accepts the
    /// selected entry into the baseline as `baseline accept` does. `q` quits.
    Top {
        #[command(flatten)]
        agent: AgentArg,
        #[command(flatten)]
        file: FileArg,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        every: f64,
    },
    /// Print the shell completion script for SHELL.
    ///
    /// Example: bitsecure completions bash > /usr/share/bash-completion/completions/bitsecure
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (bitsecure.1, bitsecure-run.1, ...) into DIR.
    Man { dir: PathBuf },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum BaselineCommand {
    /// Learn normal traffic for a while and write a baseline file (needs root).
    Record {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to record, e.g. 30m, 2h, 90s. Cover several cycles of your miner's job
        /// cadence (nine or more) so it can be detected.
        #[arg(long, short, value_parser = human::parse_duration)]
        duration: std::time::Duration,
        /// Then go on until no new traffic class came for this long, e.g. 2h: rare-but-normal
        /// traffic (a reconnect, an hourly job) gets learnt too.
        #[arg(long, value_parser = human::parse_duration, value_name = "DURATION")]
        until_quiet: Option<std::time::Duration>,
        /// With --until-quiet: stop after this long in all, quiet or not.
        #[arg(long, value_parser = human::parse_duration, default_value = "7d", requires = "until_quiet")]
        max: std::time::Duration,
        /// Add what this recording sees to the existing file instead of replacing it: the
        /// traffic classes it lacks become rules (its rules and comments stay), e.g. to cover a
        /// weekly job or a restart.
        #[arg(long)]
        resume: bool,
        /// Where to write; default: baseline.path of the config. An existing file is kept as
        /// FILE.bak.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Where the running agent's baseline stands: learning (time left), settling (low-risk
    /// newcomers join it, marked learnt_late) or stable, with the evidence.
    Status {
        #[command(flatten)]
        agent: AgentArg,
        /// Print JSON (for scripts) instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Show the rules of a baseline file.
    Show {
        #[command(flatten)]
        file: FileArg,
        /// Print the baseline as JSON (for scripts) instead of a listing.
        #[arg(long)]
        json: bool,
    },
    /// Show what changed between two baseline files.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print JSON (for scripts): the added, removed and changed rules.
        #[arg(long)]
        json: bool,
    },
    /// Merge the baselines of identical rigs into one for the whole farm (printed, or written
    /// with --output): every rule any rig has; rates combined so no rig's normal alerts;
    /// what cannot be combined without losing a check (executable hashes, payout accounts
    /// that differ) is left out and reported on stderr.
    ///
    /// Example: bitsecure baseline merge rig1.toml rig2.toml rig3.toml > farm.toml
    Merge {
        /// The rigs' baseline files (at least two).
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
        /// Write the merged baseline here (atomically, the previous file kept as .bak)
        /// instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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
        #[arg(long, conflicts_with_all = ["process", "remote", "port", "protocol", "app"])]
        all: bool,
        /// Accept the executable at this path as it runs now (an update you made): the rules
        /// expecting it take its new SHA-256. `bitsecure unexpected` lists changed executables.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with_all = ["all", "process", "remote", "port", "protocol", "app", "by_address"]
        )]
        executable: Option<String>,
        /// Accept that a name moved (a pool's new address range): the rules for it take the
        /// networks the agent saw it at. `bitsecure unexpected` lists moved names.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with_all = ["all", "executable", "process", "remote", "port", "protocol", "app", "by_address"]
        )]
        moved_name: Option<String>,
        /// Turn the rules by address that the agent saw resolved from a name (by the same
        /// process) into rules by that name, keeping the address's network as the name's
        /// `prefixes`. `bitsecure baseline status` lists them.
        #[arg(
            long,
            conflicts_with_all = ["all", "executable", "moved_name", "process", "remote", "port", "protocol", "app", "by_address"]
        )]
        upgrade: bool,
        /// Only entries of this process.
        #[arg(long)]
        process: Option<String>,
        /// Only entries to this remote address or name.
        #[arg(long)]
        remote: Option<String>,
        /// Only entries with this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only entries with this protocol (tcp, udp, icmp, ...).
        #[arg(long)]
        protocol: Option<String>,
        /// Only entries of this application (stratum, tls, http, ssh, dns, unknown).
        #[arg(long)]
        app: Option<String>,
        /// Write rules for the remote's address even when its name is known (by default a rule
        /// names the remote, which covers every address the name resolves to).
        #[arg(long)]
        by_address: bool,
        /// A note stored with the new rules (who accepted them and why).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// TOML config file. Default: $BITSECURE_CONFIG if set, else /etc/bitsecure/bitsecure.toml
    /// if it exists, else the embedded default (`bitsecure config --default`).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct FileArg {
    /// The baseline file; default: baseline.path of the (default) config.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Config whose baseline.path to use. Default: as for `run` ($BITSECURE_CONFIG, else
    /// /etc/bitsecure/bitsecure.toml if it exists, else the embedded default).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct AgentArg {
    /// Address of the running agent; default: agent.listen of the (default) config.
    #[arg(long)]
    agent: Option<String>,
    /// Config whose agent.listen to use. Default: as for `run` ($BITSECURE_CONFIG, else
    /// /etc/bitsecure/bitsecure.toml if it exists, else the embedded default).
    #[arg(long = "agent-config")]
    agent_config: Option<PathBuf>,
}

impl FileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.file {
            Some(file) => Ok(file.clone()),
            None => Ok(load_config(self.config.as_deref())?.baseline.path),
        }
    }
}

impl AgentArg {
    fn address(&self) -> anyhow::Result<String> {
        match &self.agent {
            Some(agent) => Ok(agent.clone()),
            None => Ok(load_config(self.agent_config.as_deref())?
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
            // EX_CONFIG: systemd's RestartPreventExitStatus=78 stops restarting a config that
            // cannot work until someone fixes it.
            if error.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(config) => agent::run(load_config(config.config.as_deref())?),
        Command::Uninstall(config) => agent::uninstall(&load_config(config.config.as_deref())?),
        Command::Config {
            config,
            default,
            json,
        } => {
            if default {
                print!("{}", config::DEFAULT_CONFIG);
            } else if json {
                let location = ConfigLocation::find(config.config.as_deref());
                let effective = Config::load(location.path.as_deref())?;
                println!("{}", serde_json::to_string_pretty(&effective)?);
            } else {
                let location = ConfigLocation::find(config.config.as_deref());
                let effective = Config::load(location.path.as_deref())?;
                println!("# config: {location}");
                println!("# the effective configuration (every key, defaults filled in)");
                print!("{}", toml::to_string_pretty(&effective)?);
            }
            Ok(())
        }
        Command::Top { agent, file, every } => {
            if !(every.is_finite() && every > 0.0) {
                anyhow::bail!("--every {every}: give a number of seconds above 0");
            }
            top::run(
                &agent.address()?,
                &file.path()?,
                std::time::Duration::from_secs_f64(every),
            )
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "bitsecure", &mut script);
            write_stdout(&script)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(())
        }
        Command::Rules { job, runbook_base } => {
            write_stdout(rules::render(&job, &runbook_base)?.as_bytes())
        }
        Command::Check { config, json } => {
            let location = ConfigLocation::find(config.config.as_deref());
            match check::run(location.path.as_deref(), &location.to_string(), json) {
                0 => Ok(()),
                fails => anyhow::bail!("{fails} check(s) failed"),
            }
        }
        Command::Unexpected { agent, json } => commands::unexpected(&agent.address()?, json),
        Command::Baseline(BaselineCommand::Record {
            config,
            duration,
            until_quiet,
            max,
            resume,
            output,
        }) => {
            let config = load_config(config.config.as_deref())?;
            let output = output.unwrap_or_else(|| config.baseline.path.clone());
            if max < duration {
                anyhow::bail!("--max ({max:?}) is shorter than --duration ({duration:?})");
            }
            let length = agent::RecordLength {
                duration,
                until_quiet,
                max,
            };
            agent::record(config, length, &output, resume)
        }
        Command::Baseline(BaselineCommand::Status { agent, json }) => {
            commands::status(&agent.address()?, json)
        }
        Command::Baseline(BaselineCommand::Show { file, json }) => {
            commands::show(&file.path()?, json)
        }
        Command::Baseline(BaselineCommand::Diff { old, new, json }) => {
            commands::diff(&old, &new, json)
        }
        Command::Baseline(BaselineCommand::Merge { files, output }) => {
            let merged = commands::merge(&files)?;
            match output {
                Some(path) => {
                    bitsecure::baseline::file::write_atomically(&path, &merged)?;
                    eprintln!("merge: wrote {}", path.display());
                    Ok(())
                }
                None => write_stdout(merged.as_bytes()),
            }
        }
        Command::Baseline(BaselineCommand::Accept {
            file,
            agent,
            all,
            executable,
            moved_name,
            upgrade,
            process,
            remote,
            port,
            protocol,
            app,
            by_address,
            note,
        }) => {
            if upgrade {
                let changed = commands::accept_upgrades(&agent.address()?, &file.path()?)?;
                eprintln!("{changed} rules are now by name");
                return Ok(());
            }
            if let Some(name) = moved_name {
                let changed = commands::accept_moved_name(&agent.address()?, &file.path()?, &name)?;
                eprintln!("{changed} rules now expect {name} where the agent saw it");
                return Ok(());
            }
            if let Some(exe) = executable {
                let changed = commands::accept_executable(&agent.address()?, &file.path()?, &exe)?;
                eprintln!("{changed} rules now expect the executable {exe} as it runs now");
                return Ok(());
            }
            let filter = AcceptFilter {
                all,
                process,
                remote,
                port,
                protocol,
                app,
            };
            let added = commands::accept(
                &agent.address()?,
                &file.path()?,
                &filter,
                by_address,
                note.as_deref(),
            )?;
            eprintln!("{added} rules added");
            Ok(())
        }
    }
}

/// Exit status of a config that cannot be used (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// The environment variable naming the config file when there is no `--config`.
const CONFIG_ENV: &str = "BITSECURE_CONFIG";
/// The config file used when there is neither `--config` nor `$BITSECURE_CONFIG`, if it exists.
const SYSTEM_CONFIG: &str = "/etc/bitsecure/bitsecure.toml";

/// Which config a command uses: `--config`, else `$BITSECURE_CONFIG` (if set and not empty),
/// else [`SYSTEM_CONFIG`] if it exists, else the embedded default (`path` = `None`).
struct ConfigLocation {
    path: Option<PathBuf>,
    /// Why this one: "--config", "BITSECURE_CONFIG", "default location", or for the embedded
    /// default, what was looked for.
    source: &'static str,
}

impl ConfigLocation {
    fn find(flag: Option<&Path>) -> Self {
        Self::choose(
            flag,
            std::env::var_os(CONFIG_ENV),
            Path::new(SYSTEM_CONFIG).exists(),
        )
    }

    fn choose(flag: Option<&Path>, env: Option<OsString>, system_exists: bool) -> Self {
        let (path, source) = if let Some(flag) = flag {
            (Some(flag.to_path_buf()), "--config")
        } else if let Some(env) = env.filter(|value| !value.is_empty()) {
            (Some(PathBuf::from(env)), CONFIG_ENV)
        } else if system_exists {
            (Some(PathBuf::from(SYSTEM_CONFIG)), "default location")
        } else {
            (
                None,
                "no --config, no BITSECURE_CONFIG, no /etc/bitsecure/bitsecure.toml",
            )
        };
        Self { path, source }
    }
}

impl std::fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{} (from {})", path.display(), self.source),
            None => write!(f, "the embedded default ({})", self.source),
        }
    }
}

/// Loads the config [`ConfigLocation::find`] picks, naming it in the log.
fn load_config(flag: Option<&Path>) -> anyhow::Result<Config> {
    let location = ConfigLocation::find(flag);
    info!("config: {location}");
    Ok(Config::load(location.path.as_deref())?)
}

/// Writes a command's whole output; a reader that went away early (`| head`) is no error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_location_precedence() {
        let flag = Path::new("/flag.toml");
        let env = || Some(OsString::from("/env.toml"));
        let chosen = |flag, env, system| ConfigLocation::choose(flag, env, system).to_string();
        assert_eq!(
            chosen(Some(flag), env(), true),
            "/flag.toml (from --config)"
        );
        assert_eq!(
            chosen(None, env(), true),
            "/env.toml (from BITSECURE_CONFIG)"
        );
        assert_eq!(
            chosen(None, Some(OsString::new()), true),
            "/etc/bitsecure/bitsecure.toml (from default location)"
        );
        assert_eq!(
            chosen(None, None, true),
            "/etc/bitsecure/bitsecure.toml (from default location)"
        );
        let embedded = ConfigLocation::choose(None, None, false);
        assert_eq!(embedded.path, None);
        assert!(embedded.to_string().starts_with("the embedded default"));
    }
}
