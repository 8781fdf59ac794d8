//! The agent's main loops: `bitsecure run` (attach, poll, compare, serve) and
//! `bitsecure baseline record` (attach, poll, learn, write).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use log::{debug, info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    baseline::{
        file,
        recorder::Recorder,
        service::{self, BaselineService, Settings},
    },
    config::Config,
    export::metrics::Metrics,
    export::series::FlowTable,
    export::server,
    human,
    kernel::caps,
    kernel::cgroup,
    kernel::pins::{Found, MapShape, PinDir},
    kernel::{self, AttachedPrograms, KernelLogger, MapCapacities},
    naming::Naming,
    poller::{PollReport, Poller},
    state::{self, AgentState, SavedSeries, StateFile},
};
use bitsecure_common::{FlowCounters, FlowKey, SocketOwner, Stat, map_names};

/// Messages from the signal handlers to the poller thread.
enum Control {
    Reload,
}

/// `bitsecure run`.
pub fn run(config: Config) -> anyhow::Result<()> {
    let cgroup = cgroup::resolve_attach_path(&config.agent.cgroup)?;
    runtime()?.block_on(run_agent(config, cgroup))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run_agent(config: Config, cgroup: PathBuf) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    // Bind before attaching: a taken port should fail fast and leave the kernel untouched.
    let listener = server::bind(config.agent.listen).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let persistence = open_persistence(&config)?;
    let (programs, poller, kernel_logger) =
        attach(&config, &cgroup, &metrics, persistence.as_ref())?;
    let saver = persistence.map(|persistence| StateSaver {
        file: persistence.state,
        boot_id: state::boot_id(),
        flows_map_id: poller.flows_map_id(),
    });
    info!(
        "attached to cgroup {}; serving metrics on http://{}/metrics",
        cgroup.display(),
        config.agent.listen
    );
    let baseline = BaselineService::start(
        Settings {
            path: config.baseline.path.clone(),
            learn_seconds: config.baseline.learn_seconds,
            max_unexpected: config.baseline.max_unexpected,
            step_seconds: config.agent.poll_interval_seconds,
        },
        &metrics.baseline,
        unix_now(),
    );
    let view = baseline.view();

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
            .spawn(move || poll_loop(poller, baseline, &metrics, interval, &controls, saver))
            .context("cannot start the poller thread")?
    };
    caps::restrict_thread_to(&[]).context("cannot drop capabilities")?;
    info!(
        "capabilities dropped: the poller keeps CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, the rest none"
    );
    let http_task = tokio::spawn(server::serve(listener, Arc::clone(&metrics), view));
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
    drop(programs);
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

/// `bitsecure uninstall`: removes the pins (the programs detach, the maps go) and the state.
pub fn uninstall(config: &Config) -> anyhow::Result<()> {
    let state_path = state::path_beside(&config.baseline.path);
    // Holding the lock proves no agent is using the pins.
    let lock = StateFile::lock(&state_path)?;
    let pin_path = Path::new(&config.kernel.pin_path);
    if config.kernel.pin_path.is_empty() {
        println!("kernel.pin_path is empty: nothing is pinned");
    } else if crate::kernel::pins::remove(pin_path)
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

/// Pinned kernel state and the agent's own state file (with `kernel.pin_path`).
struct Persistence {
    pins: PinDir,
    found: Found,
    state: StateFile,
}

fn open_persistence(config: &Config) -> anyhow::Result<Option<Persistence>> {
    if config.kernel.pin_path.is_empty() {
        return Ok(None);
    }
    let state = StateFile::lock(&state::path_beside(&config.baseline.path))?;
    let shapes = [
        MapShape {
            name: map_names::FLOWS,
            key_size: size_of::<FlowKey>() as u32,
            value_size: size_of::<FlowCounters>() as u32,
            max_entries: config.kernel.flow_capacity,
        },
        MapShape {
            name: map_names::SOCKETS,
            key_size: size_of::<u64>() as u32,
            value_size: size_of::<SocketOwner>() as u32,
            max_entries: config.kernel.socket_capacity,
        },
        MapShape {
            name: map_names::STATS,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u64>() as u32,
            max_entries: Stat::COUNT,
        },
        // A ring buffer has no keys or values; its size is its capacity.
        MapShape {
            name: map_names::EVENTS,
            key_size: 0,
            value_size: 0,
            max_entries: config.names.ring_buffer_bytes,
        },
    ];
    let (pins, found) = PinDir::open(Path::new(&config.kernel.pin_path), &shapes)?;
    match &found {
        Found::Nothing => info!("pinning the kernel state in {}", config.kernel.pin_path),
        Found::Reusable => info!(
            "picking up the kernel state pinned in {} by the previous agent",
            config.kernel.pin_path
        ),
        Found::Discarded(why) => warn!(
            "discarded the kernel state pinned in {} by another agent version or config \
             ({why}); starting with fresh maps",
            config.kernel.pin_path
        ),
    }
    Ok(Some(Persistence { pins, found, state }))
}

/// Continues where the previous agent stopped: its exported totals always, and its per-flow
/// accounting when the maps are the very ones it read.
fn resume(persistence: &Persistence, poller: &mut Poller, metrics: &Metrics) {
    let saved = match persistence.state.load() {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(error) => {
            warn!("{error}; the counters start from zero");
            return;
        }
    };
    for series in &saved.series {
        metrics.add_traffic(&series.key(), &series.traffic);
    }
    let same_maps = persistence.found == Found::Reusable
        && saved.boot_id == state::boot_id()
        && Some(saved.flows_map_id) == poller.flows_map_id();
    if same_maps {
        poller.resume(&saved.flows, &saved.kernel_stats);
        info!(
            "continuing the previous agent's counters: {} series, {} live flows",
            saved.series.len(),
            saved.flows.len()
        );
    } else {
        info!(
            "continuing the previous agent's totals ({} series); the kernel maps are new",
            saved.series.len()
        );
    }
}

/// Saves what the agent has accounted for after every poll.
struct StateSaver {
    file: StateFile,
    boot_id: String,
    flows_map_id: Option<u32>,
}

impl StateSaver {
    fn save(&self, poller: &Poller, metrics: &Metrics) {
        let (flows, kernel_stats) = poller.accounted();
        let state = AgentState {
            format_version: state::FORMAT_VERSION,
            boot_id: self.boot_id.clone(),
            flows_map_id: self.flows_map_id.unwrap_or(0),
            flows,
            kernel_stats,
            series: metrics
                .traffic_snapshot()
                .iter()
                .map(|(key, traffic)| SavedSeries::of(key, traffic))
                .collect(),
        };
        if let Err(error) = self.file.save(&state) {
            metrics.poll_errors.inc();
            warn!("cannot save the agent state: {error}");
        }
    }
}

/// Loads and attaches the programs and builds the poller around their maps.
fn attach(
    config: &Config,
    cgroup: &Path,
    metrics: &Metrics,
    persistence: Option<&Persistence>,
) -> anyhow::Result<(AttachedPrograms, Poller, KernelLogger)> {
    let capacities = MapCapacities {
        flows: config.kernel.flow_capacity,
        sockets: config.kernel.socket_capacity,
        event_bytes: config.names.ring_buffer_bytes,
    };
    let (programs, maps, kernel_logger) = kernel::load_and_attach(
        cgroup,
        &capacities,
        persistence.map(|persistence| &persistence.pins),
    )?;
    for (map, capacity) in [("flows", capacities.flows), ("sockets", capacities.sockets)] {
        metrics
            .map_capacity
            .with_label_values(&[map])
            .set(i64::from(capacity));
        // Exported from the start at 0, so a first failure is an increase Prometheus can see.
        metrics.map_insert_failures.with_label_values(&[map]);
    }
    metrics
        .traffic_series_limit
        .set(config.metrics.max_series as i64);
    metrics.names_limit.set(config.names.max_entries as i64);
    let table = FlowTable::new(config.metrics.max_remotes, config.metrics.max_series);
    let naming = Naming::new(config.names.max_entries);
    let mut poller = Poller::new(maps, table, naming, config.poll_interval())?;
    if let Some(persistence) = persistence {
        resume(persistence, &mut poller, metrics);
    }
    Ok((programs, poller, kernel_logger))
}

/// Longest a control (reload, stop) waits for the poller thread.
const CONTROL_LATENCY: Duration = Duration::from_millis(100);

/// Polls every `interval` until the control channel closes, then once more.
fn poll_loop(
    mut poller: Poller,
    mut baseline: BaselineService,
    metrics: &Metrics,
    interval: Duration,
    controls: &mpsc::Receiver<Control>,
    saver: Option<StateSaver>,
) {
    let mut next_poll = Instant::now();
    loop {
        match controls.try_recv() {
            Ok(Control::Reload) => {
                baseline.reload("SIGHUP", &metrics.baseline, unix_now());
                continue;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        let wait = next_poll.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            // Between polls, read the kernel's payload events as they come, so its ring
            // buffer does not fill up; wake up now and then for the controls.
            poller.wait_for_events(wait.min(CONTROL_LATENCY));
            poller.read_events(metrics);
            continue;
        }
        // A slow poll must not make the next ones pile up.
        next_poll = (next_poll + interval).max(Instant::now());
        if let Some(report) = poll_once(&mut poller, metrics) {
            baseline.on_step(&report.deltas, &metrics.baseline, unix_now());
        }
        if let Some(saver) = &saver {
            saver.save(&poller, metrics);
        }
    }
    // The last traffic still goes into the counters (and the state the next agent resumes).
    poll_once(&mut poller, metrics);
    if let Some(saver) = &saver {
        saver.save(&poller, metrics);
    }
}

fn poll_once(poller: &mut Poller, metrics: &Metrics) -> Option<PollReport> {
    match poller.poll(metrics) {
        Ok(report) => {
            debug!(
                "poll: {} flows, {} sockets, {} closed sockets folded, {} flows awaiting an owner",
                report.flows, report.sockets, report.folded_sockets, report.deferred_flows
            );
            Some(report)
        }
        Err(error) => {
            metrics.poll_errors.inc();
            warn!("poll failed: {error:#}");
            None
        }
    }
}

/// `bitsecure baseline record`: learns for `duration`, showing progress, and writes the
/// baseline to `output` (atomically, keeping a backup of an existing file). Ctrl-C stops early
/// and writes what was recorded so far.
pub fn record(config: Config, duration: Duration, output: &Path) -> anyhow::Result<()> {
    let cgroup = cgroup::resolve_attach_path(&config.agent.cgroup)?;
    if let Some(parent) = output
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    runtime()?.block_on(async move {
        let metrics = Metrics::new().context("cannot register metrics")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        // Never pinned: a recording runs beside the agent and must not share its maps.
        let (programs, mut poller, _logger) = attach(&config, &cgroup, &metrics, None)?;
        let step = config.agent.poll_interval_seconds;
        let mut recorder = Recorder::new(step, timestamp_now(), 2000);
        let steps = (duration.as_secs_f64() / step).ceil().max(1.0) as usize;
        eprintln!(
            "recording normal traffic for {} ({steps} polls of {step} s); Ctrl-C stops early \
             and keeps what was recorded",
            human::clock_duration(duration.as_secs_f64())
        );
        let mut ticker = tokio::time::interval(config.poll_interval());
        // The first tick is immediate: it only sets the starting counters.
        ticker.tick().await;
        poll_once(&mut poller, &metrics);
        let mut interrupted = false;
        // Payload events are read between polls too, so the kernel's ring buffer keeps up.
        let mut event_ticker = tokio::time::interval(CONTROL_LATENCY);
        for _ in 0..steps {
            loop {
                tokio::select! {
                    _ = ticker.tick() => break,
                    _ = event_ticker.tick() => poller.read_events(&metrics),
                    _ = sigint.recv() => { interrupted = true; break; }
                    _ = sigterm.recv() => { interrupted = true; break; }
                }
            }
            if interrupted {
                break;
            }
            if let Some(report) = poll_once(&mut poller, &metrics) {
                recorder.record_step(&report.deltas);
            }
            eprintln!(
                "recording: {} of {} · {} destinations · {} traffic classes",
                human::clock_duration(recorder.elapsed_seconds()),
                human::clock_duration(duration.as_secs_f64()),
                recorder.destinations(),
                recorder.classes()
            );
        }
        drop(programs);
        if recorder.elapsed_seconds() == 0.0 {
            anyhow::bail!("stopped before the first poll: nothing recorded, nothing written");
        }
        if interrupted {
            eprintln!(
                "interrupted: writing the {} recorded",
                human::clock_duration(recorder.elapsed_seconds())
            );
        }
        let baseline = recorder.finish(&service::hostname());
        file::write_atomically(output, &file::render(&baseline))
            .with_context(|| format!("cannot write the baseline to {}", output.display()))?;
        eprintln!(
            "wrote {} rules to {} (review: bitsecure baseline show --file {})",
            baseline.rules.len(),
            output.display(),
            output.display()
        );
        Ok(())
    })
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Now, to the second (a baseline's start time needs no more).
fn timestamp_now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}
