//! `bitsecure check` and the config location, with the real binary on this machine. Needs root
//! (privileges pass, a bpffs is mounted in a private mount namespace); fails, never skips,
//! without it.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use bitsecure_test::{
    agent::agent_binary,
    process::{require_root, scratch_dir},
};

/// A directory of its own for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("check-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config in `dir` listening on `port`, with its baseline at `dir/baseline.toml` and
/// `kernel` as the body of `[kernel]`.
fn write_config(dir: &Path, port: u16, kernel: &str) -> PathBuf {
    let config = dir.join("bitsecure.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[kernel]\n{kernel}\n\n[baseline]\npath = \"{}\"\n",
            dir.join("baseline.toml").display()
        ),
    )
    .unwrap();
    config
}

fn bitsecure() -> Command {
    let mut command = Command::new(agent_binary());
    command.env_remove("BITSECURE_CONFIG");
    command
}

/// `bitsecure check --config CONFIG`, in a private mount namespace where a fresh bpffs is
/// mounted at /sys/fs/bpf (whatever the host has there; nothing leaks out), and with
/// `/sys/fs/bpf/bitsecure` created first when `pinned`.
fn check_with_bpffs(config: &Path, pinned: bool) -> Output {
    let target = CString::new("/sys/fs/bpf").unwrap();
    let pin = CString::new("/sys/fs/bpf/bitsecure").unwrap();
    let mut command = bitsecure();
    command.arg("check").arg("--config").arg(config);
    // SAFETY: only async-signal-safe system calls between fork and exec, on strings made
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            let root = c"/".as_ptr();
            if libc::mount(
                c"none".as_ptr(),
                root,
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            let bpf = c"bpf".as_ptr();
            if libc::mount(bpf, target.as_ptr(), bpf, 0, std::ptr::null()) != 0 {
                return fail();
            }
            if pinned && libc::mkdir(pin.as_ptr(), 0o700) != 0 {
                return fail();
            }
            Ok(())
        });
    }
    command.output().expect("run bitsecure check")
}

fn check(config: &Path) -> Output {
    bitsecure()
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run bitsecure check")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The report entry of `topic` (the first): its line, the further lines of its message and
/// its fix line, all indented under it.
fn line_of(output: &Output, topic: &str) -> String {
    let text = stdout(output);
    let lines: Vec<&str> = text.lines().collect();
    let index = lines
        .iter()
        .position(|line| {
            line.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{topic} ")))
        })
        .unwrap_or_else(|| panic!("no {topic} line\n{}", describe(output)));
    let further = lines[index + 1..]
        .iter()
        .take_while(|line| line.is_empty() || line.starts_with(' '));
    std::iter::once(&lines[index])
        .chain(further)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_line(output: &Output, topic: &str, status: &str) -> String {
    let line = line_of(output, topic);
    assert!(
        line.starts_with(status),
        "{topic} is not {status}: {line}\n{}",
        describe(output)
    );
    line
}

#[test]
fn a_ready_host_passes_every_check() {
    require_root();
    let dir = test_dir("ready");
    let config = write_config(&dir, free_port(), "");
    let output = check_with_bpffs(&config, false);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let config_line = assert_line(&output, "config", "OK");
    assert!(
        config_line.contains(&format!("{} (from --config)", config.display())),
        "{config_line}"
    );
    assert_line(&output, "kernel", "OK");
    assert_line(&output, "cgroup", "OK");
    let bpffs = assert_line(&output, "bpffs", "OK");
    assert!(bpffs.contains("/sys/fs/bpf"), "{bpffs}");
    assert!(!bpffs.contains("previous agent"), "{bpffs}");
    assert_line(&output, "privileges", "OK");
    assert_line(&output, "listen", "OK");
    let baseline = assert_line(&output, "baseline", "OK");
    assert!(
        baseline.contains("will learn for 1800 s on first start"),
        "{baseline}"
    );
    assert!(!stdout(&output).contains("FAIL"), "{}", describe(&output));
}

#[test]
fn existing_pins_are_reported_as_state_to_reuse() {
    require_root();
    let dir = test_dir("pinned");
    let config = write_config(&dir, free_port(), "");
    let output = check_with_bpffs(&config, true);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let bpffs = assert_line(&output, "bpffs", "OK");
    assert!(
        bpffs.contains(
            "pinned state from a previous agent: will be reused; `bitsecure uninstall` removes it"
        ),
        "{bpffs}"
    );
}

#[test]
fn pin_path_outside_a_bpffs_fails_with_the_mount_command() {
    require_root();
    let dir = test_dir("no-bpffs");
    let pins = dir.join("pins");
    let config = write_config(
        &dir,
        free_port(),
        &format!("pin_path = \"{}\"", pins.join("bitsecure").display()),
    );
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let bpffs = assert_line(&output, "bpffs", "FAIL");
    assert!(
        bpffs.contains(&format!("fix: mount -t bpf bpf {} ", pins.display())),
        "{bpffs}"
    );
}

#[test]
fn a_port_held_open_fails_naming_the_port_its_owner_and_the_fix() {
    require_root();
    let dir = test_dir("port-taken");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let config = write_config(&dir, port, "pin_path = \"\"");
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let listen = assert_line(&output, "listen", "FAIL");
    assert!(listen.contains(&format!("port {port}")), "{listen}");
    assert!(
        listen.contains(&format!("pid {} ", std::process::id())),
        "the owner (this test) is not named: {listen}"
    );
    assert!(listen.contains("fix: change agent.listen"), "{listen}");
    // The other checks still ran.
    assert_line(&output, "baseline", "OK");
    drop(held);
}

#[test]
fn a_bitsecure_agent_on_the_port_is_only_a_warning() {
    require_root();
    let dir = test_dir("agent-running");
    let agent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = agent.local_addr().unwrap().port();
    // Answers /metrics like a running agent, once.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = agent.accept().unwrap();
        // Read the whole request: closing with unread data would reset the connection.
        let mut request = Vec::new();
        let mut buffer = [0; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut buffer).unwrap();
            assert!(read > 0, "the request ended early");
            request.extend_from_slice(&buffer[..read]);
        }
        assert!(request.starts_with(b"GET /metrics "));
        let body = "# TYPE bitsecure_build_info gauge\nbitsecure_build_info{version=\"0.1.0\"} 1\n";
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}"
        )
        .unwrap();
    });
    let config = write_config(&dir, port, "pin_path = \"\"");
    let output = check(&config);
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let listen = assert_line(&output, "listen", "WARN");
    assert!(
        listen.contains("a bitsecure agent is already running there"),
        "{listen}"
    );
}

#[test]
fn a_broken_baseline_fails_naming_the_line() {
    require_root();
    let dir = test_dir("broken-baseline");
    let config = write_config(&dir, free_port(), "pin_path = \"\"");
    std::fs::write(
        dir.join("baseline.toml"),
        "format_version = 1\n\n[[rule]]\nprocess = \"xmrig\nremote = \"10.0.0.2\"\n",
    )
    .unwrap();
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let baseline = assert_line(&output, "baseline", "FAIL");
    assert!(baseline.contains("baseline.toml, line 4"), "{baseline}");
    assert!(baseline.contains("fix: "), "{baseline}");
}

#[test]
fn a_bad_config_fails_and_stops_there() {
    require_root();
    let dir = test_dir("bad-config");
    let config = dir.join("bitsecure.toml");
    std::fs::write(
        &config,
        "[agent]\nlisten = \"127.0.0.1:1\"\npoll_intervall = 3\n",
    )
    .unwrap();
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let line = assert_line(&output, "config", "FAIL");
    assert!(
        line.contains("poll_intervall") && line.contains("line 3"),
        "{line}"
    );
    assert!(
        !stdout(&output).contains("kernel"),
        "checks ran without a config\n{}",
        describe(&output)
    );
}

#[test]
fn bitsecure_config_env_names_the_config_file() {
    require_root();
    let dir = test_dir("env");
    let port = free_port();
    let from_env = write_config(&dir, port, "pin_path = \"\"");

    let output = bitsecure()
        .arg("config")
        .env("BITSECURE_CONFIG", &from_env)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!(
            "# config: {} (from BITSECURE_CONFIG)\n",
            from_env.display()
        )),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    // --config wins over the environment.
    let flag = dir.join("flag.toml");
    std::fs::write(&flag, "[agent]\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let output = bitsecure()
        .arg("config")
        .arg("--config")
        .arg(&flag)
        .env("BITSECURE_CONFIG", &from_env)
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("# config: {} (from --config)\n", flag.display())),
        "{}",
        describe(&output)
    );

    // `check` and the other commands take it too; a missing file is an error, not a fallback.
    let output = bitsecure()
        .arg("check")
        .env("BITSECURE_CONFIG", &from_env)
        .output()
        .unwrap();
    let line = line_of(&output, "config");
    assert!(
        line.contains(&format!("{} (from BITSECURE_CONFIG)", from_env.display())),
        "{line}"
    );
    let missing = dir.join("missing.toml");
    let output = bitsecure()
        .args(["baseline", "show"])
        .env("BITSECURE_CONFIG", &missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(
        stderr.contains("(from BITSECURE_CONFIG)") && stderr.contains("missing.toml"),
        "{stderr}"
    );
}
