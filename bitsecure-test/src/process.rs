//! Running programs for the tests and tools: commands with clear failures, root and scratch
//! space, copies of a binary under a chosen executable name, and the traffic generator's
//! processes (one-shot clients with their JSON report, long-running servers killed on drop).

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);

/// Runs a command to completion and returns its stdout; fails with its output unless it
/// exited 0.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{program} {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// [`run`] for the tests: panics with the command's output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|error| panic!("{error:#}"))
}

pub fn require_root() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and create network namespaces: run them as \
         root (`sudo cargo xtask test`)"
    );
}

/// Where this test run keeps its files (generator copies, configs, logs).
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bitsecure-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Copies `binary` to `name` in the scratch directory (≤ 15 bytes, so the kernel comm is
/// exactly `name`).
pub fn install_as(binary: impl AsRef<Path>, name: &str) -> PathBuf {
    let binary = binary.as_ref();
    assert!(name.len() <= 15, "{name} would be truncated in comm");
    let path = scratch_dir().join(name);
    // Copy then rename: another test may be running the previous copy ("text file busy").
    let unique = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
    let staging = scratch_dir().join(format!(".{name}.{unique}"));
    std::fs::copy(binary, &staging).unwrap_or_else(|e| panic!("copy {}: {e}", binary.display()));
    std::fs::rename(&staging, &path).unwrap_or_else(|e| panic!("install {name}: {e}"));
    path
}
/// What the generator reports about itself.
#[derive(Debug, serde::Deserialize)]
pub struct GeneratorReport {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

impl GeneratorReport {
    /// The report a generator printed last (its final line).
    pub fn parse(output: &str) -> Self {
        let line = output.lines().last().expect("generator printed nothing");
        serde_json::from_str(line).unwrap_or_else(|error| panic!("bad report {line}: {error}"))
    }
}

/// Retries `run` while it fails with "text file busy": a test thread copying a generator while
/// another forks leaves the copy's write descriptor open in the child for a moment.
fn retry_busy<T>(mut run: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    for _ in 0..50 {
        match run() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
    run()
}

/// Runs a generator client to completion; panics unless it succeeded.
pub fn run_generator(command: &mut Command) -> GeneratorReport {
    let output = retry_busy(|| command.output()).expect("run generator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "generator {command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    GeneratorReport::parse(&stdout)
}

/// A long-running generator (server or `hold`) whose stdout is drained in the background.
/// Killed on drop if still running, so no test leaves a generator (or its cgroup) behind.
pub struct Spawned {
    pub child: Child,
    output: Option<std::thread::JoinHandle<String>>,
}

impl Spawned {
    /// A process started without a readiness line (killed on drop like the others).
    pub fn from_child(child: Child) -> Self {
        Self {
            child,
            output: None,
        }
    }

    /// Waits for the process; panics unless it succeeded. Returns what it printed.
    pub fn finish(mut self) -> String {
        let status = self.child.wait().expect("wait for generator");
        let output = self
            .output
            .take()
            .map(|reader| reader.join().expect("stdout reader"))
            .unwrap_or_default();
        assert!(status.success(), "generator failed ({status}): {output}");
        output
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a long-running program and waits for it to print the line `marker` (after any
/// others: `openssl s_server` talks first).
pub fn spawn_until(command: &mut Command, marker: &str) -> Spawned {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = retry_busy(|| command.spawn()).expect("spawn generator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.trim() == marker => break,
            Some(Ok(line)) => before.push(line),
            other => {
                let _ = child.kill();
                panic!("{command:?} did not print {marker}: {before:?} then {other:?}")
            }
        }
    }
    // Keep reading, or the generator dies of EPIPE when it prints its report.
    let output =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    Spawned {
        child,
        output: Some(output),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port nothing listens on (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}
