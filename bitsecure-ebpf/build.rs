//! Rebuild the programs when bpf-linker changes (it is not a cargo dependency, so cargo cannot
//! see it otherwise).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
