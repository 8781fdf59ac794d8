//! `cargo xtask setup`: everything the build and the tests need, installed idempotently.
//!
//! - rust-src for the nightly toolchain (the eBPF crate is built with `-Z build-std=core`);
//! - bpf-linker, built from crates.io against the nightly toolchain's own libLLVM (no system
//!   LLVM; Debian 12 packages none new enough) into `.tools/`;
//! - the Debian packages the tests and the benchmark drive.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages used by the tests (nft counters, netns + veth, offload switches; `dig`,
/// `openssl` and `curl` as independent DNS, TLS and HTTP clients in the name tests), the bench,
/// the demo (a real Prometheus; `promtool` checks the alert rules and the exposition; a real
/// Alertmanager checks the example's routes and inhibitions) and the systemd unit's checks
/// (`systemd-analyze`; `systemd-nspawn` boots a container that installs the tarball and the
/// .deb under a real systemd).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nftables", "nft"),
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("prometheus", "promtool"),
    ("prometheus-alertmanager", "amtool"),
    ("systemd-container", "systemd-nspawn"),
    ("tmux", "tmux"),
    ("systemd", "systemd-analyze"),
    ("bind9-dnsutils", "dig"),
    ("openssl", "openssl"),
    ("curl", "curl"),
];

pub fn run(root: &Path) -> anyhow::Result<()> {
    check_rustup()?;
    install_rust_src()?;
    install_bpf_linker(root)?;
    install_debian_packages()?;
    install_schema_check(root)?;
    Ok(())
}

/// The dashboard's schema check (`bitsecure-test/grafana-schema`): TypeScript and Grafana's
/// published dashboard types, pinned in its package-lock.json, from the npm registry with the
/// machine's npm. Installed again when the lock file is newer than the install.
fn install_schema_check(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("bitsecure-test/grafana-schema");
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if matches!((modified(&installed), modified(&lock)), (Some(done), Some(wanted)) if done >= wanted)
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing the dashboard schema check (npm ci in {})",
        dir.display()
    );
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    util::status(npm).context(
        "npm ci failed (the dashboard schema check needs Node.js and npm: apt-get install nodejs npm)",
    )
}

fn check_rustup() -> anyhow::Result<()> {
    let toolchains = util::try_output(rustup(&["toolchain", "list"])).context(
        "rustup not found: install Rust with rustup (https://rustup.rs), then rerun setup",
    )?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain (the eBPF build needs it)");
        util::status(rustup(&[
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("cannot install the nightly toolchain")?;
    }
    Ok(())
}

fn install_rust_src() -> anyhow::Result<()> {
    let installed = util::output(rustup(&[
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    util::status(rustup(&[
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("cannot add rust-src: try `rustup component add rust-src --toolchain nightly`")
}

/// Builds bpf-linker against the nightly toolchain's libLLVM, so its LLVM matches the one
/// rustc emits bitcode for. A stamp file records which LLVM it was built for.
fn install_bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let linker = tools.join("bin/bpf-linker");
    let nightly = util::output(rustc_nightly(&["-vV"]))?;
    let llvm_version = nightly
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not report an LLVM version")?
        .trim()
        .to_owned();
    let stamp = tools.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} llvm {llvm_version}\n");
    if linker.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(());
    }

    let major = llvm_version
        .split('.')
        .next()
        .context("malformed LLVM version")?;
    let sysroot = PathBuf::from(util::output(rustc_nightly(&["--print", "sysroot"]))?.trim());
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    // bpf-linker's build looks for LLVM_PREFIX/lib/libLLVM.so; the binary keeps a RUNPATH to
    // this directory and loads the exact soname from it at run time.
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }

    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM \
         {llvm_version} (about a minute)"
    );
    let mut install = Command::new("cargo");
    install
        .args(["install", "--locked", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix);
    util::status(install).with_context(|| {
        format!(
            "building bpf-linker failed; it needs a C++ compiler (apt-get install g++) and the \
             nightly toolchain's libLLVM ({})",
            libllvm.display()
        )
    })?;
    fs::write(&stamp, wanted).context("cannot write the bpf-linker stamp")?;
    Ok(())
}

fn find_libllvm(lib: &Path) -> anyhow::Result<PathBuf> {
    let entries = fs::read_dir(lib).with_context(|| format!("cannot list {}", lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        // e.g. libLLVM.so.22.1-rust-1.97.0-nightly (the soname rustc's own library has).
        if name.to_string_lossy().starts_with("libLLVM.so.") {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain looks incomplete; reinstall it with \
         `rustup toolchain install nightly`",
        lib.display()
    )
}

fn install_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(package, _)| {
            let mut query = Command::new("dpkg-query");
            query.args(["-W", "-f=${Status}", package]);
            !util::try_output(query).is_some_and(|status| status.contains("install ok installed"))
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install {}` or run setup as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages {}", missing.join(", "));
    util::status(apt(&["update", "-qq"])).context("apt-get update failed")?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    util::status(apt(&args)).context("apt-get install failed")?;
    for (package, command) in DEBIAN_PACKAGES {
        if util::try_output(which(command)).is_none() {
            bail!("{package} is installed but `{command}` is not on PATH");
        }
    }
    Ok(())
}

fn rustup(args: &[&str]) -> Command {
    let mut command = Command::new("rustup");
    command.args(args);
    command
}

fn rustc_nightly(args: &[&str]) -> Command {
    let mut command = rustup(&["run", "nightly", "rustc"]);
    command.args(args);
    command
}

fn apt(args: &[&str]) -> Command {
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn which(program: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", &format!("command -v {program}")]);
    command
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
