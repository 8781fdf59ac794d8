//! BitSecure's privileged integration tests, in one test binary: the real agent binary loads the
//! real programs and is checked against independent counts, next to lints of the shipped
//! Prometheus, Grafana and systemd files that need the tools `cargo xtask setup` installs.
//!
//! They need root and fail (never skip) when they cannot run. The agent binary is not built by
//! `cargo test -p bitsecure-test`: `cargo xtask test` builds it first (see
//! [`bitsecure_test::agent::agent_binary`]). One module:
//! `cargo xtask test -- accounting::` (or `cargo test -p bitsecure-test -- accounting::`).

mod accounting;
mod agent_lifecycle;
mod baseline;
mod blinding;
mod check;
mod demo;
mod deploy;
mod dns_questions;
mod farm;
mod faults;
mod forged_names;
mod grafana_dashboard;
mod impostors;
mod interface_totals;
mod load;
mod names;
mod payout;
mod prometheus_rules;
mod quiet_day;
mod restart;
mod settling;
mod tamper;
mod wire;

use std::path::PathBuf;

use bitsecure_test::process::install_as;

/// The simulated rig's lab has fixed namespaces, addresses and a cgroup: its scenarios (the
/// demo, the quiet day) take turns.
static RIG_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The first `[[rule]]` of `process` in a baseline file's text.
fn rule_of(text: &str, process: &str) -> toml::Value {
    let file: toml::Table = toml::from_str(text).expect("a baseline is TOML");
    file["rule"]
        .as_array()
        .and_then(|rules| {
            rules
                .iter()
                .find(|rule| rule["process"].as_str() == Some(process))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no rule for {process} in\n{text}"))
}

/// The `[[rule]]` tables of a baseline file's text that the agent added while the baseline
/// settled (those with a `learnt_late` time).
fn learnt_late(text: &str) -> Vec<toml::Value> {
    let file: toml::Table = toml::from_str(text).expect("a baseline is TOML");
    file["rule"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rule| rule.get("learnt_late").is_some())
        .cloned()
        .collect()
}

/// Copies the traffic generator to `name` (≤ 15 bytes, so the kernel comm is exactly `name`).
fn install_generator(name: &str) -> PathBuf {
    install_as(env!("CARGO_BIN_EXE_bitsecure-trafficgen"), name)
}

/// Copies the simulated rig's programs (`bitsecure-rig`) to `name`, as [`install_generator`].
fn install_rig(name: &str) -> PathBuf {
    install_as(env!("CARGO_BIN_EXE_bitsecure-rig"), name)
}
