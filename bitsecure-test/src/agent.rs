//! The real agent binary under test: where this build's `bitsecure` is, and a handle on one
//! running agent with a config of its own (its port, log, /metrics, signals, clean stop).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    exposition::{Sample, parse_exposition},
    process::{free_port, require_root, scratch_dir, tail},
};

/// The agent binary of this build: `bitsecure` in the directory the running test binary was
/// built for (`target/<profile>/deps/main-HASH` → `target/<profile>/bitsecure`). A binary of
/// another package has no `CARGO_BIN_EXE_*`, and `cargo test -p bitsecure-test` does not build
/// it; panics saying so if it is missing.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the running test binary");
    let mut dir = exe.parent().expect("the test binary is in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().expect("deps/ is in the profile's directory");
    }
    let agent = dir.join("bitsecure");
    assert!(
        agent.is_file(),
        "no agent binary at {}: build it first: cargo build -p bitsecure (in the profile the \
         tests use); `cargo xtask test` does",
        agent.display()
    );
    agent
}

/// The real agent binary, with a config of its own, stopped (SIGTERM) on drop.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    extra: String,
}

/// How often the test agents poll; short so the tests are quick.
pub const TEST_POLL_SECONDS: f64 = 0.5;

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `extra` config this agent was started with.
    pub fn extra_config(&self) -> &str {
        &self.extra
    }

    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts the agent with `extra` TOML appended to a test config.
    pub fn start_with(extra: &str) -> Self {
        Self::start_polling(extra, TEST_POLL_SECONDS)
    }

    /// [`Agent::start_with`], polling every `poll_seconds` (e.g. the default 5 s).
    pub fn start_polling(extra: &str, poll_seconds: f64) -> Self {
        Self::launch(extra, poll_seconds, &[], "127.0.0.1")
    }

    /// [`Agent::start_with`] with these environment variables (e.g. systemd's NOTIFY_SOCKET).
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(extra, TEST_POLL_SECONDS, env, "127.0.0.1")
    }

    /// [`Agent::start_with`], listening on every address (`0.0.0.0`), not loopback only.
    pub fn start_on_all_addresses(extra: &str) -> Self {
        Self::launch(extra, TEST_POLL_SECONDS, &[], "0.0.0.0")
    }

    fn launch(extra: &str, poll_seconds: f64, env: &[(&str, &str)], listen_ip: &str) -> Self {
        require_root();
        let original_extra = extra.to_owned();
        let port = free_port();
        let dir = scratch_dir();
        let config = dir.join(format!("agent-{port}.toml"));
        // Tables before [agent], so `extra` may start with more [agent] keys. Unless the test
        // brings its own, the baseline is a scratch file that is never learned.
        let baseline = if extra.contains("[baseline]") {
            String::new()
        } else {
            format!(
                "[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
                dir.join(format!("baseline-{port}.toml")).display()
            )
        };
        // Nothing is pinned unless the test asks for it: every agent starts from empty maps.
        let (kernel, extra) = if extra.contains("pin_path") {
            (String::new(), extra.to_owned())
        } else if extra.contains("[kernel]") {
            (
                String::new(),
                extra.replacen("[kernel]\n", "[kernel]\npin_path = \"\"\n", 1),
            )
        } else {
            ("[kernel]\npin_path = \"\"\n".to_owned(), extra.to_owned())
        };
        std::fs::write(
            &config,
            format!(
                "{baseline}{kernel}[agent]\nlisten = \"{listen_ip}:{port}\"\npoll_interval_seconds = {poll_seconds:?}\n{extra}"
            ),
        )
        .expect("write config");
        let log = dir.join(format!("agent-{port}.log"));
        let child = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("start agent");
        let mut agent = Self {
            child,
            port,
            log,
            extra: original_extra,
        };
        // An agent serving TLS is up when its log says so (plain GETs get no answer).
        let plain_http = !extra.contains("tls_cert_file");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = agent.child.try_wait().expect("wait agent") {
                panic!("agent exited with {status}: {}", agent.log_text());
            }
            if (!plain_http || agent.try_get("/metrics").is_some())
                && agent.log_text().contains("attached to cgroup")
            {
                return agent;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent did not come up: {}", agent.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`; `None` if the agent does not answer.
    pub fn try_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait agent").is_none()
    }

    /// The agent's peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the agent's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmHWM in the agent's status: {status}"))
    }

    pub fn scrape(&self) -> Vec<Sample> {
        let text = self.try_get("/metrics").expect("agent answers /metrics");
        parse_exposition(&text)
    }

    /// The unexpected list as `bitsecure unexpected --json` prints it (the CLI, over loopback).
    pub fn unexpected(&self) -> Vec<serde_json::Value> {
        let output = Command::new(agent_binary())
            .args(["unexpected", "--json", "--agent"])
            .arg(format!("127.0.0.1:{}", self.port))
            .output()
            .expect("run bitsecure unexpected");
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("bitsecure unexpected --json prints JSON")
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory arguments; the pid is our own child's.
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "cannot signal the agent");
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory arguments; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent ignored SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in terminate.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Scrapes until `check` accepts the samples (returning what it found) or `seconds` have
/// passed (then panics with the last reason and the agent's log).
/// Waits (up to 30 s) for the agent to finish learning and write `baseline`; returns its text.
pub fn learnt_baseline(agent: &Agent, baseline: &std::path::Path) -> String {
    eventually(agent, 30, |samples| {
        match crate::exposition::sum_metric(samples, "bitsecure_baseline_learning", &[]) {
            0.0 if baseline.exists() => Ok(()),
            learning => Err(format!("still learning ({learning})")),
        }
    });
    std::fs::read_to_string(baseline).expect("read the learnt baseline")
}

pub fn eventually<T>(
    agent: &Agent,
    seconds: u64,
    mut check: impl FnMut(&[Sample]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match check(&agent.scrape()) {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => {
                panic!("{why}\nagent log (tail):\n{}", tail(&agent.log_text(), 30))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
