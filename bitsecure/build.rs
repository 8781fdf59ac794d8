//! Builds `bitsecure-ebpf` for the BPF target (nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `src/kernel.rs` embeds it with `include_bytes_aligned!`.
use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("bitsecure has no parent directory")?;

    // `cargo xtask setup` installs bpf-linker into the project-local tools directory.
    let tools_bin = workspace.join(".tools").join("bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools_bin.join("bpf-linker").display()
    );
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools_bin.clone()];
    dirs.extend(env::split_paths(&path));
    let path = env::join_paths(dirs).context("PATH contains an invalid entry")?;
    if !env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()) {
        bail!(
            "bpf-linker not found in {} or on PATH: run `cargo xtask setup` first",
            tools_bin.display()
        );
    }
    // SAFETY: build scripts are single-threaded; aya-build's child cargo inherits this PATH.
    unsafe { env::set_var("PATH", &path) };

    // For bitsecure_build_info: the commit and the compiler the agent was built from.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BITSECURE_REVISION={revision}");
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/refs/heads");
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BITSECURE_RUSTC={rustc_version}");

    let ebpf_dir = workspace.join("bitsecure-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to bitsecure-ebpf")?;
    aya_build::build_ebpf(
        [Package {
            name: "bitsecure-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
