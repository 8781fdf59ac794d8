//! The export stage: the only place that knows metric names and label layout. It turns what the
//! producers report (poller, naming, baseline) into Prometheus metrics and the JSON view of the
//! review commands, and serves both over HTTP. Producers never hold a metric handle.
//!
//! - [`metrics`]: the registry, one sub-struct per producer.
//! - [`traffic`]: the traffic counters of the metric contract and `bitsecure_remote_info`,
//!   written straight into the exposition text.
//! - [`series`]: flow deltas → series of bounded cardinality (top-N remotes + `other`).
//! - [`api`]: the JSON types and routes of `/api/...`; [`history`]: the agent's own bounded
//!   history of its traffic (`/api/history`).
//! - [`server`]: the small HTTP server; [`web`]: its TLS and basic auth.

pub mod api;
pub mod history;
pub mod metrics;
pub mod series;
pub mod server;
pub mod traffic;
pub mod web;
