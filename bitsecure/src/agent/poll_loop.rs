//! The one poll loop: every `interval` the poller reads the kernel maps; its report goes to the
//! exporter and its flow deltas to a [`Consumer`]. Between polls, the kernel's payload events
//! are read as they come, so its ring buffer does not fill up.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use log::{debug, warn};

use super::{setup::StateSaver, systemd::Notifier};
use crate::{export::metrics::Metrics, flow::Polled, poller::Poller};

/// Longest a control (reload, stop) waits for the poll loop.
pub const CONTROL_LATENCY: Duration = Duration::from_millis(100);

/// Messages to the poll loop; closing the channel stops it.
pub enum Control {
    Reload,
}

/// Where each poll's flow deltas go besides the exporter.
pub trait Consumer {
    fn on_poll(&mut self, polled: &Polled, metrics: &Metrics);
    /// A poll that failed (it is logged and counted already).
    fn on_failed_poll(&mut self) {}
    /// SIGHUP.
    fn on_reload(&mut self, _metrics: &Metrics) {}
    /// The consumer has had enough polls: the loop ends.
    fn done(&self) -> bool {
        false
    }
}

/// How the loop ends when the control channel closes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LastPoll {
    /// One more poll, so the last traffic still goes into the counters (and the saved state).
    Take,
    /// Stop at once (an interrupted recording keeps what it has).
    Skip,
}

/// Polls every `interval` until the control channel closes or `consumer` is done.
pub fn poll_loop(
    poller: &mut Poller,
    consumer: &mut impl Consumer,
    metrics: &Metrics,
    interval: Duration,
    controls: &mpsc::Receiver<Control>,
    saver: Option<&StateSaver>,
    last_poll: LastPoll,
) {
    let mut next_poll = Instant::now();
    let mut systemd = Notifier::from_env();
    while !consumer.done() {
        systemd.alive();
        match controls.try_recv() {
            Ok(Control::Reload) => {
                consumer.on_reload(metrics);
                continue;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                systemd.stopping();
                if last_poll == LastPoll::Take {
                    poll_once(poller, metrics);
                    save(saver, poller, metrics);
                }
                return;
            }
        }
        let wait = next_poll.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            // Wake up now and then for the controls.
            poller.wait_for_events(wait.min(CONTROL_LATENCY));
            metrics.naming.record_events(&poller.read_events());
            continue;
        }
        // A slow poll must not make the next ones pile up.
        next_poll = (next_poll + interval).max(Instant::now());
        match poll_once(poller, metrics) {
            Some(polled) => {
                systemd.polled();
                consumer.on_poll(&polled, metrics);
            }
            None => consumer.on_failed_poll(),
        }
        save(saver, poller, metrics);
    }
}

/// One poll, handed to the exporter; its deltas and packet sockets for the consumer.
fn poll_once(poller: &mut Poller, metrics: &Metrics) -> Option<Polled> {
    match poller.poll() {
        Ok(report) => {
            debug!(
                "poll: {} flows, {} sockets, {} closed sockets folded, {} flows awaiting an owner",
                report.flows, report.sockets, report.folded_sockets, report.deferred_flows
            );
            metrics.record_poll(&report, super::unix_now() as u64);
            let remotes = metrics.traffic.remotes_with_own_series();
            metrics.traffic.set_remote_names(&poller.names_of(&remotes));
            Some(Polled {
                deltas: report.deltas,
                packet_sockets: report.packet_sockets,
                asked: report.asked,
            })
        }
        Err(error) => {
            metrics.poller.poll_errors.inc();
            warn!("poll failed: {error:#}");
            None
        }
    }
}

fn save(saver: Option<&StateSaver>, poller: &Poller, metrics: &Metrics) {
    if let Some(Err(error)) = saver.map(|saver| saver.save(poller, metrics)) {
        metrics.poller.poll_errors.inc();
        warn!("cannot save the agent state: {error}");
    }
}
