//! `bitsecure baseline record`: attach, poll, learn for a while (and, if asked, on until no new
//! traffic class came for a quiet period), write a baseline file or extend one.

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

/// How long a recording goes on.
#[derive(Debug, Clone, Copy)]
pub struct RecordLength {
    /// At least this long.
    pub duration: Duration,
    /// Then on until no new traffic class came for this long (`None`: stop at `duration`)...
    pub until_quiet: Option<Duration>,
    /// ...but never longer than this in all.
    pub max: Duration,
}

/// The recording's consumer of flow deltas: the first poll only sets the starting counters;
/// each next one is recorded, with its progress shown, until the [`RecordLength`] is reached.
struct Recording {
    recorder: Recorder,
    length: RecordLength,
    /// Polls so far, the first included.
    polls: usize,
    /// Recorded seconds when the latest new traffic class appeared.
    last_new_class: f64,
    progress: Progress,
}

/// How a recording shows its progress: on a terminal a bar with its ETA (indicatif), redrawn
/// in place; elsewhere (a log, a pipe) a line at each tenth of the way and when a new traffic
/// class appears, not one per poll.
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines {
        /// Recorded seconds of the next periodic line.
        next_at: f64,
        classes: usize,
    },
}

/// Tenths of a second: the unit of the bar's position.
const BAR_UNITS_PER_SECOND: f64 = 10.0;

impl Progress {
    fn new(length: &RecordLength) -> Self {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return Self::Lines {
                next_at: 0.0,
                classes: 0,
            };
        }
        let bar = indicatif::ProgressBar::new(
            (length.duration.as_secs_f64() * BAR_UNITS_PER_SECOND) as u64,
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "recording [{bar:30}] {percent:>3}% · ETA {eta} · {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self::Bar(bar)
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Recording {
    fn quiet_seconds(&self) -> f64 {
        self.recorder.elapsed_seconds() - self.last_new_class
    }

    /// When the recording will end if no new class comes (seconds).
    fn expected_end(&self) -> f64 {
        let minimum = self.length.duration.as_secs_f64();
        match self.length.until_quiet {
            None => minimum,
            Some(quiet) => (self.last_new_class + quiet.as_secs_f64())
                .max(minimum)
                .min(self.length.max.as_secs_f64()),
        }
    }

    fn step_done(&mut self) {
        self.polls += 1;
        if self.polls <= 1 {
            return;
        }
        let elapsed = self.recorder.elapsed_seconds();
        let quiet = match self.length.until_quiet {
            Some(needed) => format!(
                " · no new class for {} of {}",
                human::clock_duration(self.quiet_seconds()),
                human::clock_duration(needed.as_secs_f64())
            ),
            None => String::new(),
        };
        let classes = self.recorder.classes();
        let found = format!(
            "{} destinations · {classes} traffic classes{quiet}",
            self.recorder.destinations()
        );
        let end = self.expected_end();
        match &mut self.progress {
            Progress::Bar(bar) => {
                bar.set_length((end * BAR_UNITS_PER_SECOND) as u64);
                bar.set_position((elapsed.min(end) * BAR_UNITS_PER_SECOND) as u64);
                bar.set_message(found);
            }
            Progress::Lines {
                next_at,
                classes: shown,
            } => {
                if elapsed >= *next_at || classes > *shown {
                    *next_at = elapsed + end / 10.0;
                    *shown = classes;
                    eprintln!(
                        "recording: {} of {} · {found}",
                        human::clock_duration(elapsed),
                        human::clock_duration(end)
                    );
                }
            }
        }
    }
}

impl Consumer for Recording {
    fn on_poll(&mut self, polled: &Polled, _metrics: &Metrics) {
        if self.polls > 0 {
            let classes = self.recorder.classes();
            self.recorder.record_step(&polled.deltas);
            if self.recorder.classes() > classes {
                self.last_new_class = self.recorder.elapsed_seconds();
            }
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
        let elapsed = self.recorder.elapsed_seconds();
        if self.polls <= 1 || elapsed < self.length.duration.as_secs_f64() {
            return false;
        }
        match self.length.until_quiet {
            None => true,
            Some(quiet) => {
                self.quiet_seconds() >= quiet.as_secs_f64()
                    || elapsed >= self.length.max.as_secs_f64()
            }
        }
    }
}

/// `bitsecure baseline record`: learns for `length`, showing progress, and writes the
/// baseline to `output` (atomically, keeping a backup of an existing file), or with `resume`
/// adds the traffic classes `output` lacks to it (its rules and comments kept). Ctrl-C stops
/// early and writes what was recorded so far.
pub fn record(
    config: Config,
    length: RecordLength,
    output: &Path,
    resume: bool,
) -> anyhow::Result<()> {
    // A resumed file must be there and valid before anything is recorded.
    let existing = resume
        .then(|| {
            let text = std::fs::read_to_string(output).with_context(|| {
                format!(
                    "nothing to resume: cannot read {} (record without --resume first)",
                    output.display()
                )
            })?;
            file::parse(&text, &output.display().to_string())?;
            anyhow::Ok(text)
        })
        .transpose()?;
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
        let until = match length.until_quiet {
            Some(quiet) => format!(
                ", then on until no new traffic class came for {} (at most {} in all)",
                human::clock_duration(quiet.as_secs_f64()),
                human::clock_duration(length.max.as_secs_f64())
            ),
            None => String::new(),
        };
        eprintln!(
            "recording normal traffic for {} (a poll every {step} s){until}; Ctrl-C stops \
             early and keeps what was recorded",
            human::clock_duration(length.duration.as_secs_f64())
        );
        let mut recording = Recording {
            recorder: Recorder::new(step, timestamp_now(), 2000)
                .with_name_networks(config.baseline.name_networks()),
            length,
            polls: 0,
            last_new_class: 0.0,
            progress: Progress::new(&length),
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
            Ok(Ok(recording)) => {
                recording.progress.finish();
                recording.recorder
            }
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
        let (text, written) = match &existing {
            Some(existing) => {
                let origin = output.display().to_string();
                let known: std::collections::HashSet<_> = file::parse(existing, &origin)?
                    .rules
                    .iter()
                    .map(|rule| rule.identity())
                    .collect();
                let new: Vec<_> = baseline
                    .rules
                    .into_iter()
                    .filter(|rule| !known.contains(&rule.identity()))
                    .collect();
                (file::append_rules(existing, &origin, &new)?, new.len())
            }
            None => (file::render(&baseline), baseline.rules.len()),
        };
        file::write_atomically(output, &text)
            .with_context(|| format!("cannot write the baseline to {}", output.display()))?;
        eprintln!(
            "{} {written} rules to {} (review: bitsecure baseline show --file {})",
            if resume { "added" } else { "wrote" },
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
