//! The Debian package `cargo xtask dist` builds beside the tarball:
//! `target/dist/bitsecure_<version>_<arch>.deb`, packed with `dpkg-deb` (Debian's own tool,
//! always present where the package is used; cargo-deb would be one more tool to build in CI
//! for what is a staged tree and a control file here).
//!
//! ```text
//! /usr/bin/bitsecure                          the agent and CLI
//! /etc/bitsecure/bitsecure.toml               the config, a conffile (dpkg keeps local edits)
//! /usr/lib/systemd/system/bitsecure.service   the hardened unit (deploy/systemd), /usr paths
//! /usr/share/man/man1/bitsecure*.1.gz         man pages (`bitsecure man`)
//! /usr/share/bash-completion/completions/bitsecure, zsh and fish completions
//! /usr/share/doc/bitsecure/                   README.md, INSTALL.md, runbook.md, copyright
//! /usr/share/bitsecure/grafana, prometheus    dashboard, rules, scrape and Alertmanager examples
//! ```
//!
//! Maintainer scripts: `deploy/debian/{postinst,prerm,postrm}` (system user, enable + start when
//! the host is ready, restart on upgrade, pins removed on remove, state and user on purge).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{dist::copy_tree, util};

/// Where the tarball's unit points, and where the package's does.
const UNIT_PATHS: [(&str, &str); 2] = [
    ("/usr/local/bin/bitsecure", "/usr/bin/bitsecure"),
    (
        "/usr/local/share/doc/bitsecure/",
        "/usr/share/doc/bitsecure/",
    ),
];

/// Builds the package from the release `binary`; returns its path.
pub fn build(
    root: &Path,
    binary: &Path,
    version: &str,
    glibc: Option<(u32, u32)>,
    dist: &Path,
) -> anyhow::Result<PathBuf> {
    let arch = {
        let mut command = Command::new("dpkg");
        command.arg("--print-architecture");
        util::output(command).context("dpkg --print-architecture failed (build on Debian)")?
    };
    let arch = arch.trim();
    let stage = dist.join(format!("deb-{version}-{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        let target = stage.join(path);
        fs::create_dir_all(target.parent().unwrap())
            .with_context(|| format!("cannot create {}", target.display()))?;
        fs::write(&target, bytes).with_context(|| format!("cannot write {}", target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", target.display()))
    };
    let read =
        |path: &str| fs::read(root.join(path)).with_context(|| format!("cannot read {path}"));

    put("usr/bin/bitsecure", &fs::read(binary)?, 0o755)?;
    put(
        "etc/bitsecure/bitsecure.toml",
        &read("config/bitsecure.toml")?,
        0o644,
    )?;
    let mut unit = String::from_utf8(read("deploy/systemd/bitsecure.service")?)?;
    for (from, to) in UNIT_PATHS {
        if !unit.contains(from) {
            bail!("deploy/systemd/bitsecure.service no longer mentions {from}: update deb.rs");
        }
        unit = unit.replace(from, to);
    }
    put(
        "usr/lib/systemd/system/bitsecure.service",
        unit.as_bytes(),
        0o644,
    )?;

    // Generated from the binary itself, so they always match it.
    let man = stage.join("usr/share/man/man1");
    let mut command = Command::new(binary);
    command.arg("man").arg(&man);
    util::status(command).context("bitsecure man failed")?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        let mut gzip = Command::new("gzip");
        gzip.args(["-9n"]).arg(&page);
        util::status(gzip).context("gzip failed")?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/bitsecure"),
        ("zsh", "usr/share/zsh/vendor-completions/_bitsecure"),
        ("fish", "usr/share/fish/vendor_completions.d/bitsecure.fish"),
    ] {
        let mut command = Command::new(binary);
        command.args(["completions", shell]);
        let script = util::output(command).context("bitsecure completions failed")?;
        put(path, script.as_bytes(), 0o644)?;
    }

    for (from, to) in [
        ("README.md", "README.md"),
        ("deploy/README.md", "INSTALL.md"),
        ("docs/runbook.md", "runbook.md"),
    ] {
        put(
            &format!("usr/share/doc/bitsecure/{to}"),
            &read(from)?,
            0o644,
        )?;
    }
    let license = {
        let mut command = Command::new("cargo");
        command
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(root);
        let metadata: serde_json::Value = serde_json::from_str(&util::output(command)?)?;
        metadata["packages"]
            .as_array()
            .and_then(|packages| packages.iter().find(|p| p["name"] == "bitsecure"))
            .and_then(|package| package["license"].as_str())
            .unwrap_or("see README.md")
            .to_owned()
    };
    put(
        "usr/share/doc/bitsecure/copyright",
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: bitsecure\n\nFiles: *\nCopyright: the BitSecure authors\nLicense: {license}\n"
        )
        .as_bytes(),
        0o644,
    )?;
    for folder in ["grafana", "prometheus"] {
        copy_tree(
            &root.join(folder),
            &stage.join("usr/share/bitsecure").join(folder),
        )?;
    }

    let installed_kib = du_kib(&stage)?;
    let depends = match glibc {
        Some((major, minor)) => format!("libc6 (>= {major}.{minor}), passwd"),
        None => "libc6, passwd".to_owned(),
    };
    put(
        "DEBIAN/control",
        format!(
            "Package: bitsecure\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: BitSecure <bitsecure@example.invalid>\n\
             Installed-Size: {installed_kib}\n\
             Depends: {depends}\n\
             Section: net\n\
             Priority: optional\n\
             Homepage: https://example.invalid/bitsecure\n\
             Description: per-process network accounting and baseline for dedicated machines\n \
             BitSecure counts every byte in the kernel (eBPF), per process and remote\n \
             endpoint, learns a baseline of normal traffic, and exports traffic, deviations\n \
             and unexpected destinations to Prometheus. Made for mining rigs and other\n \
             machines that do one thing.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    put(
        "DEBIAN/conffiles",
        b"/etc/bitsecure/bitsecure.toml\n",
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &format!("DEBIAN/{script}"),
            &read(&format!("deploy/debian/{script}"))?,
            0o755,
        )?;
    }

    let deb = dist.join(format!("bitsecure_{version}_{arch}.deb"));
    let mut dpkg_deb = Command::new("dpkg-deb");
    dpkg_deb
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb);
    util::status(dpkg_deb).context("dpkg-deb --build failed")?;
    fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;
    Ok(deb)
}

fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut command = Command::new("du");
    command.args(["-sk", "--exclude=DEBIAN"]).arg(dir);
    let text = util::output(command)?;
    text.split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .context("cannot read du's output")
}
