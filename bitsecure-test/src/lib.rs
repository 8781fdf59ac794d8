//! Shared machinery of BitSecure's privileged integration tests (`tests/main.rs`, one test
//! binary) and of the tools beside them in `src/bin/`: the traffic generator
//! (`bitsecure-trafficgen`), the simulated mining rig and demo (`bitsecure-rig`) and the
//! overhead benchmark (`bitsecure-bench`).
//!
//! None of it is part of the product. The tests need root and the tools `cargo xtask setup`
//! installs; they fail (never skip) when they cannot run. `cargo xtask test` builds the agent
//! and runs them.

pub mod agent;
pub mod cgroup;
pub mod exposition;
pub mod lab;
pub mod process;
pub mod testnet;
