//! The deployment files in `deploy/`: the systemd unit passes `systemd-analyze verify` and keeps
//! its `systemd-analyze security` exposure at or below the measured level, and `install.sh`
//! installs, keeps an existing config, validates it and uninstalls — all staged with `--root`
//! into a temporary directory from a fake dist layout whose `bin/bitsecure` is a stub script,
//! so nothing on the machine is touched and no release build is needed.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

/// `systemd-analyze security --offline=true` of deploy/systemd/bitsecure.service measured 2.4
/// ("OK") with systemd 252 (Debian 12). The margin allows one small regression at most; lower
/// this when the unit gets tighter (e.g. capabilities trimmed).
const MAX_EXPOSURE: f64 = 2.6;

/// What the unit must run: the paths install.sh installs to.
const EXEC_START: &str =
    "ExecStart=/usr/local/bin/bitsecure run --config /etc/bitsecure/bitsecure.toml";

/// Stands in for bin/bitsecure: logs its arguments to $BITSECURE_STUB_LOG, answers
/// `--version`, and `config --config FILE` fails when FILE contains the word "broken".
const STUB: &str = r#"#!/bin/sh
echo "$*" >> "$BITSECURE_STUB_LOG"
case "$1" in
--version) echo "bitsecure 0.0.0-stub" ;;
config)
    [ "$2" = --config ] && [ -f "$3" ] || exit 2
    if grep -q broken "$3"; then echo "invalid config $3: broken" >&2; exit 1; fi
    echo "config ok" ;;
check | uninstall) ;;
*) exit 2 ;;
esac
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bitsecure-test has a parent")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "bitsecure-deploy-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs systemd-analyze; a missing one fails the test with what to install.
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "systemd-analyze not found: install the Debian package `systemd` \
             (apt-get install systemd); it checks the unit even where systemd is not PID 1"
        ),
        Err(error) => panic!("cannot run systemd-analyze: {error}"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A copy of the unit, named bitsecure.service, whose ExecStart= runs an executable that
/// exists (the stub), since /usr/local/bin/bitsecure is not installed here.
fn unit_copy(dir: &TempDir) -> PathBuf {
    let unit = read(&repo().join("deploy/systemd/bitsecure.service"));
    let exec_starts: Vec<&str> = unit
        .lines()
        .filter(|line| line.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec_starts,
        [EXEC_START],
        "the unit must run the installed agent"
    );
    let stub = dir.0.join("bin/bitsecure");
    write(&stub, STUB, 0o755);
    let copy = dir.0.join("bitsecure.service");
    let rewritten = unit.replace(
        EXEC_START,
        &format!(
            "ExecStart={} run --config /etc/bitsecure/bitsecure.toml",
            stub.display()
        ),
    );
    write(&copy, &rewritten, 0o644);
    copy
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = TempDir::new("verify");
    let unit = unit_copy(&dir);
    let output = systemd_analyze(&["verify", unit.to_str().expect("UTF-8 path")]);
    let said = text(&output);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify bitsecure.service ({}):\n{said}",
        output.status
    );
}

#[test]
fn unit_exposure_is_at_most_the_measured_level() {
    let dir = TempDir::new("security");
    let unit = unit_copy(&dir);
    let output = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().expect("UTF-8 path"),
    ]);
    let said = text(&output);
    assert!(
        output.status.success(),
        "systemd-analyze security --offline=true failed ({}):\n{said}",
        output.status
    );
    let exposure: f64 = said
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for bitsecure.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{said}"));
    println!("systemd-analyze security exposure: {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "the unit's exposure rose to {exposure} (at most {MAX_EXPOSURE}): a sandbox directive \
         was weakened or removed:\n{said}"
    );
}

#[test]
fn bounding_and_ambient_capabilities_are_the_same() {
    let unit = read(&repo().join("deploy/systemd/bitsecure.service"));
    let set = |key: &str| -> BTreeSet<String> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(key))
            .flat_map(|value| value.split_whitespace().map(str::to_owned))
            .collect()
    };
    let bounding = set("CapabilityBoundingSet=");
    assert!(
        bounding.contains("CAP_BPF"),
        "CAP_BPF missing: {bounding:?}"
    );
    assert!(
        !bounding.contains("CAP_SYS_ADMIN"),
        "CAP_SYS_ADMIN is not needed on Linux 5.8+"
    );
    assert_eq!(bounding, set("AmbientCapabilities="));
}

/// The unpacked dist tarball as `cargo xtask dist` lays it out, with the stub as the agent.
struct FakeDist {
    dir: TempDir,
}

impl FakeDist {
    fn new() -> Self {
        let dir = TempDir::new("install");
        let dist = dir.0.join("dist");
        let repo = repo();
        write(&dist.join("bin/bitsecure"), STUB, 0o755);
        for (from, to, mode) in [
            ("config/bitsecure.toml", "config/bitsecure.toml", 0o644),
            (
                "deploy/systemd/bitsecure.service",
                "systemd/bitsecure.service",
                0o644,
            ),
            ("deploy/install.sh", "install.sh", 0o755),
            ("README.md", "README.md", 0o644),
            ("deploy/README.md", "INSTALL.md", 0o644),
        ] {
            write(&dist.join(to), &read(&repo.join(from)), mode);
        }
        fs::create_dir(dir.0.join("root")).expect("create the staging root");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.0.join("root")
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("stub.log")
    }

    fn stub_calls(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs install.sh ARGS --root ROOT.
    fn install_sh(&self, args: &[&str]) -> Output {
        Command::new(self.dir.0.join("dist/install.sh"))
            .args(args)
            .arg("--root")
            .arg(self.root())
            .env("BITSECURE_STUB_LOG", self.log())
            .output()
            .expect("run install.sh")
    }

    fn installed(&self, path: &str) -> PathBuf {
        self.root().join(path)
    }
}

fn assert_ok(output: &Output, what: &str) -> String {
    let said = text(output);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{said}",
        output.status
    );
    said
}

#[test]
fn install_sh_installs_files_with_their_modes() {
    let dist = FakeDist::new();
    assert_ok(&dist.install_sh(&[]), "install.sh --root");
    let repo = repo();
    for (path, expected_mode, source) in [
        ("usr/local/bin/bitsecure", 0o755, None),
        (
            "etc/bitsecure/bitsecure.toml",
            0o644,
            Some("config/bitsecure.toml"),
        ),
        (
            "etc/systemd/system/bitsecure.service",
            0o644,
            Some("deploy/systemd/bitsecure.service"),
        ),
        (
            "usr/local/share/doc/bitsecure/INSTALL.md",
            0o644,
            Some("deploy/README.md"),
        ),
        (
            "usr/local/share/doc/bitsecure/README.md",
            0o644,
            Some("README.md"),
        ),
    ] {
        let installed = dist.installed(path);
        assert_eq!(mode(&installed), expected_mode, "mode of {path}");
        let expected = source.map_or_else(|| STUB.to_owned(), |source| read(&repo.join(source)));
        assert_eq!(read(&installed), expected, "content of {path}");
    }
    let state = dist.installed("var/lib/bitsecure");
    assert!(state.is_dir(), "no {}", state.display());
    assert_eq!(mode(&state), 0o700, "mode of /var/lib/bitsecure");
    let leftovers: Vec<_> = fs::read_dir(dist.installed("usr/local/bin"))
        .expect("read bin")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["bitsecure"], "temporary files left behind");
    let config = dist.installed("etc/bitsecure/bitsecure.toml");
    assert!(
        dist.stub_calls()
            .contains(&format!("config --config {}", config.display())),
        "the config was not validated with the installed binary; stub calls:\n{}",
        dist.stub_calls()
    );
}

#[test]
fn install_sh_never_overwrites_an_existing_config() {
    let dist = FakeDist::new();
    let config = dist.installed("etc/bitsecure/bitsecure.toml");
    let mine = "# my own config\n[agent]\nlisten = \"10.0.0.5:9977\"\n";
    write(&config, mine, 0o640);
    let said = assert_ok(&dist.install_sh(&[]), "install.sh --root");
    assert_eq!(read(&config), mine, "the existing config was replaced");
    assert_eq!(
        mode(&config),
        0o640,
        "the existing config's mode was changed"
    );
    assert!(
        said.contains("kept the existing"),
        "no word about it:\n{said}"
    );
    // An upgrade (second run) keeps it too and replaces the binary and the unit.
    assert_ok(&dist.install_sh(&[]), "install.sh --root, again");
    assert_eq!(
        read(&config),
        mine,
        "the existing config was replaced on upgrade"
    );
}

#[test]
fn install_sh_refuses_an_invalid_config() {
    let dist = FakeDist::new();
    let config = dist.installed("etc/bitsecure/bitsecure.toml");
    write(&config, "broken = [\n", 0o644);
    let output = dist.install_sh(&[]);
    let said = text(&output);
    assert!(
        !output.status.success(),
        "an invalid config passed:\n{said}"
    );
    assert!(
        said.contains(&format!("{} is not valid", config.display()))
            && said.contains("invalid config")
            && said.contains("nothing was changed"),
        "the error must name the config and show the agent's message:\n{said}"
    );
    // Checked with the new binary before anything is replaced (an upgrade leaves the running
    // agent alone).
    for untouched in [
        "usr/local/bin/bitsecure",
        "etc/systemd/system/bitsecure.service",
    ] {
        assert!(
            !dist.installed(untouched).exists(),
            "{untouched} was installed despite the invalid config"
        );
    }
}

#[test]
fn install_sh_uninstall_removes_files_and_purge_removes_state() {
    let dist = FakeDist::new();
    assert_ok(&dist.install_sh(&[]), "install.sh --root");
    write(
        &dist.installed("var/lib/bitsecure/baseline.toml"),
        "# learned\n",
        0o600,
    );

    assert_ok(
        &dist.install_sh(&["--uninstall"]),
        "install.sh --uninstall --root",
    );
    for gone in [
        "usr/local/bin/bitsecure",
        "etc/systemd/system/bitsecure.service",
        "usr/local/share/doc/bitsecure",
    ] {
        assert!(!dist.installed(gone).exists(), "{gone} was not removed");
    }
    for kept in [
        "etc/bitsecure/bitsecure.toml",
        "var/lib/bitsecure/baseline.toml",
    ] {
        assert!(
            dist.installed(kept).exists(),
            "{kept} was removed without --purge"
        );
    }
    assert!(
        !dist.stub_calls().contains("uninstall"),
        "with --root the kernel state must not be touched; stub calls:\n{}",
        dist.stub_calls()
    );

    assert_ok(
        &dist.install_sh(&["--uninstall", "--purge"]),
        "install.sh --uninstall --purge --root",
    );
    for gone in ["etc/bitsecure", "var/lib/bitsecure"] {
        assert!(!dist.installed(gone).exists(), "{gone} was not purged");
    }
}

#[test]
fn install_sh_refuses_bad_arguments_and_non_root() {
    let dist = FakeDist::new();
    for args in [&["--purge"][..], &["--frobnicate"][..]] {
        let output = dist.install_sh(args);
        assert!(
            !output.status.success() && text(&output).contains("install.sh: error:"),
            "install.sh {args:?} was accepted:\n{}",
            text(&output)
        );
    }
    // A real install (no --root) as a user other than root stops before touching anything.
    let script = dist.dir.0.join("dist/install.sh");
    let output = if euid() == 0 {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&script)
            .output()
            .expect("run setpriv (util-linux)")
    } else {
        Command::new(&script).output().expect("run install.sh")
    };
    assert!(
        !output.status.success() && text(&output).contains("run as root"),
        "install.sh without --root ran as non-root:\n{}",
        text(&output)
    );
}

fn euid() -> u32 {
    read(Path::new("/proc/self/status"))
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("Uid line in /proc/self/status")
}
