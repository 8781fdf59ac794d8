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
    caps, cgroup,
    config::Config,
    flow_table::FlowTable,
    http,
    kernel::{self, AttachedPrograms, KernelLogger, MapCapacities},
    metrics::Metrics,
    poller::{PollReport, Poller},
};

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
    let listener = http::bind(config.agent.listen).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let (programs, poller, kernel_logger) = attach(&config, &cgroup, &metrics)?;
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
            .spawn(move || poll_loop(poller, baseline, &metrics, interval, &controls))
            .context("cannot start the poller thread")?
    };
    caps::restrict_thread_to(&[]).context("cannot drop capabilities")?;
    info!(
        "capabilities dropped: the poller keeps CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, the rest none"
    );
    let http_task = tokio::spawn(http::serve(listener, Arc::clone(&metrics), view));
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
    info!("programs detached; bye");
    Ok(())
}

/// Loads and attaches the programs and builds the poller around their maps.
fn attach(
    config: &Config,
    cgroup: &Path,
    metrics: &Metrics,
) -> anyhow::Result<(AttachedPrograms, Poller, KernelLogger)> {
    let capacities = MapCapacities {
        flows: config.kernel.flow_capacity,
        sockets: config.kernel.socket_capacity,
    };
    let (programs, maps, kernel_logger) = kernel::load_and_attach(cgroup, &capacities)?;
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
    let table = FlowTable::new(config.metrics.max_remotes, config.metrics.max_series);
    let poller = Poller::new(maps, table, config.poll_interval())?;
    Ok((programs, poller, kernel_logger))
}

/// Polls every `interval` until the control channel closes, then once more.
fn poll_loop(
    mut poller: Poller,
    mut baseline: BaselineService,
    metrics: &Metrics,
    interval: Duration,
    controls: &mpsc::Receiver<Control>,
) {
    let mut next_poll = Instant::now();
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        match controls.recv_timeout(wait) {
            Ok(Control::Reload) => {
                baseline.reload("SIGHUP", &metrics.baseline, unix_now());
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // A slow poll must not make the next ones pile up.
        next_poll = (next_poll + interval).max(Instant::now());
        if let Some(report) = poll_once(&mut poller, metrics) {
            baseline.on_step(&report.deltas, &metrics.baseline, unix_now());
        }
    }
    // The last traffic still goes into the counters.
    poll_once(&mut poller, metrics);
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
        let (programs, mut poller, _logger) = attach(&config, &cgroup, &metrics)?;
        let step = config.agent.poll_interval_seconds;
        let mut recorder = Recorder::new(step, timestamp_now(), 2000);
        let steps = (duration.as_secs_f64() / step).ceil().max(1.0) as usize;
        eprintln!(
            "recording normal traffic for {} ({steps} polls of {step} s); Ctrl-C stops early \
             and keeps what was recorded",
            format_duration(duration.as_secs_f64())
        );
        let mut ticker = tokio::time::interval(config.poll_interval());
        // The first tick is immediate: it only sets the starting counters.
        ticker.tick().await;
        poll_once(&mut poller, &metrics);
        let mut interrupted = false;
        for _ in 0..steps {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = sigint.recv() => { interrupted = true; }
                _ = sigterm.recv() => { interrupted = true; }
            }
            if interrupted {
                break;
            }
            if let Some(report) = poll_once(&mut poller, &metrics) {
                recorder.record_step(&report.deltas);
            }
            eprintln!(
                "recording: {} of {} · {} destinations · {} traffic classes",
                format_duration(recorder.elapsed_seconds()),
                format_duration(duration.as_secs_f64()),
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
                format_duration(recorder.elapsed_seconds())
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

/// "1h02m03s" style, for progress lines.
pub fn format_duration(seconds: f64) -> String {
    let total = seconds.round().max(0.0) as u64;
    let (hours, minutes, secs) = (total / 3600, total / 60 % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m{secs:02}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Parses "30m", "90s", "2h", "1h30m" or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds > 0.0 && seconds.is_finite())
            .then(|| Duration::from_secs_f64(seconds))
            .ok_or_else(|| format!("duration must be positive: {text}"));
    }
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => {
                return Err(format!(
                    "bad duration {text:?}: use e.g. 90s, 30m, 2h, 1h30m"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration {text:?}: a number must come before {c}"))?;
        total += value * unit;
        number.clear();
    }
    if !number.is_empty() || total <= 0.0 {
        return Err(format!(
            "bad duration {text:?}: use e.g. 90s, 30m, 2h, 1h30m"
        ));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        for bad in ["", "m", "10x", "5m3", "-3", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(format_duration(3723.0), "1h02m03s");
        assert_eq!(format_duration(65.0), "1m05s");
        assert_eq!(format_duration(7.0), "7s");
    }
}
