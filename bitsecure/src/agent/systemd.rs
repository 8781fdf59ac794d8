//! systemd's service protocol for `Type=notify` (through the well-kept `sd-notify` crate, which
//! speaks it without linking libsystemd): `READY=1` once the first poll is in (so
//! `systemctl start` returns when the agent counts, and units ordered after it see a working
//! agent), `WATCHDOG=1` while the poll loop turns (a loop stuck in a map read or a deadlock
//! stops feeding it, and systemd restarts the agent after `WatchdogSec`), `STOPPING=1` at the
//! end. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::{Duration, Instant};

use log::{debug, warn};
use sd_notify::NotifyState;

/// Feeds systemd from the poll loop.
pub struct Notifier {
    ready: bool,
    /// How often to feed the watchdog (`None`: no watchdog asked for).
    watchdog_every: Option<Duration>,
    last_fed: Option<Instant>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let mut usec = 0;
        // libsystemd's rule, which the crate does not follow: WATCHDOG_PID, when set, must
        // name this process; unset, the watchdog is this process's.
        let enabled = sd_notify::watchdog_enabled(false, &mut usec)
            || (std::env::var_os("WATCHDOG_PID").is_none()
                && std::env::var("WATCHDOG_USEC")
                    .ok()
                    .and_then(|value| value.parse().ok())
                    .map(|value| usec = value)
                    .is_some());
        let watchdog_every = (enabled && usec > 0).then(|| {
            // A few times per watchdog period, and at least every second: a late feed is a
            // restart, an extra one costs a datagram.
            (Duration::from_micros(usec) / 4).min(Duration::from_secs(1))
        });
        if let Some(every) = watchdog_every {
            debug!("systemd watchdog: fed every {every:?}");
        }
        Self {
            ready: false,
            watchdog_every,
            last_fed: None,
        }
    }

    /// The first poll is in: the agent counts and serves its metrics.
    pub fn polled(&mut self) {
        if !self.ready {
            self.ready = true;
            send(&[NotifyState::Ready, NotifyState::Status("counting")]);
        }
    }

    /// The poll loop turned once (a poll, or a wait for the next one).
    pub fn alive(&mut self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if self.last_fed.is_none_or(|fed| fed.elapsed() >= every) {
            self.last_fed = Some(Instant::now());
            send(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        warn!("cannot notify systemd: {error}");
    }
}
