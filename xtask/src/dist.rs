//! `cargo xtask dist`: the release tarball a rig is installed from.
//!
//! Builds the agent in release mode and packs
//! `target/dist/bitsecure-<version>-<arch>-linux-gnu.tar.gz`, one top-level directory of that
//! name holding everything `install.sh` needs plus the Grafana and Prometheus files:
//!
//! ```text
//! bin/bitsecure               the agent (dynamically linked against glibc)
//! config/bitsecure.toml       the default config
//! systemd/bitsecure.service   the hardened unit
//! install.sh                  install, upgrade, uninstall
//! grafana/  prometheus/       dashboard, alert rules and Alertmanager example, for the
//!                             monitoring host
//! docs/runbook.md             what each alert means and what to do
//! README.md  INSTALL.md       the project README and deploy/README.md
//! ```
//!
//! A `.sha256` in `sha256sum` format is written beside the tarball. Packing uses the system
//! `tar` and `sha256sum`, with root as owner of every entry and names sorted, whoever builds.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{deb, setup, util};

/// Sets up, builds and packs; prints where the tarball and the Debian package are and how big
/// they are, and returns their paths.
pub fn run(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    setup::run(root)?;
    util::build_release(root, &["bitsecure"])?;
    let target = util::target_dir(root)?;
    let binary = target.join("release/bitsecure");
    let version = binary_version(&binary)?;
    let name = format!("bitsecure-{version}-{}-linux-gnu", std::env::consts::ARCH);
    let dist = target.join("dist");
    let stage = dist.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;
    }

    let files: [(PathBuf, &str, u32); 6] = [
        (binary.clone(), "bin/bitsecure", 0o755),
        (
            root.join("config/bitsecure.toml"),
            "config/bitsecure.toml",
            0o644,
        ),
        (
            root.join("deploy/systemd/bitsecure.service"),
            "systemd/bitsecure.service",
            0o644,
        ),
        (root.join("deploy/install.sh"), "install.sh", 0o755),
        (root.join("README.md"), "README.md", 0o644),
        (root.join("deploy/README.md"), "INSTALL.md", 0o644),
    ];
    for (from, to, mode) in &files {
        copy_file(from, &stage.join(to), *mode)?;
    }
    for folder in ["grafana", "prometheus", "docs"] {
        copy_tree(&root.join(folder), &stage.join(folder))?;
    }

    let tarball = dist.join(format!("{name}.tar.gz"));
    let partial = dist.join(format!("{name}.tar.gz.partial"));
    let mut tar = Command::new("tar");
    tar.args([
        "--create",
        "--gzip",
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--file",
    ])
    .arg(&partial)
    .arg("--directory")
    .arg(&dist)
    .arg(&name);
    util::status(tar).context("packing the tarball failed (GNU tar is needed)")?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("cannot rename {} to its final name", partial.display()))?;
    fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;

    let mut sha256sum = Command::new("sha256sum");
    sha256sum.arg(format!("{name}.tar.gz")).current_dir(&dist);
    let checksum = util::output(sha256sum).context("sha256sum failed")?;
    let checksum_file = dist.join(format!("{name}.tar.gz.sha256"));
    fs::write(&checksum_file, &checksum)
        .with_context(|| format!("cannot write {}", checksum_file.display()))?;

    let size = fs::metadata(&tarball)
        .with_context(|| format!("cannot stat {}", tarball.display()))?
        .len();
    println!(
        "dist: {} ({:.1} MB, {size} bytes)",
        tarball.display(),
        size as f64 / 1_000_000.0
    );
    println!("dist: {}", checksum_file.display());
    let glibc = required_glibc(&fs::read(&binary).context("cannot read the agent binary")?);
    let deb = deb::build(root, &binary, &version, glibc, &dist)?;
    println!("dist: {}", deb.display());
    match glibc {
        Some((major, minor)) => println!(
            "dist: bin/bitsecure needs glibc {major}.{minor} or newer on the target machine"
        ),
        None => println!("dist: bin/bitsecure references no versioned glibc symbol"),
    }
    Ok((tarball, deb))
}

/// The version a binary reports with `--version` ("bitsecure 0.1.0" → "0.1.0").
fn binary_version(binary: &Path) -> anyhow::Result<String> {
    let mut command = Command::new(binary);
    command.arg("--version");
    let text = util::output(command)?;
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [_, version] => Ok((*version).to_owned()),
        _ => bail!(
            "unexpected `{} --version` output: {text:?}",
            binary.display()
        ),
    }
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", to.display()))
}

/// Copies a folder of plain files and folders (files 0644, folders 0755).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", to.display()))?;
    let entries = fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&path, &target)?;
        } else if kind.is_file() {
            copy_file(&path, &target, 0o644)?;
        } else {
            bail!(
                "{} is neither a file nor a folder: not packing it",
                path.display()
            );
        }
    }
    Ok(())
}

/// The newest glibc symbol version an ELF binary references (the `GLIBC_x.y` names
/// `objdump -T` shows), i.e. the oldest glibc it runs with.
fn required_glibc(binary: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut newest = None;
    let mut rest = binary;
    while let Some(at) = rest.windows(TAG.len()).position(|window| window == TAG) {
        rest = &rest[at + TAG.len()..];
        let digits = rest
            .iter()
            .take_while(|byte| byte.is_ascii_digit() || **byte == b'.')
            .count();
        let text = std::str::from_utf8(&rest[..digits]).unwrap_or_default();
        let mut parts = text.split('.').map(str::parse::<u32>);
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            newest = newest.max(Some((major, minor)));
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_glibc_version_wins() {
        let binary = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_PRIVATE\0GLIBC_2.9\0GLIBC_2.33\0";
        assert_eq!(required_glibc(binary), Some((2, 34)));
        assert_eq!(required_glibc(b"\0GLIBC_PRIVATE\0musl\0"), None);
    }
}
