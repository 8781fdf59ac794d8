//! `bitsecure baseline record`: attach, poll, learn for a while, write a baseline file.

use std::{path::Path, sync::mpsc, thread, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    poll_loop::{Consumer, Control, LastPoll, poll_loop},
    runtime,
    setup::attach,
};
use crate::{
    baseline::{file, recorder::Recorder, service},
    config::Config,
    export::metrics::Metrics,
    flow::Polled,
    human,
    kernel::cgroup,
};

/// The recording's consumer of flow deltas: the first poll only sets the starting counters;
/// each of the next `steps` is recorded, with a progress line.
struct Recording {
    recorder: Recorder,
    duration: Duration,
    steps: usize,
    /// Polls so far, the first included.
    polls: usize,
}

impl Recording {
    fn step_done(&mut self) {
        self.polls += 1;
        if self.polls > 1 {
            eprintln!(
                "recording: {} of {} · {} destinations · {} traffic classes",
                human::clock_duration(self.recorder.elapsed_seconds()),
                human::clock_duration(self.duration.as_secs_f64()),
                self.recorder.destinations(),
                self.recorder.classes()
            );
        }
    }
}

impl Consumer for Recording {
    fn on_poll(&mut self, polled: &Polled, _metrics: &Metrics) {
        if self.polls > 0 {
            self.recorder.record_step(&polled.deltas);
            self.recorder
                .record_packet_sockets(polled.packet_sockets.keys());
            self.recorder.record_asked(&polled.asked);
        }
        self.step_done();
    }

    fn on_failed_poll(&mut self) {
        self.step_done();
    }

    fn done(&self) -> bool {
        self.polls > self.steps
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
        let steps = (duration.as_secs_f64() / step).ceil().max(1.0) as usize;
        eprintln!(
            "recording normal traffic for {} ({steps} polls of {step} s); Ctrl-C stops early \
             and keeps what was recorded",
            human::clock_duration(duration.as_secs_f64())
        );
        let mut recording = Recording {
            recorder: Recorder::new(step, timestamp_now(), 2000)
                .with_name_networks(config.baseline.name_networks()),
            duration,
            steps,
            polls: 0,
        };
        let (control, controls) = mpsc::channel::<Control>();
        let interval = config.poll_interval();
        let worker = thread::Builder::new()
            .name("poller".into())
            .spawn(move || {
                poll_loop(
                    &mut poller,
                    &mut recording,
                    &metrics,
                    interval,
                    &controls,
                    None,
                    LastPoll::Skip,
                );
                recording
            })
            .context("cannot start the poller thread")?;
        let finished = tokio::task::spawn_blocking(move || worker.join());
        tokio::pin!(finished);
        let mut interrupted = false;
        let joined = tokio::select! {
            joined = &mut finished => joined,
            _ = sigint.recv() => { interrupted = true; drop(control); finished.await }
            _ = sigterm.recv() => { interrupted = true; drop(control); finished.await }
        };
        let recorder = match joined {
            Ok(Ok(recording)) => recording.recorder,
            _ => anyhow::bail!("the poller thread failed: nothing recorded, nothing written"),
        };
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

/// Now, to the second (a baseline's start time needs no more).
fn timestamp_now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}
