//! Everything that talks to the kernel's BPF side, and nothing else: loading and attaching the
//! programs ([`programs`]), pinning them across restarts ([`pins`]), batch map reads
//! ([`batch`]), finding the cgroup to watch ([`cgroup`], in the mount table: [`mounts`]) and
//! dropping privileges afterwards ([`caps`]). What the map contents mean is the poller's
//! business.

pub mod attachment;
pub mod batch;
pub mod caps;
pub mod cgroup;
pub mod interfaces;
pub mod mounts;
pub mod pins;
pub mod programs;

pub use programs::{
    AttachedPrograms, KernelLogger, KernelMaps, MapCapacities, ProgramCheck, ProgramStats,
    check_kernel_version, load_and_attach,
};
