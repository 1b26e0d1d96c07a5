//! Telling systemd how the daemon is (packaging/defender-bridge.service has `Type=notify` and
//! `WatchdogSec=`). Without `NOTIFY_SOCKET`, i.e. not under systemd, all of this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Feeds systemd's watchdog for as long as it lives.
pub struct Watchdog(Option<tokio::task::JoinHandle<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(feeder) = self.0.take() {
            feeder.abort();
        }
    }
}

/// Sends READY=1 and, when the unit has a watchdog, starts sending WATCHDOG=1 at half its
/// interval: a runtime that stops scheduling tasks stops feeding it, and systemd restarts us.
/// Call it once everything the daemon runs has started.
pub fn ready() -> Watchdog {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!("cannot tell systemd that the daemon is ready: {e}");
    }
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Watchdog(None);
    };
    // tokio's interval refuses a zero period.
    let every = (interval / 2).max(Duration::from_millis(1));
    Watchdog(Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                tracing::warn!("cannot feed systemd's watchdog: {e}");
            }
        }
    })))
}
