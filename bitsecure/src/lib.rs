//! The BitSecure agent as a library: the `bitsecure` binary (main.rs) wires these together.
//!
//! - [`kernel`] loads and attaches the eBPF programs; [`bpf_batch`] reads their maps.
//! - [`poller`] attributes kernel flows to processes ([`identity`], [`sock_diag`]) and feeds
//!   the [`flow_table`], which bounds cardinality, and the [`metrics`] served by [`http`].
//! - [`baseline`] learns normal traffic and compares live traffic with it.
//! - [`agent`] runs it all; [`commands`] are the review commands of the CLI ([`http_client`]
//!   talks to the agent).
//! - [`config`] and [`cgroup`] decide what to watch; [`caps`] drops privileges after attaching.
//! - [`names`] parses DNS answers, TLS SNI, HTTP Host and app protocols (pure);
//!   [`naming`] applies them to the payload events the kernel hands over: remote names and
//!   each flow's application.

pub mod agent;
pub mod baseline;
pub mod bpf_batch;
pub mod caps;
pub mod cgroup;
pub mod check;
pub mod commands;
pub mod config;
pub mod flow_table;
pub mod http;
pub mod http_client;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod names;
pub mod naming;
pub mod pinning;
pub mod poller;
pub mod sock_diag;
pub mod state;
