//! Agent configuration: TOML, every key optional, unknown keys rejected.
//!
//! The embedded default (`config/bitsecure.toml`) is the documentation of every key.
//! Only reading and checking the settings lives here; what a setting does is its user's business.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    baseline::risk::{Grades, Reason, Risk},
    fsutil::{self, ReadError},
};

use serde::{Deserialize, Serialize};

/// The default configuration, embedded so `bitsecure run` works with no file at all.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/bitsecure.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes are part of the message (and so not `source`s, which would print them twice).
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("config file {path} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("config file {path} is larger than 1 MiB (at least {size} bytes): surely not a config")]
    TooLarge { path: String, size: u64 },
    // toml's message names the line, column and the offending key.
    #[error("invalid config {origin}: {cause}")]
    Parse {
        origin: String,
        cause: toml::de::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The code defaults equal the embedded file; a unit test checks that.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub kernel: KernelConfig,
    pub metrics: MetricsConfig,
    pub baseline: BaselineConfig,
    pub names: NamesConfig,
    pub risk: RiskConfig,
}

/// How much each kind of departure from the baseline matters, and which page.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// Risks whose unexpected traffic fires `BitSecureUnexpectedDestination` (critical: it
    /// pages); the others fire `BitSecureUnexpectedForReview` (info) and are listed.
    pub page: Vec<Risk>,
    /// The risk of each reason; a reason not listed keeps its default.
    pub grades: BTreeMap<Reason, Risk>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            page: vec![Risk::High],
            grades: Reason::ALL
                .into_iter()
                .map(|reason| (reason, reason.default_risk()))
                .collect(),
        }
    }
}

impl RiskConfig {
    pub fn grades(&self) -> Grades {
        Grades::new(self.grades.clone())
    }

    /// Whether departures of `risk` page.
    pub fn pages(&self, risk: Risk) -> bool {
        self.page.contains(&risk)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamesConfig {
    /// Most addresses the address → name map holds (the soonest to expire go first).
    pub max_entries: usize,
    /// Size of the kernel ring buffer that hands DNS responses and first payloads over, in
    /// bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Executables (absolute paths, as /proc/PID/exe shows them) of the system resolvers whose
    /// DNS answers name addresses for every process; any other process's answers name only
    /// its own flows.
    pub trusted_resolvers: Vec<String>,
}

impl Default for NamesConfig {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            ring_buffer_bytes: bitsecure_common::DEFAULT_EVENT_BUFFER_BYTES,
            trusted_resolvers: [
                "/usr/lib/systemd/systemd-resolved",
                "/lib/systemd/systemd-resolved",
                "/usr/sbin/dnsmasq",
                "/usr/sbin/unbound",
                "/usr/sbin/named",
                "/usr/sbin/nscd",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// The baseline file (learned, then edited with `bitsecure baseline accept`).
    pub path: PathBuf,
    /// With no baseline file at start, learn this long, write the file, then monitor; 0 = off.
    pub learn_seconds: f64,
    /// Unexpected traffic classes listed one by one; the rest is counted as folded.
    pub max_unexpected: usize,
    /// More distinct names than this under one domain from one process within a minute is
    /// taken as data tunnelled through DNS.
    pub dns_tunnel_names_per_minute: u64,
    /// A rule by name remembers the IPv4 networks of this prefix length its addresses were in
    /// while learning; an address outside them is a moved name.
    pub name_network_v4: u8,
    /// The same for IPv6.
    pub name_network_v6: u8,
    /// After learning, the baseline settles until no traffic class joined it for this long:
    /// meanwhile low-risk newcomers join it (marked `learnt_late`). 0 = do not settle.
    pub settle_quiet_seconds: f64,
    /// ...and at the latest this long after learning ended.
    pub settle_max_seconds: f64,
    /// A rule that saw no traffic this long is flagged stale, for review.
    pub stale_seconds: f64,
}

impl BaselineConfig {
    pub fn settle(&self) -> crate::baseline::settle::SettleConfig {
        crate::baseline::settle::SettleConfig {
            quiet_seconds: self.settle_quiet_seconds,
            max_seconds: self.settle_max_seconds,
        }
    }

    pub fn name_networks(&self) -> crate::baseline::matching::NameNetworks {
        crate::baseline::matching::NameNetworks {
            v4: self.name_network_v4,
            v6: self.name_network_v6,
        }
    }
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/bitsecure/baseline.toml"),
            learn_seconds: 1800.0,
            max_unexpected: 200,
            dns_tunnel_names_per_minute: 100,
            name_network_v4: 24,
            name_network_v6: 48,
            settle_quiet_seconds: 21_600.0,
            settle_max_seconds: 604_800.0,
            stale_seconds: 604_800.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub poll_interval_seconds: f64,
    /// cgroup v2 directory to attach to; empty = the cgroup v2 root.
    pub cgroup: String,
    /// TLS for the HTTP endpoints: a PEM certificate (chain) and its private key; both or
    /// neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// HTTP basic auth: user → bcrypt hash (`htpasswd -nBC 10 USER`); empty = none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    pub flow_capacity: u32,
    pub peer_capacity: u32,
    pub socket_capacity: u32,
    /// bpffs directory where the maps and program links are pinned, so that counting goes on
    /// while the agent restarts; empty = no pinning (everything goes when the agent exits).
    pub pin_path: String,
    /// Interfaces whose every packet is counted, as names or patterns with `*` (loopback and
    /// ports of another device never are); empty = none.
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub max_remotes: usize,
    pub max_series: usize,
    /// A traffic series that counted nothing for this long is dropped (0 = never).
    pub series_idle_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9977)),
            poll_interval_seconds: 5.0,
            cgroup: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            basic_auth_users: BTreeMap::new(),
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            flow_capacity: bitsecure_common::DEFAULT_FLOW_CAPACITY,
            peer_capacity: bitsecure_common::DEFAULT_PEER_CAPACITY,
            socket_capacity: bitsecure_common::DEFAULT_SOCKET_CAPACITY,
            pin_path: DEFAULT_PIN_PATH.to_owned(),
            interfaces: vec!["*".to_owned()],
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_remotes: 500,
            max_series: 5000,
            series_idle_seconds: 24 * 3600,
        }
    }
}

/// Where the agent pins its maps and links unless configured otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/bitsecure";

const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Self::parse(DEFAULT_CONFIG, "(embedded default)");
        };
        let shown = path.display().to_string();
        let text = fsutil::read_text(path, MAX_CONFIG_BYTES).map_err(|error| match error {
            ReadError::Io(cause) => ConfigError::Read {
                path: shown.clone(),
                cause,
            },
            ReadError::TooLarge { size, .. } => ConfigError::TooLarge {
                path: shown.clone(),
                size,
            },
            ReadError::NotUtf8 { .. } => ConfigError::NotUtf8 {
                path: shown.clone(),
            },
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            origin: origin.to_owned(),
            cause,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let interval = self.agent.poll_interval_seconds;
        if !(0.1..=3600.0).contains(&interval) {
            return Err(format!(
                "agent.poll_interval_seconds = {interval}: must be between 0.1 and 3600"
            ));
        }
        for (key, value) in [
            ("kernel.flow_capacity", self.kernel.flow_capacity),
            ("kernel.peer_capacity", self.kernel.peer_capacity),
            ("kernel.socket_capacity", self.kernel.socket_capacity),
        ] {
            if !(64..=16 * 1024 * 1024).contains(&value) {
                return Err(format!("{key} = {value}: must be between 64 and 16777216"));
            }
        }
        let pin_path = &self.kernel.pin_path;
        if !pin_path.is_empty() && !Path::new(pin_path).is_absolute() {
            return Err(format!(
                "kernel.pin_path = {pin_path:?}: must be an absolute path in a bpffs (e.g. \"{DEFAULT_PIN_PATH}\") or empty"
            ));
        }
        for pattern in &self.kernel.interfaces {
            // IFNAMSIZ: names are at most 15 bytes; a pattern may add `*`s.
            let name_bytes = pattern.bytes().filter(|byte| *byte != b'*').count();
            if pattern.is_empty()
                || name_bytes > 15
                || pattern.contains(['/', ' ', '\t', '\n', ':'])
            {
                return Err(format!(
                    "kernel.interfaces: {pattern:?} is not an interface name or pattern (up to \
                     15 characters, `*` matches any run of them, e.g. \"eth*\")"
                ));
            }
        }
        let learn = self.baseline.learn_seconds;
        if !(0.0..=30.0 * 24.0 * 3600.0).contains(&learn) {
            return Err(format!(
                "baseline.learn_seconds = {learn}: must be between 0 (off) and 2592000 (30 days)"
            ));
        }
        if self.baseline.path.as_os_str().is_empty() {
            return Err("baseline.path must not be empty".into());
        }
        if self.baseline.dns_tunnel_names_per_minute == 0 {
            return Err(
                "baseline.dns_tunnel_names_per_minute must be at least 1 (distinct names per \
                 minute under one domain)"
                    .into(),
            );
        }
        for (key, value) in [
            ("settle_quiet_seconds", self.baseline.settle_quiet_seconds),
            ("settle_max_seconds", self.baseline.settle_max_seconds),
            ("stale_seconds", self.baseline.stale_seconds),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!(
                    "baseline.{key} must be a number of seconds, 0 or more, not {value}"
                ));
            }
        }
        let (v4, v6) = (self.baseline.name_network_v4, self.baseline.name_network_v6);
        if !(8..=32).contains(&v4) || !(16..=128).contains(&v6) {
            return Err(format!(
                "baseline.name_network_v4 must be 8..=32 and name_network_v6 16..=128 (prefix \
                 lengths of the networks a name may move within), not {v4} and {v6}"
            ));
        }
        if self.baseline.max_unexpected == 0 {
            return Err("baseline.max_unexpected must be at least 1".into());
        }
        let ring = self.names.ring_buffer_bytes;
        if !ring.is_power_of_two() || !(4096..=1 << 30).contains(&ring) {
            return Err(format!(
                "names.ring_buffer_bytes = {ring}: must be a power of two between 4096 and 1073741824"
            ));
        }
        if let Some(path) = self
            .names
            .trusted_resolvers
            .iter()
            .find(|path| !path.starts_with('/'))
        {
            return Err(format!(
                "names.trusted_resolvers: {path:?} is not an absolute path (a resolver is \
                 trusted by its executable, as /proc/PID/exe shows it)"
            ));
        }
        if self.names.max_entries > 16 * 1024 * 1024 {
            return Err(format!(
                "names.max_entries = {}: must be at most 16777216",
                self.names.max_entries
            ));
        }
        if self.agent.tls_cert_file.is_some() != self.agent.tls_key_file.is_some() {
            return Err(
                "agent.tls_cert_file and agent.tls_key_file go together: give both, or neither"
                    .into(),
            );
        }
        if let Some((user, _)) = self.agent.basic_auth_users.iter().find(|(_, hash)| {
            !["$2a$", "$2b$", "$2y$"]
                .iter()
                .any(|prefix| hash.starts_with(prefix))
        }) {
            return Err(format!(
                "agent.basic_auth_users.{user}: not a bcrypt hash (make one with \
                 `htpasswd -nBC 10 {user}` and take the part after the colon)"
            ));
        }
        if !self.agent.basic_auth_users.is_empty() && self.agent.tls_cert_file.is_none() {
            return Err(
                "agent.basic_auth_users without TLS would send the passwords in clear text: \
                 set agent.tls_cert_file and agent.tls_key_file too"
                    .into(),
            );
        }
        if self.metrics.max_remotes == 0 || self.metrics.max_series == 0 {
            return Err("metrics.max_remotes and metrics.max_series must be at least 1".into());
        }
        let idle = self.metrics.series_idle_seconds as f64;
        if idle > 0.0 && idle < 2.0 * self.agent.poll_interval_seconds {
            return Err(format!(
                "metrics.series_idle_seconds = {}: must be 0 (never drop a series) or at least \
                 two poll intervals ({} s), or a series of a steady flow would start over",
                self.metrics.series_idle_seconds,
                2.0 * self.agent.poll_interval_seconds
            ));
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.agent.poll_interval_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_equals_code_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG, "default").expect("default config parses");
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.agent.listen.to_string(), "127.0.0.1:9977");
    }

    #[test]
    fn the_printed_effective_config_reads_back_the_same() {
        let mut config = Config::default();
        config.baseline.learn_seconds = 60.0;
        config.risk.page = vec![Risk::High, Risk::Medium];
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(Config::parse(&text, "printed").unwrap(), config, "{text}");
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("", "empty").unwrap(), Config::default());
    }

    #[test]
    fn partial_file_overrides_only_given_keys() {
        let config = Config::parse(
            "[agent]\npoll_interval_seconds = 1.5\n[metrics]\nmax_remotes = 3\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.poll_interval(), Duration::from_millis(1500));
        assert_eq!(config.metrics.max_remotes, 3);
        assert_eq!(
            config.metrics.max_series,
            MetricsConfig::default().max_series
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let error = Config::parse(
            "[agent]\nlisten = \"127.0.0.1:1\"\npoll_intervall = 3\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("poll_intervall"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let error = Config::parse("\n[kernel]\nflow_capacity = \"big\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("flow_capacity"), "{error}");
    }

    #[test]
    fn bad_listen_address_is_rejected() {
        let error = Config::parse("[agent]\nlisten = \"localhost\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn interface_patterns_are_names_with_stars() {
        for good in ["[]", "[\"eth0\", \"wg*\"]", "[\"*\"]", "[\"bsdemo-*\"]"] {
            let text = format!("[kernel]\ninterfaces = {good}\n");
            assert!(Config::parse(&text, "t").is_ok(), "{text} was refused");
        }
        for bad in [
            "[\"\"]",
            "[\"eth0 eth1\"]",
            "[\"a-name-too-long-0\"]",
            "[\"/dev/eth0\"]",
        ] {
            let text = format!("[kernel]\ninterfaces = {bad}\n");
            let error = Config::parse(&text, "t").unwrap_err().to_string();
            assert!(error.contains("kernel.interfaces"), "{text}: {error}");
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for text in [
            "[agent]\npoll_interval_seconds = 0.0\n",
            "[kernel]\nflow_capacity = 1\n",
            "[metrics]\nmax_series = 0\n",
            "[metrics]\nseries_idle_seconds = 9\n",
            "[agent]\ntls_cert_file = \"/etc/bitsecure/tls.crt\"\n",
            "[agent.basic_auth_users]\nprometheus = \"secret\"\n",
            "[agent.basic_auth_users]\nprometheus = \"$2y$10$abcdefghijklmnopqrstuv\"\n",
            "[baseline]\nname_network_v4 = 33\n",
            "[baseline]\nname_network_v4 = 0\n",
            "[baseline]\nname_network_v6 = 129\n",
            "[baseline]\nsettle_quiet_seconds = -1.0\n",
            "[baseline]\nsettle_max_seconds = nan\n",
        ] {
            assert!(Config::parse(text, "t").is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn non_utf8_and_missing_files_give_clear_errors() {
        let dir = std::env::temp_dir().join(format!("bitsecure-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, [0xff, 0xfe, b'\n']).unwrap();
        let error = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("not valid UTF-8"), "{error}");
        let missing = dir.join("missing.toml");
        let error = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(error.contains("missing.toml"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
