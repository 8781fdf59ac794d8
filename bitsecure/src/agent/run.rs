//! `bitsecure run` (attach, poll, compare, serve until a signal) and `bitsecure uninstall`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::{
    poll_loop::{Consumer, Control, LastPoll, poll_loop},
    runtime,
    setup::{StateSaver, attach, open_persistence},
    unix_now,
};
use crate::{
    baseline::service::{BaselineService, Settings},
    config::Config,
    export::{metrics::Metrics, server, web::WebSecurity},
    flow::Polled,
    kernel::{AttachedPrograms, KernelLogger, caps, cgroup, pins},
    poller::blind_spots,
    state::{self, StateFile},
};

/// The running agent's consumer of flow deltas: the baseline service, whose reports go to the
/// exporter.
struct Monitoring(BaselineService);

impl Consumer for Monitoring {
    fn on_poll(&mut self, polled: &Polled, metrics: &Metrics) {
        let now = unix_now();
        metrics.publish_step(self.0.on_step(polled, now), now);
    }

    fn on_reload(&mut self, metrics: &Metrics) {
        metrics.publish_baseline(self.0.reload("SIGHUP", unix_now()));
    }
}

/// `bitsecure run`.
pub fn run(config: Config) -> anyhow::Result<()> {
    let cgroup = cgroup::resolve_attach_path(&config.agent.cgroup)?;
    runtime()?.block_on(run_agent(config, cgroup))
}

async fn run_agent(config: Config, cgroup: PathBuf) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    // Bind before attaching: a taken port should fail fast and leave the kernel untouched.
    let listener = server::bind(config.agent.listen).await?;
    let web = Arc::new(WebSecurity::from_config(&config.agent)?);
    if !config.agent.listen.ip().is_loopback() && web.tls.is_none() {
        warn!(
            "serving plain HTTP on {}: anyone who reaches it reads this rig's traffic; set \
             agent.tls_cert_file, agent.tls_key_file and agent.basic_auth_users, or firewall \
             it to the Prometheus host",
            config.agent.listen
        );
    }
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let persistence = open_persistence(&config)?;
    let (programs, mut poller, kernel_logger) =
        attach(&config, &cgroup, &metrics, persistence.as_ref())?;
    let saver = persistence.map(|persistence| StateSaver::new(persistence, &poller));
    info!(
        "attached to cgroup {}; serving metrics on http://{}/metrics",
        cgroup.display(),
        config.agent.listen
    );
    let (baseline, report) = BaselineService::start(
        Settings {
            path: config.baseline.path.clone(),
            learn_seconds: config.baseline.learn_seconds,
            max_unexpected: config.baseline.max_unexpected,
            step_seconds: config.agent.poll_interval_seconds,
            dns_tunnel_names_per_minute: config.baseline.dns_tunnel_names_per_minute,
            name_networks: config.baseline.name_networks(),
            grades: config.risk.grades(),
            settle: config.baseline.settle(),
            stale_seconds: config.baseline.stale_seconds,
        },
        unix_now(),
    );
    metrics.baseline.set_paging(|risk| config.risk.pages(risk));
    metrics.publish_baseline(report);
    let mut monitoring = Monitoring(baseline);

    let (stop_guard, guard_thread) = spawn_guard(programs, &metrics, config.poll_interval())?;

    // Attached: from here on the poller needs only to read other processes' /proc entries,
    // and the HTTP side (this thread) needs nothing. The poller thread inherits the narrowed
    // set; this thread then drops the rest.
    caps::restrict_thread_to(&caps::POLLER_CAPABILITIES).context("cannot drop capabilities")?;
    let (control, controls) = mpsc::channel::<Control>();
    let poll_thread = {
        let metrics = Arc::clone(&metrics);
        let interval = config.poll_interval();
        thread::Builder::new()
            .name("poller".into())
            .spawn(move || {
                poll_loop(
                    &mut poller,
                    &mut monitoring,
                    &metrics,
                    interval,
                    &controls,
                    saver.as_ref(),
                    LastPoll::Take,
                );
            })
            .context("cannot start the poller thread")?
    };
    caps::restrict_thread_to(&[]).context("cannot drop capabilities")?;
    info!(
        "capabilities dropped: the poller keeps CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, the guard \
         CAP_NET_ADMIN and CAP_BPF, the rest none"
    );
    let history_path = history_path(&config);
    restore_history(&metrics, &history_path);
    let http_task = tokio::spawn(server::serve(listener, Arc::clone(&metrics), web));
    let log_task = tokio::spawn(forward_kernel_logs(kernel_logger));

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the baseline");
                let _ = control.send(Control::Reload);
            }
        }
    }
    http_task.abort();
    log_task.abort();
    // Dropping the sender wakes the poller, which does a last poll and returns.
    drop(control);
    if poll_thread.join().is_err() {
        warn!("the poller thread panicked");
    }
    save_history(&metrics, &history_path);
    drop(stop_guard);
    if guard_thread.join().is_err() {
        warn!("the guard thread panicked");
    }
    if config.kernel.pin_path.is_empty() {
        info!("programs detached; bye");
    } else {
        info!(
            "the programs stay attached and counting (pinned in {}): the next start continues \
             the counters; `bitsecure uninstall` removes them; bye",
            config.kernel.pin_path
        );
    }
    Ok(())
}

/// Where the traffic history is kept across restarts: beside the baseline (the state
/// directory).
fn history_path(config: &Config) -> PathBuf {
    config
        .baseline
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("history.json")
}

fn restore_history(metrics: &Metrics, path: &std::path::Path) {
    match std::fs::read_to_string(path) {
        Ok(text) => match metrics.history.restore_json(&text) {
            Ok(tracks) => info!("history: {tracks} tracks from {}", path.display()),
            Err(error) => warn!(
                "{}: not a history this agent reads ({error}); starting afresh",
                path.display()
            ),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => warn!(
            "cannot read {}: {error}; the history starts afresh",
            path.display()
        ),
    }
}

fn save_history(metrics: &Metrics, path: &std::path::Path) {
    let saved = metrics
        .history
        .to_json()
        .map_err(|error| error.to_string())
        .and_then(|json| {
            crate::fsutil::write_atomically(
                path,
                json.as_bytes(),
                crate::fsutil::FileKind::AgentOwned,
            )
            .map_err(|error| error.to_string())
        });
    if let Err(error) = saved {
        warn!(
            "cannot save the traffic history to {}: {error}",
            path.display()
        );
    }
}

/// Starts the guard thread: it checks every poll interval that the programs are still
/// attached and re-attaches them; it keeps the two capabilities that takes and owns the
/// programs (they detach when it returns, unless pinned). Returns once the guard has narrowed
/// its capabilities; dropping the sender stops it.
fn spawn_guard(
    programs: AttachedPrograms,
    metrics: &Arc<Metrics>,
    interval: Duration,
) -> anyhow::Result<(mpsc::Sender<()>, thread::JoinHandle<()>)> {
    let (stop_guard, guard_stops) = mpsc::channel::<()>();
    let (narrowed, guard_narrowed) = mpsc::sync_channel::<Result<(), caps::CapsError>>(1);
    let metrics = Arc::clone(metrics);
    let guard_thread = thread::Builder::new()
        .name("guard".into())
        .spawn(move || {
            // Narrowed before it does anything else: the agent does not run with a guard that
            // kept everything.
            let dropped = caps::restrict_thread_to(&caps::GUARD_CAPABILITIES);
            let ok = dropped.is_ok();
            let _ = narrowed.send(dropped);
            if ok {
                guard(programs, &metrics, interval, &guard_stops);
            }
        })
        .context("cannot start the guard thread")?;
    guard_narrowed
        .recv()
        .context("the guard thread ended before it started")?
        .context("cannot drop the guard thread's capabilities")?;
    Ok((stop_guard, guard_thread))
}

/// The guard thread (already narrowed to [`caps::GUARD_CAPABILITIES`]): checks the programs'
/// attachments every `interval` (see
/// [`AttachedPrograms::check_and_repair`]) until `stop` closes, then drops the programs.
fn guard(
    mut programs: AttachedPrograms,
    metrics: &Metrics,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
) {
    let mut nat_error_logged = false;
    loop {
        metrics.record_attachments(&programs.check_and_repair());
        metrics.programs.record(&programs.stats());
        match blind_spots::nat_chains() {
            Ok(chains) => metrics.poller.record_nat_chains(&chains),
            // No nf_tables in this kernel, or no CAP_NET_ADMIN: said once.
            Err(error) if !nat_error_logged => {
                nat_error_logged = true;
                info!("cannot list nftables NAT chains: {error}");
            }
            Err(_) => {}
        }
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(programs);
}

/// `bitsecure uninstall`: removes the pins (the programs detach, the maps go) and the state.
pub fn uninstall(config: &Config) -> anyhow::Result<()> {
    let state_path = state::path_beside(&config.baseline.path);
    // Holding the lock proves no agent is using the pins.
    let lock = StateFile::lock(&state_path)?;
    let pin_path = Path::new(&config.kernel.pin_path);
    if config.kernel.pin_path.is_empty() {
        println!("kernel.pin_path is empty: nothing is pinned");
    } else if pins::remove(pin_path)
        .with_context(|| format!("cannot remove {}", pin_path.display()))?
    {
        println!("removed {}: the programs are detached", pin_path.display());
    } else {
        println!("nothing pinned at {}", pin_path.display());
    }
    if StateFile::remove(&state_path)
        .with_context(|| format!("cannot remove {}", state_path.display()))?
    {
        println!("removed {}", state_path.display());
    }
    drop(lock);
    let _ = std::fs::remove_file(state_path.with_extension("lock"));
    Ok(())
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
