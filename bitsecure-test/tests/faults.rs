//! Privileged fault tests of the "runs unattended" claim, with the real binary:
//!
//! - `kill -9` at random moments — most of them inside the write, found with inotify — of
//!   `bitsecure baseline record`, of the agent's learn-then-write and of `baseline accept`:
//!   the baseline file is afterwards absent, the previous content or a complete valid
//!   baseline, never half; `.bak` is intact; what a kill leaves behind does not break the
//!   next run.
//! - Hostile config files for `bitsecure run` and `bitsecure config`: clear errors, non-zero
//!   exit, no panic.
//! - The baseline file broken while the agent runs: it keeps counting, logs the error and
//!   counts the failed reload, with the last good baseline still in force.
//! - `kernel.pin_path` outside a bpffs: a clear error naming the path and the fix.
//! - Hostile HTTP clients (idle, huge request line, garbage, 200 at once): the agent keeps
//!   serving /metrics within seconds and keeps counting.
//!
//! The kill tests print how the kills fell (`--nocapture`).

use std::{
    collections::VecDeque,
    ffi::{CString, OsStr, OsString},
    io::{Read as _, Write as _},
    net::TcpStream,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use bitsecure_test::{
    agent::{Agent, agent_binary},
    cgroup::TestCgroup,
    exposition::{Sample, sum_metric, traffic_by_process},
    process::{Spawned, free_port, require_root, run_generator, scratch_dir, spawn_until, tail},
    testnet::TestNet,
};

use crate::install_generator;

fn bitsecure() -> Command {
    Command::new(agent_binary())
}

/// An empty directory of its own for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("faults-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// xorshift64*: reproducible random delays (the seed is printed).
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        let seed = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
        eprintln!("{test}: random seed {seed:#x}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, max].
    fn up_to(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        Duration::from_nanos(self.next() % (nanos + 1))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Watching a directory (inotify), to kill a writer while it writes.

/// File creations and renames into one directory, as inotify reports them.
struct DirWatch {
    fd: OwnedFd,
    pending: VecDeque<(u32, OsString)>,
}

impl DirWatch {
    fn new(dir: &Path) -> Self {
        // SAFETY: plain system call without pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
        // SAFETY: a valid NUL-terminated path.
        let watch = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        assert!(
            watch >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Self {
            fd,
            pending: VecDeque::new(),
        }
    }

    /// The next event (`IN_CREATE` or `IN_MOVED_TO`, name) within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<(u32, OsString)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) };
            let mut buffer = [0u64; 512];
            // SAFETY: reads at most the buffer's size into it.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    std::mem::size_of_val(&buffer),
                )
            };
            let Ok(read) = usize::try_from(read) else {
                continue; // EAGAIN: nothing yet
            };
            // SAFETY: the kernel wrote `read` bytes; u64 storage is aligned for the events.
            let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast(), read) };
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut offset = 0;
            while offset + header <= bytes.len() {
                // SAFETY: a whole event header lies at `offset`.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(bytes[offset..].as_ptr().cast()) };
                let name = &bytes[offset + header..offset + header + event.len as usize];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                self.pending
                    .push_back((event.mask, OsStr::from_bytes(name).to_owned()));
                offset += header + event.len as usize;
            }
        }
    }

    /// Waits for the first file created in the directory.
    fn first_created(&mut self, timeout: Duration) -> Option<OsString> {
        let deadline = Instant::now() + timeout;
        while let Some((mask, name)) = self.next(deadline.saturating_duration_since(Instant::now()))
        {
            if mask & libc::IN_CREATE != 0 {
                return Some(name);
            }
        }
        None
    }

    /// Waits for `name` to be renamed into the directory.
    fn renamed_to(&mut self, name: &OsStr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some((mask, event_name)) =
            self.next(deadline.saturating_duration_since(Instant::now()))
        {
            if mask & libc::IN_MOVED_TO != 0 && event_name == name {
                return true;
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Killing writers.

/// How long a writer takes from creating its first temporary file to renaming the result over
/// `target`: the window the kills aim at. `start` spawns the writer.
fn write_window(target: &Path, start: impl FnOnce() -> Child) -> (Duration, Duration, Child) {
    let mut watch = DirWatch::new(target.parent().expect("a directory"));
    let spawned = Instant::now();
    let child = start();
    watch
        .first_created(Duration::from_secs(30))
        .expect("the writer created no temporary file");
    let first = Instant::now();
    assert!(
        watch.renamed_to(target.file_name().unwrap(), Duration::from_secs(30)),
        "the writer never renamed its result to {}",
        target.display()
    );
    let window = first.elapsed();
    (first - spawned, window, child)
}

/// Where one kill fell.
#[derive(Debug, Default)]
struct Tally {
    /// Killed within the write window (after the first temporary file appeared).
    in_write: usize,
    /// Killed at a random moment of the whole run.
    anywhere: usize,
    /// The writer had already finished when the kill came.
    finished_first: usize,
    absent: usize,
    previous: usize,
    complete: usize,
}

/// Starts a writer with `start` and SIGKILLs it: after a random delay within `window` once
/// its first temporary file appears in `dir` (`aim_at_write`), or at a random moment within
/// `span` of its start.
fn kill_at_random(
    dir: &Path,
    start: impl FnOnce() -> Child,
    rng: &mut Rng,
    aim_at_write: bool,
    window: Duration,
    span: Duration,
    tally: &mut Tally,
) {
    let mut watch = DirWatch::new(dir);
    let mut child = start();
    if aim_at_write {
        tally.in_write += 1;
        if watch.first_created(Duration::from_secs(30)).is_none() {
            let _ = child.kill();
            panic!("the writer created no temporary file in {}", dir.display());
        }
        thread::sleep(rng.up_to(window));
    } else {
        tally.anywhere += 1;
        thread::sleep(rng.up_to(span));
    }
    if child.try_wait().expect("wait").is_some() {
        tally.finished_first += 1;
    }
    let _ = child.kill(); // SIGKILL
    child.wait().expect("wait for the killed writer");
}

/// What a kill may leave next to `target`: the file, its `.bak`, and the hidden temporary
/// files of interrupted writes (`.NAME.<pid>.<n>.tmp`). Returns how many of those there are.
fn leftovers(target: &Path) -> usize {
    let dir = target.parent().unwrap();
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let mut temporary = 0;
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let entry = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if entry == name || entry == format!("{name}.bak") {
            continue;
        }
        let is_temporary = [format!(".{name}."), format!(".{name}.bak.")]
            .iter()
            .any(|prefix| entry.starts_with(prefix.as_str()))
            && entry.ends_with(".tmp");
        assert!(is_temporary, "unexpected file {entry} next to {name}");
        temporary += 1;
    }
    temporary
}

/// `bitsecure baseline show --file path`.
fn show(path: &Path) -> Output {
    bitsecure()
        .args(["baseline", "show", "--file"])
        .arg(path)
        .output()
        .expect("run baseline show")
}

/// A learned or recorded baseline is complete: it loads, ends with a newline, and the
/// generator's rule in it has its recorded rates each way and its activity, so a file cut
/// before the end of that rule does not pass.
fn assert_complete_recording(path: &Path, text: &str, process: &str) {
    let output = show(path);
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} does not load after a kill: {}\n--- file ---\n{text}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.ends_with('\n')
            && shown.contains(process)
            && shown.contains("sent:")
            && shown.contains("received:")
            && shown.contains("active"),
        "{} is not a complete recording:\n{shown}\n--- file ---\n{text}",
        path.display()
    );
}

/// The rig the recordings see: a miner-like client fetching a job every 50 ms from a server
/// in a test namespace, in a cgroup of its own. Fields drop in order.
struct Traffic {
    _client: Spawned,
    cgroup: TestCgroup,
    _net: TestNet,
}

impl Traffic {
    fn start(tag: &str, process: &str) -> Self {
        let mut net = TestNet::new();
        let server = install_generator("bsg-server");
        let target = format!("{}:5000", net.peer_v4);
        net.spawn_server(&server, &["serve", "--tcp", &target]);
        let cgroup = TestCgroup::new(tag);
        let generator = install_generator(process);
        let client = spawn_until(
            cgroup.command(&generator).args([
                "periodic",
                "--connect",
                &target,
                "--every-ms",
                "50",
                "--job-bytes",
                "2000",
            ]),
            "connected",
        );
        Self {
            _client: client,
            cgroup,
            _net: net,
        }
    }

    /// A config for `run` / `baseline record` watching this cgroup, polling every 0.1 s.
    fn config(&self, dir: &Path, baseline: &Path, learn_seconds: f64) -> PathBuf {
        let config = dir.with_extension("config.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"127.0.0.1:{}\"\npoll_interval_seconds = 0.1\ncgroup = \"{}\"\n\
                 [kernel]\npin_path = \"\"\n[baseline]\npath = \"{}\"\nlearn_seconds = {learn_seconds}\n",
                free_port(),
                self.cgroup.path.display(),
                baseline.display()
            ),
        )
        .expect("write config");
        config
    }
}

/// `bitsecure baseline record --duration 0.5s --output F`, SIGKILLed 30 times: 20 times inside
/// the write (F existing or not), 10 times anywhere in the run.
#[test]
fn kill_9_during_baseline_record_never_leaves_half_a_file() {
    const KILLS: usize = 30;
    const PROCESS: &str = "bsg-recorded";
    let traffic = Traffic::start("kill-record", PROCESS);
    let dir = test_dir("kill-record");
    let target = dir.join("baseline.toml");
    let config = traffic.config(&dir, &target, 0.0);
    let record = || {
        bitsecure()
            .args(["baseline", "record", "--duration", "0.5s", "--config"])
            .arg(&config)
            .arg("--output")
            .arg(&target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start baseline record")
    };
    // Calibration: a whole run, F absent, then one over an existing F (which writes .bak too).
    let (_, _, mut child) = write_window(&target, record);
    assert!(child.wait().unwrap().success(), "baseline record failed");
    let started = Instant::now();
    let (to_write, window, mut child) = write_window(&target, record);
    assert!(child.wait().unwrap().success(), "baseline record failed");
    let span = started.elapsed();
    let complete = std::fs::read_to_string(&target).unwrap();
    assert_complete_recording(&target, &complete, PROCESS);
    eprintln!(
        "record: a run takes {span:?}; the write starts after {to_write:?} and takes {window:?}"
    );

    let mut rng = Rng::seeded("record");
    let mut tally = Tally::default();
    for kill in 0..KILLS {
        // Every third run starts with no file, so a kill can also leave none.
        if kill % 3 == 0 {
            let _ = std::fs::remove_file(&target);
        }
        let previous = std::fs::read_to_string(&target).ok();
        let previous_backup = std::fs::read_to_string(dir.join("baseline.toml.bak")).ok();
        let aim_at_write = kill % 3 != 2;
        kill_at_random(
            &dir,
            record,
            &mut rng,
            aim_at_write,
            window,
            span,
            &mut tally,
        );
        match (std::fs::read_to_string(&target).ok(), &previous) {
            (None, None) => tally.absent += 1,
            (None, Some(_)) => panic!("kill {kill}: the previous baseline is gone"),
            (Some(now), Some(previous)) if now == *previous => tally.previous += 1,
            (Some(now), _) => {
                assert_complete_recording(&target, &now, PROCESS);
                tally.complete += 1;
            }
        }
        // The backup is the previous file, whole, or what it was before.
        let backup = std::fs::read_to_string(dir.join("baseline.toml.bak")).ok();
        if backup != previous_backup {
            assert_eq!(
                backup, previous,
                "kill {kill}: .bak is neither the old backup nor the previous file"
            );
        }
        if let Some(backup) = backup {
            assert_complete_recording(&dir.join("baseline.toml.bak"), &backup, PROCESS);
        }
    }
    let stale = leftovers(&target);
    // What the kills left behind does not stop the next run.
    let mut child = record();
    assert!(
        child.wait().unwrap().success(),
        "baseline record after the kills failed"
    );
    let text = std::fs::read_to_string(&target).unwrap();
    assert_complete_recording(&target, &text, PROCESS);
    eprintln!("record: {tally:?}; temporary files left by the kills: {stale}");
}

/// The agent learning (0.5 s) and writing its first baseline, SIGKILLed 24 times: 16 times
/// inside the write, 8 times anywhere from start to end of learning.
#[test]
fn kill_9_during_the_agents_learn_then_write() {
    const KILLS: usize = 24;
    const PROCESS: &str = "bsg-learned";
    let traffic = Traffic::start("kill-learn", PROCESS);
    let dir = test_dir("kill-learn");
    let target = dir.join("baseline.toml");
    let config = traffic.config(&dir, &target, 0.5);
    let log = dir.with_extension("agent.log");
    let agent = || {
        bitsecure()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("start the agent")
    };
    let started = Instant::now();
    let (to_write, window, mut child) = write_window(&target, agent);
    let span = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let complete = std::fs::read_to_string(&target).unwrap();
    assert_complete_recording(&target, &complete, PROCESS);
    eprintln!("learn: the write starts after {to_write:?} and takes {window:?}");

    let mut rng = Rng::seeded("learn");
    let mut tally = Tally::default();
    for kill in 0..KILLS {
        // Learning happens only without a baseline file.
        let _ = std::fs::remove_file(&target);
        let aim_at_write = kill % 3 != 2;
        kill_at_random(
            &dir,
            agent,
            &mut rng,
            aim_at_write,
            window,
            span,
            &mut tally,
        );
        match std::fs::read_to_string(&target) {
            Err(_) => tally.absent += 1,
            Ok(text) => {
                assert_complete_recording(&target, &text, PROCESS);
                tally.complete += 1;
            }
        }
    }
    let stale = leftovers(&target);
    // With the leftovers in place, the next agent learns and writes as usual.
    let _ = std::fs::remove_file(&target);
    let (_, _, mut child) = write_window(&target, agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("learned a baseline")
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not report its learned baseline: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "the agent exited");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&target).unwrap();
    assert_complete_recording(&target, &text, PROCESS);
    eprintln!("learn: {tally:?}; temporary files left by the kills: {stale}");
}

/// A baseline that expects nothing the test cgroup does.
const HAND_WRITTEN: &str = "format_version = 1\n\n\
# Hand-written: nothing in the test cgroup matches this rule.\n\
[[rule]]\nprocess = \"nobody\"\nremote = \"*\"\nprotocol = \"tcp\"\n";

/// `bitsecure baseline accept` SIGKILLed 30 times while it edits a file (20 inside the write):
/// the file is the old or the new version, exactly, and `.bak` the one before or the old file.
#[test]
fn kill_9_during_baseline_accept_keeps_old_or_new_and_the_backup() {
    const KILLS: usize = 30;
    let mut net = TestNet::new();
    let server = install_generator("bsg-server");
    let target = format!("{}:5000", net.peer_v4);
    net.spawn_server(&server, &["serve", "--tcp", &target, "--udp", &target]);
    let cgroup = TestCgroup::new("kill-accept");
    let dir = test_dir("kill-accept");
    let agents_baseline = dir.with_extension("agent-baseline.toml");
    std::fs::write(&agents_baseline, HAND_WRITTEN).unwrap();
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        cgroup.path.display(),
        agents_baseline.display()
    ));
    let stranger = install_generator("bsg-stranger");
    run_generator(cgroup.command(&stranger).args([
        "tcp",
        "--connect",
        &target,
        "--upload",
        "1000",
    ]));
    run_generator(cgroup.command(&stranger).args([
        "udp",
        "--to",
        &target,
        "--datagrams",
        "3",
        "--size",
        "100",
    ]));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = agent.try_get("/api/unexpected").unwrap_or_default();
        if list.matches("bsg-stranger").count() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not listed as unexpected: {list}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // The file accept edits (not the agent's own, so the agent's list stays as it is).
    let file = dir.join("baseline.toml");
    let backup = dir.join("baseline.toml.bak");
    let old = HAND_WRITTEN.replace("Hand-written:", "Hand-written (old):");
    let older = HAND_WRITTEN.replace("Hand-written:", "Hand-written (older):");
    let agent_address = format!("127.0.0.1:{}", agent.port);
    let accept = || {
        bitsecure()
            .args([
                "baseline",
                "accept",
                "--process",
                "bsg-stranger",
                "--note",
                "kill test",
            ])
            .args(["--agent", &agent_address, "--file"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start baseline accept")
    };
    let reset = || {
        std::fs::write(&file, &old).unwrap();
        std::fs::write(&backup, &older).unwrap();
    };
    // Calibration: the median of 5 whole runs (the first, cold, is slower).
    let mut runs = Vec::new();
    for _ in 0..5 {
        reset();
        let started = Instant::now();
        let (_, window, mut child) = write_window(&file, accept);
        assert!(child.wait().unwrap().success(), "baseline accept failed");
        runs.push((started.elapsed(), window));
    }
    runs.sort();
    let (span, window) = runs[runs.len() / 2];
    let new = std::fs::read_to_string(&file).unwrap();
    assert!(
        new.contains("Hand-written (old):") && new.matches("bsg-stranger").count() >= 2,
        "{new}"
    );
    assert!(show(&file).status.success());
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), old);
    eprintln!("accept: a run takes {span:?}, the write {window:?}");

    let mut rng = Rng::seeded("accept");
    let mut tally = Tally::default();
    for kill in 0..KILLS {
        reset();
        let aim_at_write = kill % 3 != 2;
        kill_at_random(
            &dir,
            accept,
            &mut rng,
            aim_at_write,
            window,
            span,
            &mut tally,
        );
        let now = std::fs::read_to_string(&file).expect("the baseline is gone");
        let saved = std::fs::read_to_string(&backup).expect("the backup is gone");
        if now == old {
            tally.previous += 1;
            assert!(
                saved == older || saved == old,
                "kill {kill}: .bak is half written:\n{saved}"
            );
        } else {
            assert_eq!(now, new, "kill {kill}: neither the old nor the new file");
            assert_eq!(saved, old, "kill {kill}: the new file without its backup");
            tally.complete += 1;
        }
    }
    let stale = leftovers(&file);
    reset();
    let mut child = accept();
    assert!(
        child.wait().unwrap().success(),
        "accept after the kills failed"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), new);
    eprintln!("accept: {tally:?}; temporary files left by the kills: {stale}");
}

// ---------------------------------------------------------------------------------------------
// Hostile config files.

/// Runs `command` (bounded to 20 s), returning its output.
fn output_within(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after 20 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `bitsecure run` and `bitsecure config` with `config` must both fail with exit status 78
/// (EX_CONFIG: systemd does not restart it in a loop), without a panic, naming every one of
/// `expected` on stderr.
fn assert_refused(case: &str, config: &Path, expected: &[&str], limit_memory: bool) {
    for subcommand in ["config", "run"] {
        let mut command = bitsecure();
        command.args([subcommand, "--config"]).arg(config);
        if limit_memory {
            // Whatever the agent does with this file, it must not take the machine's memory.
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                command.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 1 << 30,
                        rlim_max: 1 << 30,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let output = output_within(&mut command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let shown: String = stderr.chars().take(2000).collect();
        assert_eq!(
            output.status.code(),
            Some(78),
            "{case}: `bitsecure {subcommand}` exit status {}: {shown}",
            output.status
        );
        assert!(
            !stderr.contains("panicked"),
            "{case}: `bitsecure {subcommand}` panicked: {shown}"
        );
        for word in expected {
            assert!(
                stderr.contains(word),
                "{case}: `bitsecure {subcommand}` does not say {word:?}: {shown}"
            );
        }
    }
}

#[test]
fn hostile_config_files_get_a_clear_error() {
    let dir = test_dir("configs");
    let file = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let path = file(
        "wrong-type.toml",
        b"[agent]\npoll_interval_seconds = \"fast\"\n",
    );
    assert_refused(
        "wrong type",
        &path,
        &["poll_interval_seconds", "line 2"],
        false,
    );
    let path = file(
        "unknown-key.toml",
        b"[metrics]\nmax_series = 10\nmax_serie = 5\n",
    );
    assert_refused("unknown key", &path, &["max_serie", "line 3"], false);
    let path = file(
        "bad-table.toml",
        b"[agent]\nlisten = \"127.0.0.1:1\"\n[agnet]\n",
    );
    assert_refused("unknown table", &path, &["agnet", "line 3"], false);
    let path = file(
        "huge.toml",
        "# padding padding padding padding padding padding padding padding padding\n"
            .repeat(20_000)
            .as_bytes(),
    );
    assert_refused("huge file", &path, &["huge.toml", "1 MiB"], false);
    let path = file("latin1.toml", b"[agent]\nlisten = \"caf\xe9\"\n");
    assert_refused("non-UTF-8", &path, &["latin1.toml", "UTF-8"], false);
    let path = file("nul.toml", b"[agent]\nlisten = \"127.0.0.1:1\0\"\n");
    assert_refused("NUL byte", &path, &["nul.toml", "line 2"], false);
    let mut deep = b"[agent]\ncgroup = ".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 500_000));
    let path = file("deep.toml", &deep);
    assert_refused(
        "500,000 nested arrays",
        &path,
        &["deep.toml", "line 2"],
        false,
    );
    let path = dir.join("a-directory.toml");
    std::fs::create_dir(&path).unwrap();
    assert_refused(
        "a directory",
        &path,
        &["a-directory.toml", "directory"],
        false,
    );
    assert_refused(
        "missing file",
        &dir.join("missing.toml"),
        &["missing.toml", "No such file"],
        false,
    );

    // An empty file is a config with every key at its default (documented: every key is
    // optional), so `bitsecure config` accepts it and prints the defaults.
    let path = file("empty.toml", b"");
    let output = output_within(bitsecure().args(["config", "--config"]).arg(&path));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("127.0.0.1:9977"),
        "empty config: {} {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A "file" without a size (a device, a FIFO's cousin): `/dev/zero` never ends. The agent must
/// stop at its 1 MiB limit, as it does for regular files, not read until memory runs out.
/// (Run with a 1 GiB address-space limit, so a failure cannot take this machine's memory.)
#[test]
fn config_from_a_device_is_bounded_like_a_huge_file() {
    assert_refused(
        "/dev/zero",
        Path::new("/dev/zero"),
        &["/dev/zero", "1 MiB"],
        true,
    );
}

// ---------------------------------------------------------------------------------------------
// The baseline file broken under the running agent.

/// The agent with `baseline` in force, watching the cgroup of a steady client.
struct Monitored {
    agent: Agent,
    _traffic: Traffic,
    process: &'static str,
}

impl Monitored {
    fn sent(&self) -> u64 {
        traffic_by_process(&self.agent.scrape(), |_| true)
            .get(self.process)
            .map_or(0, |traffic| traffic.sent_bytes)
    }

    fn value(&self, name: &str) -> f64 {
        sum_metric(&self.agent.scrape(), name, &[])
    }

    /// Waits until `check` holds on a scrape.
    fn eventually(&self, seconds: u64, what: &str, check: impl Fn(&[Sample]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !check(&self.agent.scrape()) {
            assert!(
                Instant::now() < deadline,
                "{what} within {seconds} s\nagent log:\n{}",
                tail(&self.agent.log_text(), 30)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent is alive, serving and still counting the steady client.
    fn assert_counting(&mut self, after: &str) {
        assert!(self.agent.is_running(), "the agent died after {after}");
        let before = self.sent();
        self.eventually(5, &format!("counting after {after}"), |samples| {
            traffic_by_process(samples, |_| true)
                .get(self.process)
                .map_or(0, |traffic| traffic.sent_bytes)
                > before
        });
    }
}

/// A valid baseline of 20 rules with long notes, so cutting it in half cuts inside one.
fn valid_baseline(process: &str) -> String {
    let mut text = String::from("format_version = 1\n\n");
    text += &format!(
        "[[rule]]\nprocess = \"{process}\"\nremote = \"*\"\nprotocol = \"tcp\"\nnote = \"the \
         steady client\"\n\n"
    );
    for i in 0..19 {
        text += &format!(
            "[[rule]]\nprocess = \"rule-{i}\"\nremote = \"10.1.{i}.0/24\"\nport = {}\n\
             protocol = \"udp\"\nnote = \"{}\"\n\n",
            4000 + i,
            "a long note that a truncation cuts in the middle ".repeat(3)
        );
    }
    text
}

#[test]
fn a_broken_baseline_file_is_refused_while_the_agent_keeps_counting() {
    const PROCESS: &str = "bsg-steady";
    let traffic = Traffic::start("broken-baseline", PROCESS);
    let dir = test_dir("broken-baseline");
    let baseline = dir.join("baseline.toml");
    let valid = valid_baseline(PROCESS);
    std::fs::write(&baseline, &valid).unwrap();
    assert!(show(&baseline).status.success(), "the valid baseline");
    let half = &valid.as_bytes()[..valid.len() / 2];
    let half_file = dir.join("half.toml");
    std::fs::write(&half_file, half).unwrap();
    assert!(
        !show(&half_file).status.success(),
        "half of the file must be invalid for this test"
    );
    let agent = Agent::start_with(&format!(
        "cgroup = \"{}\"\n[baseline]\npath = \"{}\"\nlearn_seconds = 0\n",
        traffic.cgroup.path.display(),
        baseline.display()
    ));
    let mut monitored = Monitored {
        agent,
        _traffic: traffic,
        process: PROCESS,
    };
    let rules = |samples: &[Sample]| sum_metric(samples, "bitsecure_baseline_rules", &[]);
    monitored.eventually(5, "20 rules in force", |samples| rules(samples) == 20.0);
    monitored.assert_counting("start");
    let garbage = Rng::seeded("broken-baseline").bytes(4096);
    let truncate = || {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&baseline)
            .unwrap();
        file.set_len(valid.len() as u64 / 2).unwrap();
    };
    let write_garbage = || std::fs::write(&baseline, &garbage).unwrap();
    let make_directory = || {
        std::fs::remove_file(&baseline).unwrap();
        std::fs::create_dir(&baseline).unwrap();
    };
    let delete = || std::fs::remove_dir(&baseline).unwrap();
    let oversize = || {
        let mut text = valid.clone();
        let limit = bitsecure::baseline::file::MAX_FILE_BYTES as usize;
        text += &"#".repeat(limit + 1 - valid.len());
        text += "\n";
        std::fs::write(&baseline, text).unwrap();
    };
    // (what, the edit, whether the agent needs a SIGHUP to notice: a deleted file has no
    // modification time to compare).
    let edits: [(&str, &dyn Fn(), bool); 5] = [
        ("truncated to half", &truncate, false),
        ("binary garbage", &write_garbage, false),
        ("replaced by a directory", &make_directory, false),
        ("deleted, then SIGHUP", &delete, true),
        ("valid TOML over the size limit", &oversize, false),
    ];
    for (what, edit, needs_sighup) in &edits {
        let failures = monitored.value("bitsecure_baseline_reload_failures_total");
        let logged = monitored
            .agent
            .log_text()
            .matches("baseline not loaded")
            .count();
        edit();
        if *needs_sighup {
            monitored.agent.signal(libc::SIGHUP);
        }
        monitored.eventually(
            5,
            &format!("a reload failure counted for {what}"),
            |samples| {
                sum_metric(samples, "bitsecure_baseline_reload_failures_total", &[]) > failures
            },
        );
        let log = monitored.agent.log_text();
        assert!(
            log.matches("baseline not loaded").count() > logged,
            "{what}: the error is not in the log:\n{}",
            tail(&log, 20)
        );
        assert_eq!(
            monitored.value("bitsecure_baseline_rules"),
            20.0,
            "{what}: the last good baseline is no longer in force"
        );
        monitored.assert_counting(what);
    }
    let log = monitored.agent.log_text();
    eprintln!(
        "the agent's errors:\n{}",
        log.lines()
            .filter(|line| line.contains("baseline not loaded"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Fixed: the next change loads again.
    let loaded = monitored.value("bitsecure_baseline_loaded_timestamp_seconds");
    std::fs::write(&baseline, valid.replace("the steady client", "fixed")).unwrap();
    monitored.eventually(5, "the fixed file loaded", |samples| {
        sum_metric(samples, "bitsecure_baseline_loaded_timestamp_seconds", &[]) > loaded
    });

    // chmod 000: the agent reads it anyway (it keeps CAP_DAC_READ_SEARCH to read /proc), so a
    // SIGHUP reloads it; what must hold is that it keeps running and counting either way.
    let failures = monitored.value("bitsecure_baseline_reload_failures_total");
    std::fs::set_permissions(&baseline, std::fs::Permissions::from_mode(0o000)).unwrap();
    monitored.agent.signal(libc::SIGHUP);
    monitored.eventually(5, "the SIGHUP reload after chmod 000", |_| {
        monitored.agent.log_text().matches("(SIGHUP)").count() >= 1
    });
    monitored.assert_counting("chmod 000");
    assert_eq!(monitored.value("bitsecure_baseline_rules"), 20.0);
    eprintln!(
        "chmod 000 + SIGHUP: reload failures {failures} -> {}",
        monitored.value("bitsecure_baseline_reload_failures_total")
    );
    std::fs::set_permissions(&baseline, std::fs::Permissions::from_mode(0o644)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// bpffs missing.

#[test]
fn pin_path_outside_a_bpffs_stops_the_agent_with_the_path_and_the_fix() {
    require_root();
    let dir = test_dir("no-bpffs");
    let pin_path = dir.join("pins").join("bitsecure");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{}\"\n[kernel]\npin_path = \"{}\"\n[baseline]\n\
             path = \"{}\"\nlearn_seconds = 0\n",
            free_port(),
            pin_path.display(),
            dir.join("baseline.toml").display()
        ),
    )
    .unwrap();
    let output = output_within(bitsecure().args(["run", "--config"]).arg(&config));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&pin_path.display().to_string())
            && stderr.contains("bpf")
            && stderr.contains("mount -t bpf"),
        "the error names neither the path nor the fix: {stderr}"
    );
    assert!(!stderr.contains("attached to cgroup"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Hostile HTTP clients.

/// GET /metrics on a fresh connection; the time it took, or why it failed.
fn timed_get(port: u16) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    if text.starts_with("HTTP/1.1 200") && text.contains("bitsecure_build_info") {
        Ok(start.elapsed())
    } else {
        Err(format!("bad response: {}", tail(&text, 3)))
    }
}

/// Sends `request` and reads the reply (until the agent closes); the status line, if any.
fn hostile_request(port: u16, request: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return "connect failed".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    // The agent may close (or reset) before all of a huge request is written.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("(closed without a response)")
        .to_owned()
}

/// The sockets `pid` holds open (not its other descriptors: the agent also holds a BPF link
/// per program and watched interface, and interfaces of parallel tests come and go).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    })
}

#[test]
fn hostile_http_clients_do_not_stop_metrics_or_counting() {
    const PROCESS: &str = "bsg-http-steady";
    const IDLE: usize = 200;
    let traffic = Traffic::start("http", PROCESS);
    let agent = Agent::start_with(&format!("cgroup = \"{}\"\n", traffic.cgroup.path.display()));
    let mut monitored = Monitored {
        agent,
        _traffic: traffic,
        process: PROCESS,
    };
    monitored.assert_counting("start");
    let port = monitored.agent.port;
    let fds_before = open_sockets(monitored.agent.pid());
    let mut rng = Rng::seeded("http");

    // Slowloris: connections that send nothing, or one byte now and then.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect idle client"))
        .collect();
    let drip = thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
            if stream.write_all(&[*byte]).is_err() {
                break; // the agent gave up on us: good
            }
            thread::sleep(Duration::from_millis(300));
        }
        start.elapsed()
    });
    // A 1 MB request line, garbage with and without an end of head, and 200 at once.
    let mut huge = b"GET /".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend(b" HTTP/1.1\r\n\r\n");
    let mut garbage = rng.bytes(64 * 1024);
    garbage.extend(b"\r\n\r\n");
    let endless_garbage = rng.bytes(1 << 20);
    let hostile: Vec<_> = [huge, garbage, endless_garbage]
        .into_iter()
        .map(|request| thread::spawn(move || hostile_request(port, &request)))
        .collect();
    let burst: Vec<_> = (0..200)
        .map(|_| thread::spawn(move || timed_get(port)))
        .collect();

    // A normal client is served within seconds meanwhile, again and again.
    let mut normal = Vec::new();
    for _ in 0..5 {
        let took = timed_get(port).unwrap_or_else(|why| panic!("normal client: {why}"));
        assert!(
            took < Duration::from_secs(3),
            "/metrics took {took:?} under attack"
        );
        normal.push(took);
        thread::sleep(Duration::from_millis(200));
    }
    let statuses: Vec<String> = hostile
        .into_iter()
        .map(|client| client.join().unwrap())
        .collect();
    let mut burst_times = Vec::new();
    for client in burst {
        burst_times.push(
            client
                .join()
                .unwrap()
                .expect("one of 200 concurrent scrapes"),
        );
    }
    burst_times.sort();
    monitored.assert_counting("the attack");

    // The idle clients are dropped by the agent's request timeout, freeing its descriptors.
    let start = Instant::now();
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
    }
    let idle_closed_after = start.elapsed();
    let dripped = drip.join().unwrap();
    drop(idle);
    thread::sleep(Duration::from_millis(500));
    let fds_after = open_sockets(monitored.agent.pid());
    eprintln!(
        "http: normal scrapes under attack {normal:?}; 200 concurrent scrapes: median {:?}, \
         slowest {:?}; hostile replies {statuses:?}; idle clients closed within {:?} more; \
         the dripping client gave up after {dripped:?}; agent fds {fds_before} -> {fds_after}",
        burst_times[burst_times.len() / 2],
        burst_times[burst_times.len() - 1],
        idle_closed_after,
    );
    assert!(
        statuses
            .iter()
            .all(|status| status.starts_with("HTTP/1.1 4") || status.contains("closed")),
        "{statuses:?}"
    );
    assert!(
        idle_closed_after < Duration::from_secs(10),
        "idle connections held for {idle_closed_after:?}"
    );
    assert!(
        fds_after <= fds_before + 5,
        "the agent holds {fds_after} sockets, {fds_before} before the attack"
    );
    monitored.assert_counting("the attack ended");
    timed_get(port).expect("a normal scrape after the attack");
}
