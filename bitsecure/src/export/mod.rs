//! The export stage: the only place that knows metric names and label layout. It turns what the
//! producers report (poller, naming, baseline) into Prometheus metrics and serves them, with
//! the JSON API of the review commands, over HTTP.
//!
//! - [`metrics`]: the registry, one sub-struct per producer, and the exposition text.
//! - [`series`]: flow deltas → series of bounded cardinality.
//! - [`server`]: the small HTTP server.

pub mod metrics;
pub mod series;
pub mod server;
