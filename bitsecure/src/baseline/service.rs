//! The agent's baseline life cycle: learn when there is no baseline file, then monitor; reload
//! on SIGHUP or when the file changes, keeping the last good baseline when a reload fails.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use log::{error, info, warn};

use super::{
    file,
    model::Baseline,
    monitor::{Monitor, Unexpected},
    recorder::Recorder,
};
use crate::{export::metrics::BaselineMetrics, flow::FlowDelta};

/// Most traffic classes a learning run keeps (the rest is counted and left out).
const MAX_LEARNED_CLASSES: usize = 2000;

/// What the HTTP API shows.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BaselineView {
    /// "learning", "monitoring" or "off".
    pub mode: String,
    pub unexpected: Vec<Unexpected>,
}

pub type SharedView = Arc<Mutex<BaselineView>>;

enum Mode {
    /// No usable baseline and not learning: traffic is counted, nothing compared.
    Off,
    Learning(Box<Recorder>),
    Monitoring(Box<Monitor>),
}

pub struct Settings {
    pub path: PathBuf,
    pub learn_seconds: f64,
    pub max_unexpected: usize,
    pub step_seconds: f64,
}

pub struct BaselineService {
    settings: Settings,
    mode: Mode,
    /// Modification time of the file in force, to notice edits.
    loaded_mtime: Option<SystemTime>,
    view: SharedView,
}

impl BaselineService {
    /// Loads the baseline file, or starts learning when there is none.
    pub fn start(settings: Settings, metrics: &BaselineMetrics, now_unix: f64) -> Self {
        let mut service = Self {
            settings,
            mode: Mode::Off,
            loaded_mtime: None,
            view: SharedView::default(),
        };
        if service.settings.path.exists() {
            service.reload("start", metrics, now_unix);
        } else if service.settings.learn_seconds > 0.0 {
            info!(
                "no baseline at {}: learning normal traffic for {:.0} s, then monitoring",
                service.settings.path.display(),
                service.settings.learn_seconds
            );
            service.mode = Mode::Learning(Box::new(Recorder::new(
                service.settings.step_seconds,
                timestamp(now_unix),
                MAX_LEARNED_CLASSES,
            )));
        } else {
            warn!(
                "no baseline at {} and learning is off (baseline.learn_seconds = 0): \
                 traffic is counted but not compared",
                service.settings.path.display()
            );
        }
        service.publish(metrics, now_unix);
        service
    }

    pub fn view(&self) -> SharedView {
        Arc::clone(&self.view)
    }

    /// Feeds one poll's traffic.
    pub fn on_step(&mut self, deltas: &[FlowDelta], metrics: &BaselineMetrics, now_unix: f64) {
        if self.file_changed() {
            self.reload("file changed", metrics, now_unix);
        }
        match &mut self.mode {
            Mode::Off => {}
            Mode::Learning(recorder) => {
                recorder.record_step(deltas);
                if recorder.elapsed_seconds() >= self.settings.learn_seconds {
                    self.finish_learning(metrics, now_unix);
                }
            }
            Mode::Monitoring(monitor) => {
                for increment in monitor.observe_step(deltas, now_unix) {
                    let key = &increment.key;
                    let protocol = crate::flow::protocol_label(key.protocol);
                    let (remote, port) = if increment.listed {
                        (
                            crate::flow::remote_label(key.remote),
                            key.port.map(|port| port.to_string()).unwrap_or_default(),
                        )
                    } else {
                        // The list is full: keep the process and app, fold remote and port.
                        ("other".into(), String::new())
                    };
                    let labels = [
                        key.process.as_str(),
                        &remote,
                        &port,
                        &protocol,
                        key.app.as_str(),
                    ];
                    metrics
                        .unexpected_sent_bytes
                        .with_label_values(&labels)
                        .inc_by(increment.traffic.sent_bytes);
                    metrics
                        .unexpected_received_bytes
                        .with_label_values(&labels)
                        .inc_by(increment.traffic.received_bytes);
                }
            }
        }
        self.publish(metrics, now_unix);
    }

    /// (Re)loads the file; on failure the baseline in force stays.
    pub fn reload(&mut self, why: &str, metrics: &BaselineMetrics, now_unix: f64) {
        let mtime = modified(&self.settings.path);
        match file::load(&self.settings.path) {
            Ok(baseline) => {
                info!(
                    "baseline {} loaded ({why}): {} rules",
                    self.settings.path.display(),
                    baseline.rules.len()
                );
                metrics.reset_rules();
                metrics.loaded_timestamp.set(now_unix);
                self.install(baseline, now_unix);
            }
            Err(load_error) => {
                metrics.reload_failures.inc();
                let kept = match self.mode {
                    Mode::Monitoring(_) => "the previous baseline stays in force",
                    Mode::Learning(_) => "learning goes on",
                    Mode::Off => "nothing is compared until it is fixed",
                };
                error!("baseline not loaded ({why}): {load_error}; {kept}");
            }
        }
        // Remember the failed version too, so a bad file is reported once, not every poll.
        self.loaded_mtime = mtime;
        self.publish(metrics, now_unix);
    }

    fn install(&mut self, baseline: Baseline, now_unix: f64) {
        match &mut self.mode {
            Mode::Monitoring(monitor) => monitor.replace_baseline(baseline, now_unix),
            _ => {
                self.mode = Mode::Monitoring(Box::new(Monitor::new(
                    baseline,
                    self.settings.step_seconds,
                    self.settings.max_unexpected,
                    now_unix,
                )));
            }
        }
    }

    fn finish_learning(&mut self, metrics: &BaselineMetrics, now_unix: f64) {
        let Mode::Learning(recorder) = std::mem::replace(&mut self.mode, Mode::Off) else {
            return;
        };
        let baseline = recorder.finish(&hostname());
        let text = file::render(&baseline);
        if let Some(parent) = self.settings.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match file::write_atomically(&self.settings.path, &text) {
            Ok(()) => {
                info!(
                    "learned a baseline of {} rules, written to {}; now monitoring",
                    baseline.rules.len(),
                    self.settings.path.display()
                );
                self.loaded_mtime = modified(&self.settings.path);
            }
            Err(write_error) => error!(
                "cannot write the learned baseline to {}: {write_error}; monitoring with it in memory",
                self.settings.path.display()
            ),
        }
        metrics.reset_rules();
        metrics.loaded_timestamp.set(now_unix);
        self.install(baseline, now_unix);
    }

    fn file_changed(&self) -> bool {
        if !matches!(self.mode, Mode::Monitoring(_) | Mode::Off) {
            return false;
        }
        let current = modified(&self.settings.path);
        current.is_some() && current != self.loaded_mtime
    }

    /// Updates the gauges and the HTTP view.
    fn publish(&self, metrics: &BaselineMetrics, now_unix: f64) {
        let mut view = BaselineView::default();
        match &self.mode {
            Mode::Off => {
                view.mode = "off".into();
                metrics.learning.set(0);
                metrics.rules.set(0);
            }
            Mode::Learning(recorder) => {
                view.mode = "learning".into();
                metrics.learning.set(1);
                metrics
                    .learning_remaining
                    .set((self.settings.learn_seconds - recorder.elapsed_seconds()).max(0.0));
            }
            Mode::Monitoring(monitor) => {
                view.mode = "monitoring".into();
                metrics.learning.set(0);
                metrics.learning_remaining.set(0.0);
                metrics.rules.set(monitor.baseline().rules.len() as i64);
                view.unexpected = monitor.unexpected();
                metrics.unexpected_flows.set(view.unexpected.len() as i64);
                // Rebuilt from the list, so accepted entries disappear from the gauges.
                metrics.unexpected_first_seen.reset();
                metrics.unexpected_last_seen.reset();
                for entry in &view.unexpected {
                    let port = entry.port.map(|port| port.to_string()).unwrap_or_default();
                    let labels = [
                        entry.process.as_str(),
                        entry.remote.as_str(),
                        port.as_str(),
                        entry.protocol.as_str(),
                        entry.app.as_str(),
                    ];
                    metrics
                        .unexpected_first_seen
                        .with_label_values(&labels)
                        .set(entry.first_seen_unix);
                    metrics
                        .unexpected_last_seen
                        .with_label_values(&labels)
                        .set(entry.last_seen_unix);
                }
                for status in monitor.statuses(now_unix) {
                    let rule = [
                        status.process.as_str(),
                        status.remote.as_str(),
                        status.port.as_str(),
                        status.protocol.as_str(),
                        status.app.as_str(),
                    ];
                    let with = |direction: &'static str| {
                        [rule[0], rule[1], rule[2], rule[3], rule[4], direction]
                    };
                    for (direction, rate, reference, deviation) in [
                        (
                            "sent",
                            status.sent_rate,
                            status.reference_sent,
                            status.sent_deviation,
                        ),
                        (
                            "received",
                            status.received_rate,
                            status.reference_received,
                            status.received_deviation,
                        ),
                    ] {
                        metrics
                            .rule_rate
                            .with_label_values(&with(direction))
                            .set(rate);
                        if let Some(reference) = reference {
                            metrics
                                .rule_reference
                                .with_label_values(&with(direction))
                                .set(reference);
                        }
                        if let Some(deviation) = deviation {
                            metrics
                                .rule_deviation
                                .with_label_values(&with(direction))
                                .set(deviation);
                        }
                    }
                    metrics
                        .rule_silence_seconds
                        .with_label_values(&rule)
                        .set(status.silence_seconds);
                    metrics
                        .rule_silence_ratio
                        .with_label_values(&rule)
                        .set(status.silence_ratio);
                    if let Some(cadence) = status.expected_cadence {
                        metrics
                            .rule_expected_cadence
                            .with_label_values(&rule)
                            .set(cadence);
                    }
                    if let Some(cadence) = status.observed_cadence {
                        metrics
                            .rule_observed_cadence
                            .with_label_values(&rule)
                            .set(cadence);
                    }
                }
            }
        }
        if let Ok(mut shared) = self.view.lock() {
            *shared = view;
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// A Unix time as a timestamp, to the second.
fn timestamp(unix: f64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(unix as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// This machine's name, for the baseline's `[recording] host`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::metrics::Metrics,
        flow::{RemoteName, Traffic},
        naming::{App, Source},
    };

    fn pool_delta(app: App, sent_bytes: u64) -> FlowDelta {
        FlowDelta {
            process: "xmrig".into(),
            exe: None,
            new_flow: false,
            remote: "10.0.0.7".parse().unwrap(),
            port: Some(3333),
            protocol: 6,
            app,
            name: Some(RemoteName {
                name: "pool.example.org".into(),
                source: Source::Dns,
            }),
            traffic: Traffic {
                sent_bytes,
                ..Traffic::default()
            },
        }
    }

    #[test]
    fn unexpected_and_rule_metrics_carry_the_app() {
        let dir = std::env::temp_dir().join(format!(
            "bitsecure-service-app-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("baseline.toml");
        std::fs::write(
            &path,
            "format_version = 1\n[[rule]]\nprocess = \"xmrig\"\nremote = \"pool.example.org\"\n\
             port = 3333\nprotocol = \"tcp\"\napp = \"stratum\"\n",
        )
        .unwrap();
        let metrics = Metrics::new().unwrap();
        let settings = Settings {
            path,
            learn_seconds: 0.0,
            max_unexpected: 10,
            step_seconds: 1.0,
        };
        let mut service = BaselineService::start(settings, &metrics.baseline, 1000.0);
        service.on_step(
            &[pool_delta(App::Stratum, 100), pool_delta(App::Http, 7)],
            &metrics.baseline,
            1001.0,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let text = metrics.render().unwrap();
        // The prometheus encoder writes labels in alphabetical order.
        let labels = r#"app="http",port="3333",process="xmrig",protocol="tcp",remote="10.0.0.7""#;
        for expected in [
            format!("bitsecure_unexpected_sent_bytes_total{{{labels}}} 7\n"),
            format!("bitsecure_unexpected_last_seen_timestamp_seconds{{{labels}}} 1001\n"),
            "bitsecure_unexpected_flows 1\n".to_owned(),
            "bitsecure_rule_silence_seconds{app=\"stratum\",port=\"3333\",process=\"xmrig\",\
             protocol=\"tcp\",remote=\"pool.example.org\"} 0\n"
                .to_owned(),
        ] {
            assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
        }
        let unexpected = service.view().lock().unwrap().unexpected.clone();
        assert_eq!(unexpected.len(), 1);
        assert_eq!(unexpected[0].name.as_deref(), Some("pool.example.org"));
    }
}
