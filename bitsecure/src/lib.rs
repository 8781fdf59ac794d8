//! The BitSecure agent as a library; the `bitsecure` binary (main.rs) is its command line.
//!
//! The modules follow the pipeline, kernel to Prometheus:
//!
//! ```text
//! kernel ──maps──▶ poller ──FlowDelta──▶ agent ──▶ export   (/metrics, JSON API)
//!                    ▲                     └─────▶ baseline (learn, compare)
//!                 naming (payload events → names, apps)
//! ```
//!
//! - [`kernel`]: loads and attaches the eBPF programs, pins, batch map reads, cgroup,
//!   capabilities.
//! - [`poller`]: kernel maps → flow deltas attributed to processes (owners, service ports).
//! - [`naming`]: payload events → remote names and application classes (parsers under it).
//! - [`baseline`]: the baseline model and file, learning (recorder) and comparing (monitor).
//! - [`export`]: the only module that knows metric names and label layout; serves HTTP.
//! - [`agent`]: the composition root: one poll loop fans each poll out to export and baseline.
//! - [`cli`]: the review commands, the HTTP client they use, and `bitsecure check`.
//! - At the bottom, shared by all: [`flow`] (the vocabulary), [`config`], [`state`] (what
//!   carries over a restart), [`human`] (numbers for people), [`fsutil`] (atomic writes,
//!   bounded reads).

pub mod agent;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod export;
pub mod flow;
pub mod fsutil;
pub mod human;
pub mod kernel;
pub mod naming;
pub mod poller;
pub mod state;
