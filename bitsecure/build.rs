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
