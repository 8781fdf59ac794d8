//! The agent's baseline life cycle: learn when there is no baseline file, then monitor; reload
//! on SIGHUP or when the file changes, keeping the last good baseline when a reload fails.
//!
//! A producer: every call returns a [`BaselineReport`] of what the service saw and where it
//! stands; it holds no metric handles (the exporter turns reports into metrics and the JSON
//! view).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use log::{error, info, warn};

use super::{
    dns_watch::{NewName, Tunnel},
    file,
    matching::NameNetworks,
    model::Baseline,
    monitor::{
        ChangedExecutable, Monitor, MovedName, RuleStatus, Unexpected, UnexpectedIncrement, Upgrade,
    },
    recorder::Recorder,
    risk::{Grades, Reason, Risk},
    settle::{self, Maturity, SettleConfig, Stage},
};
use crate::flow::{PacketSocketClass, Polled, SeriesKey};

/// Most traffic classes a learning run keeps (the rest is counted and left out).
const MAX_LEARNED_CLASSES: usize = 2000;

/// What the service saw since its last report, and where it stands now.
#[derive(Debug, Default)]
pub struct BaselineReport {
    /// A baseline was put in force (loaded, reloaded or learnt) at this Unix time: the
    /// per-rule series start afresh.
    pub loaded_at: Option<f64>,
    /// Loads that failed (the previous baseline stays in force).
    pub reload_failures: u64,
    /// Unexpected traffic of this step.
    pub unexpected_traffic: Vec<UnexpectedIncrement>,
    /// Packet and raw sockets held at this step that the baseline does not expect (none
    /// unless monitoring); `None` when the report is not of a step (a reload).
    pub unexpected_packet_sockets: Option<Vec<PacketSocketClass>>,
    /// Departures first seen since the last report, with their risk.
    pub departures: Vec<(Risk, Reason)>,
    pub state: BaselineState,
}

/// Where the service stands.
#[derive(Debug, Default)]
pub enum BaselineState {
    /// No usable baseline and not learning: traffic is counted, nothing compared.
    #[default]
    Off,
    Learning {
        remaining_seconds: f64,
    },
    Monitoring {
        rules: usize,
        unexpected: Vec<Unexpected>,
        changed_executables: Vec<ChangedExecutable>,
        new_names: Vec<NewName>,
        tunnels: Vec<Tunnel>,
        moved_names: Vec<MovedName>,
        statuses: Vec<RuleStatus>,
        /// Settling or stable, with its evidence.
        maturity: Box<Maturity>,
        /// Rules by address that could be by name.
        upgrades: Vec<Upgrade>,
    },
}

impl BaselineState {
    /// "learning", "monitoring" or "off", as the JSON API says it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Learning { .. } => "learning",
            Self::Monitoring { .. } => "monitoring",
        }
    }
}

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
    /// Distinct names under one domain per minute above which a process tunnels through DNS.
    pub dns_tunnel_names_per_minute: u64,
    /// How wide the networks are that rules by name remember.
    pub name_networks: NameNetworks,
    /// The risk of each reason a departure has.
    pub grades: Grades,
    /// How long the baseline settles after learning.
    pub settle: SettleConfig,
    /// A rule not seen this long is stale.
    pub stale_seconds: f64,
}

pub struct BaselineService {
    settings: Settings,
    mode: Mode,
    /// Modification time of the file in force, to notice edits.
    loaded_mtime: Option<SystemTime>,
    /// What happened since the last report.
    pending: BaselineReport,
    /// Unexpected packet-socket classes already counted as departures.
    reported_packet_sockets: std::collections::HashSet<PacketSocketClass>,
    /// The last attempt to write rules learnt while settling failed (warned once).
    settle_write_failed: bool,
}

impl BaselineService {
    /// Loads the baseline file, or starts learning when there is none.
    pub fn start(settings: Settings, now_unix: f64) -> (Self, BaselineReport) {
        let mut service = Self {
            settings,
            mode: Mode::Off,
            loaded_mtime: None,
            pending: BaselineReport::default(),
            reported_packet_sockets: std::collections::HashSet::new(),
            settle_write_failed: false,
        };
        if service.settings.path.exists() {
            service.load("start", now_unix);
        } else if service.settings.learn_seconds > 0.0 {
            info!(
                "no baseline at {}: learning normal traffic for {:.0} s, then monitoring",
                service.settings.path.display(),
                service.settings.learn_seconds
            );
            service.mode = Mode::Learning(Box::new(
                Recorder::new(
                    service.settings.step_seconds,
                    timestamp(now_unix),
                    MAX_LEARNED_CLASSES,
                )
                .with_name_networks(service.settings.name_networks),
            ));
        } else {
            warn!(
                "no baseline at {} and learning is off (baseline.learn_seconds = 0): \
                 traffic is counted but not compared",
                service.settings.path.display()
            );
        }
        let report = service.report(now_unix);
        (service, report)
    }

    /// Feeds one poll's traffic.
    pub fn on_step(&mut self, polled: &Polled, now_unix: f64) -> BaselineReport {
        if self.file_changed() {
            self.load("file changed", now_unix);
        }
        self.pending.unexpected_packet_sockets = Some(Vec::new());
        match &mut self.mode {
            Mode::Off => {}
            Mode::Learning(recorder) => {
                recorder.record_step(&polled.deltas);
                recorder.record_packet_sockets(polled.packet_sockets.keys());
                recorder.record_asked(&polled.asked);
                if recorder.elapsed_seconds() >= self.settings.learn_seconds {
                    self.finish_learning(now_unix);
                }
            }
            Mode::Monitoring(monitor) => {
                self.pending.unexpected_traffic = monitor.observe_step(&polled.deltas, now_unix);
                monitor.observe_asked(&polled.asked, now_unix);
                let packet_sockets =
                    monitor.unexpected_packet_sockets(polled.packet_sockets.keys());
                self.pending.departures.extend(monitor.take_departures());
                let packet_socket_risk = self.settings.grades.of(Reason::PacketSocket);
                for class in &packet_sockets {
                    if self.reported_packet_sockets.insert(class.clone()) {
                        self.pending
                            .departures
                            .push((packet_socket_risk, Reason::PacketSocket));
                    }
                }
                self.pending.unexpected_packet_sockets = Some(packet_sockets);
                self.settle(now_unix);
            }
        }
        self.report(now_unix)
    }

    /// While the baseline settles, its low-risk newcomers join it (marked `learnt_late`): the
    /// file is extended like `baseline accept` does (comments kept, atomic, `.bak`), reloaded,
    /// and their traffic of this step is not counted as unexpected.
    fn settle(&mut self, now_unix: f64) {
        let Mode::Monitoring(monitor) = &self.mode else {
            return;
        };
        let stage = settle::maturity(monitor.baseline(), &self.settings.settle, now_unix).stage;
        if stage != Stage::Settling {
            return;
        }
        let late_entries: Vec<Unexpected> = monitor
            .unexpected()
            .into_iter()
            .filter(settle::learns)
            .collect();
        let rules = settle::late_rules(&late_entries, &timestamp(now_unix).to_string());
        if rules.is_empty() {
            return;
        }
        let path = &self.settings.path;
        let origin = path.display().to_string();
        let written = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| file::append_rules(&text, &origin, &rules).map_err(|e| e.to_string()))
            .and_then(|text| file::write_atomically(path, &text).map_err(|e| e.to_string()));
        if let Err(problem) = written {
            // Listed for review instead; tried again next poll (a full disk may clear), said
            // once (a read-only file would say it every poll).
            if !self.settle_write_failed {
                warn!(
                    "cannot add the rules learnt while settling to {origin}: {problem}; they \
                     are listed for review instead"
                );
            }
            self.settle_write_failed = true;
            return;
        }
        self.settle_write_failed = false;
        for rule in &rules {
            info!(
                "learnt late (low risk, while the baseline settles): {}",
                rule.describe()
            );
        }
        self.load("learnt while settling", now_unix);
        let learnt: HashSet<SeriesKey> = late_entries.iter().map(Unexpected::series).collect();
        self.pending
            .unexpected_traffic
            .retain(|increment| !learnt.contains(&SeriesKey::of(&increment.key)));
    }

    /// Reloads the file (SIGHUP); on failure the baseline in force stays.
    pub fn reload(&mut self, why: &str, now_unix: f64) -> BaselineReport {
        self.load(why, now_unix);
        self.report(now_unix)
    }

    /// (Re)loads the file; on failure the baseline in force stays.
    fn load(&mut self, why: &str, now_unix: f64) {
        let mtime = modified(&self.settings.path);
        match file::load(&self.settings.path) {
            Ok(baseline) => {
                info!(
                    "baseline {} loaded ({why}): {} rules",
                    self.settings.path.display(),
                    baseline.rules.len()
                );
                self.install(baseline, now_unix);
            }
            Err(load_error) => {
                self.pending.reload_failures += 1;
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
    }

    fn install(&mut self, baseline: Baseline, now_unix: f64) {
        self.pending.loaded_at = Some(now_unix);
        match &mut self.mode {
            Mode::Monitoring(monitor) => monitor.replace_baseline(baseline, now_unix),
            _ => {
                self.mode = Mode::Monitoring(Box::new(
                    Monitor::new(
                        baseline,
                        self.settings.step_seconds,
                        self.settings.max_unexpected,
                        now_unix,
                    )
                    .with_tunnel_threshold(self.settings.dns_tunnel_names_per_minute)
                    .with_name_networks(self.settings.name_networks)
                    .with_grades(self.settings.grades.clone())
                    .with_stale_after(self.settings.stale_seconds),
                ));
            }
        }
    }

    fn finish_learning(&mut self, now_unix: f64) {
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
        self.install(baseline, now_unix);
    }

    fn file_changed(&self) -> bool {
        if !matches!(self.mode, Mode::Monitoring(_) | Mode::Off) {
            return false;
        }
        let current = modified(&self.settings.path);
        current.is_some() && current != self.loaded_mtime
    }

    /// What happened since the last report, and where the service stands.
    fn report(&mut self, now_unix: f64) -> BaselineReport {
        let state = match &self.mode {
            Mode::Off => BaselineState::Off,
            Mode::Learning(recorder) => BaselineState::Learning {
                remaining_seconds: (self.settings.learn_seconds - recorder.elapsed_seconds())
                    .max(0.0),
            },
            Mode::Monitoring(monitor) => BaselineState::Monitoring {
                rules: monitor.baseline().rules.len(),
                unexpected: monitor.unexpected(),
                changed_executables: monitor.changed_executables(),
                new_names: monitor.new_names(),
                tunnels: monitor.tunnels(),
                moved_names: monitor.moved_names(),
                statuses: monitor.statuses(now_unix),
                upgrades: monitor.upgrades(),
                maturity: Box::new(settle::maturity(
                    monitor.baseline(),
                    &self.settings.settle,
                    now_unix,
                )),
            },
        };
        BaselineReport {
            state,
            ..std::mem::take(&mut self.pending)
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
        flow::{FlowDelta, RemoteName, Traffic},
        naming::{App, Source},
    };

    fn pool_delta(app: App, sent_bytes: u64) -> FlowDelta {
        FlowDelta {
            process: "xmrig".into(),
            exe: None,
            exe_sha256: None,
            cgroup: None,
            new_flow: false,
            remote: "10.0.0.7".parse().unwrap(),
            port: Some(3333),
            protocol: 6,
            app,
            name: Some(RemoteName {
                name: "pool.example.org".into(),
                source: Source::Dns,
            }),
            account: None,
            traffic: Traffic {
                sent_bytes,
                ..Traffic::default()
            },
        }
    }

    #[test]
    fn unexpected_and_rule_metrics_carry_the_app() {
        let dir = crate::fsutil::TempDir::new("service-app");
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
            dns_tunnel_names_per_minute: 100,
            name_networks: NameNetworks::default(),
            grades: Grades::default(),
            settle: SettleConfig::default(),
            stale_seconds: 604_800.0,
        };
        let (mut service, report) = BaselineService::start(settings, 1000.0);
        metrics.publish_baseline(report);
        let report = service.on_step(
            &Polled {
                deltas: vec![pool_delta(App::Stratum, 100), pool_delta(App::Http, 7)],
                ..Polled::default()
            },
            1001.0,
        );
        metrics.publish_baseline(report);
        let text = metrics.render().unwrap();
        // The prometheus encoder writes labels in alphabetical order.
        // The pool's own host and port in another application: low risk, a new port.
        let labels = r#"app="http",port="3333",process="xmrig",protocol="tcp",reason="new-port",remote="10.0.0.7",risk="low""#;
        for expected in [
            format!("bitsecure_unexpected_sent_bytes_total{{{labels}}} 7\n"),
            format!("bitsecure_unexpected_last_seen_timestamp_seconds{{{labels}}} 1001\n"),
            "bitsecure_unexpected_flows 1\n".to_owned(),
            "bitsecure_alertable_departures_total{reason=\"new-port\",risk=\"low\"} 1\n".to_owned(),
            "bitsecure_rule_silence_seconds{app=\"stratum\",port=\"3333\",process=\"xmrig\",\
             protocol=\"tcp\",remote=\"pool.example.org\"} 0\n"
                .to_owned(),
        ] {
            assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
        }
        let unexpected = metrics.api.view().unexpected;
        assert_eq!(unexpected.len(), 1);
        assert_eq!(unexpected[0].name.as_deref(), Some("pool.example.org"));
    }

    #[test]
    fn low_risk_newcomers_join_a_settling_baseline_and_nothing_else_does() {
        let dir = crate::fsutil::TempDir::new("service-settle");
        let path = dir.join("baseline.toml");
        // Learnt from 900 to 1000 (Unix time); a comment of the user's.
        let learnt = "format_version = 1\n[recording]\nstarted_at = \"1970-01-01T00:15:00Z\"\n\
             duration_seconds = 100.0\nstep_seconds = 1.0\nhost = \"rig\"\n\n\
             # the pool, checked by hand\n[[rule]]\nprocess = \"xmrig\"\n\
             remote = \"pool.example.org\"\nport = 3333\nprotocol = \"tcp\"\napp = \"stratum\"\n";
        let settings = |path: &Path| Settings {
            path: path.to_owned(),
            learn_seconds: 0.0,
            max_unexpected: 10,
            step_seconds: 1.0,
            dns_tunnel_names_per_minute: 100,
            name_networks: NameNetworks::default(),
            grades: Grades::default(),
            settle: SettleConfig {
                quiet_seconds: 3600.0,
                max_seconds: 86_400.0,
            },
            stale_seconds: 604_800.0,
        };
        let intruder = FlowDelta {
            process: "backdoor".into(),
            name: None,
            remote: "198.51.100.7".parse().unwrap(),
            ..pool_delta(App::Http, 5000)
        };
        let step = Polled {
            deltas: vec![pool_delta(App::Http, 7), intruder],
            ..Polled::default()
        };

        // Settling (10 s after learning): the miner's HTTP to its pool's host (low: a new
        // port) joins the file; the new program (high) is listed.
        std::fs::write(&path, learnt).unwrap();
        let metrics = Metrics::new().unwrap();
        let (mut service, report) = BaselineService::start(settings(&path), 1010.0);
        metrics.publish_baseline(report);
        metrics.publish_baseline(service.on_step(&step, 1011.0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(learnt), "the file only grows:\n{text}");
        let added = crate::baseline::file::parse(&text, "t").unwrap().rules;
        assert_eq!(added.len(), 2, "{text}");
        assert_eq!(
            added[1].describe(),
            "xmrig → pool.example.org:3333/tcp (http)"
        );
        assert_eq!(
            added[1].learnt_late.as_deref(),
            Some("1970-01-01T00:16:51Z")
        );
        let view = metrics.api.view();
        let listed: Vec<&str> = view.unexpected.iter().map(|e| e.process.as_str()).collect();
        assert_eq!(listed, ["backdoor"]);
        let maturity = view.maturity.unwrap();
        assert_eq!((maturity.stage, maturity.learnt_late), (Stage::Settling, 1));
        let exposition = metrics.render().unwrap();
        assert!(
            exposition.contains("bitsecure_baseline_settling 1\n"),
            "{exposition}"
        );
        assert!(exposition.contains("bitsecure_baseline_learnt_late_rules 1\n"));
        assert!(
            !exposition.contains(
                "bitsecure_unexpected_sent_bytes_total{app=\"http\",port=\"3333\",process=\"xmrig\""
            ),
            "learnt late, never unexpected:\n{exposition}"
        );
        assert!(exposition.contains("process=\"backdoor\""));

        // Stable (settled long ago): the same newcomer is listed for review, the file stays.
        std::fs::write(&path, learnt).unwrap();
        let metrics = Metrics::new().unwrap();
        let (mut service, report) = BaselineService::start(settings(&path), 200_000.0);
        metrics.publish_baseline(report);
        metrics.publish_baseline(service.on_step(&step, 200_001.0));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), learnt);
        let view = metrics.api.view();
        assert_eq!(view.unexpected.len(), 2);
        assert_eq!(view.maturity.unwrap().stage, Stage::Stable);
    }
}
