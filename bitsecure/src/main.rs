//! `bitsecure`: the agent and its command line.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use log::{debug, error, info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use bitsecure::{
    cgroup,
    config::{self, Config},
    flow_table::FlowTable,
    http,
    kernel::{self, KernelLogger, MapCapacities},
    metrics::Metrics,
    poller::Poller,
};

/// Is this dedicated machine doing only what it should on the network?
///
/// BitSecure counts every byte in the kernel (eBPF), per process and remote endpoint, and
/// exports the counts to Prometheus.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the eBPF programs and serve /metrics (needs root).
    ///
    /// Logs go to stderr; set RUST_LOG=debug for more. Stops cleanly (detaching everything)
    /// on SIGINT or SIGTERM.
    Run {
        /// TOML config file; without it the embedded default is used
        /// (see `bitsecure config --default`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print the effective configuration.
    Config {
        /// The file to check; without it the embedded default is checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the embedded default config file (with comments) and exit.
        #[arg(long, conflicts_with = "config")]
        default: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Config { config, default } => check_config(config, default),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<PathBuf>, default: bool) -> anyhow::Result<()> {
    if default {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(());
    }
    let config = Config::load(path.as_deref())?;
    println!("{config:#?}");
    Ok(())
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let cgroup = cgroup::resolve_attach_path(&config.agent.cgroup)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_agent(config, cgroup))
}

async fn run_agent(config: Config, cgroup: PathBuf) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    // Bind before attaching: a taken port should fail fast and leave the kernel untouched.
    let listener = http::bind(config.agent.listen).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let capacities = MapCapacities {
        flows: config.kernel.flow_capacity,
        sockets: config.kernel.socket_capacity,
    };
    let (programs, maps, kernel_logger) = kernel::load_and_attach(&cgroup, &capacities)?;
    for (map, capacity) in [("flows", capacities.flows), ("sockets", capacities.sockets)] {
        metrics
            .map_capacity
            .with_label_values(&[map])
            .set(i64::from(capacity));
    }
    info!(
        "attached to cgroup {}; serving metrics on http://{}/metrics",
        cgroup.display(),
        config.agent.listen
    );

    let table = FlowTable::new(config.metrics.max_remotes, config.metrics.max_series);
    let poller = Poller::new(maps, table, config.poll_interval())?;
    let (stop, stopped) = mpsc::channel::<()>();
    let poll_thread = {
        let metrics = Arc::clone(&metrics);
        let interval = config.poll_interval();
        thread::Builder::new()
            .name("poller".into())
            .spawn(move || poll_loop(poller, &metrics, interval, &stopped))
            .context("cannot start the poller thread")?
    };
    let http_task = tokio::spawn(http::serve(listener, Arc::clone(&metrics)));
    let log_task = tokio::spawn(forward_kernel_logs(kernel_logger));

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    http_task.abort();
    log_task.abort();
    // Dropping the sender wakes the poller, which does a last poll and returns.
    drop(stop);
    if poll_thread.join().is_err() {
        warn!("the poller thread panicked");
    }
    drop(programs);
    info!("programs detached; bye");
    Ok(())
}

/// Polls every `interval` until `stopped` fires (or its sender is dropped), then once more.
fn poll_loop(
    mut poller: Poller,
    metrics: &Metrics,
    interval: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    loop {
        match poller.poll(metrics) {
            Ok(report) => debug!(
                "poll: {} flows, {} sockets, {} closed sockets folded, {} flows awaiting an owner",
                report.flows, report.sockets, report.folded_sockets, report.deferred_flows
            ),
            Err(error) => {
                metrics.poll_errors.inc();
                warn!("poll failed: {error:#}");
            }
        }
        match stopped.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(error) = poller.poll(metrics) {
        warn!("final poll failed: {error:#}");
    }
}

/// Passes the kernel programs' aya-log records to the `log` crate as they arrive.
async fn forward_kernel_logs(logger: KernelLogger) {
    // SAFETY: the logger owns the ring buffer's fd and keeps it open while registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            warn!("cannot watch the kernel log ring buffer: {error}");
            return;
        }
    };
    loop {
        match logger.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(error) => {
                warn!("kernel log ring buffer failed: {error}");
                return;
            }
        }
    }
}
