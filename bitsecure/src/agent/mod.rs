//! The composition root: wires kernel, poller, export and baseline together and runs them.
//!
//! One poll loop (`poll_loop`) drives both commands that watch traffic: each poll's report
//! goes to the exporter, and its flow deltas to a `Consumer` — the baseline
//! service for `bitsecure run`, a recorder for `bitsecure baseline record`. Nothing here parses
//! packets, names metrics or matches rules; it only hands what one stage returns to the next.
//!
//! - `setup`: loading and attaching, pinned state, resuming a previous agent's counters.
//! - `poll_loop`: the loop, and saving the state after every poll.
//! - `run`: `bitsecure run` and `bitsecure uninstall`.
//! - `record`: `bitsecure baseline record`.

mod poll_loop;
mod record;
mod run;
mod setup;
mod systemd;

use std::time::SystemTime;

use anyhow::Context as _;

pub use record::{RecordLength, record};
pub use run::{run, uninstall};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}
