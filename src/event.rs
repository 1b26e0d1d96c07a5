//! The collector's own health events: one typed stream that writes the log line and feeds the
//! notification rules (issue 11 §5), so that what an operator reads in the journal and what a
//! rule mails are the same words.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Something about the collector itself that may need a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A tenant's poll failed; `failures` in a row. `reason` is said in plain words.
    PollFailed {
        tenant: String,
        failures: u32,
        retry_in_secs: u64,
        reason: String,
    },
    /// A tenant polled again after `failures` failed polls.
    PollRecovered { tenant: String, failures: u32 },
    /// A tenant's client secret or certificate expires (or has expired) at `expires`.
    CredentialExpiring {
        tenant: String,
        /// "client secret" or "certificate".
        what: String,
        client_id: String,
        expires: DateTime<Utc>,
    },
    /// A destination stopped taking records.
    DestinationDown { destination: String, reason: String },
    /// A destination takes records again after `down_secs` seconds.
    DestinationUp { destination: String, down_secs: u64 },
    /// `count` alerts or records went to the dead letters (`dead-letters list` shows them).
    DeadLettered {
        /// The tenant (alerts that cannot be forwarded) or the destination (records it cannot
        /// take).
        source: String,
        count: u64,
        reason: String,
    },
    /// The durable queue holds `percent` of `queue_max_bytes`.
    QueueFill { percent: u8 },
}

impl Event {
    /// The tenant the event is about, if any (rules filter on it).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Event::PollFailed { tenant, .. }
            | Event::PollRecovered { tenant, .. }
            | Event::CredentialExpiring { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// One line, in the words of the log and of the notification.
    pub fn text(&self) -> String {
        match self {
            Event::PollFailed {
                tenant,
                failures,
                retry_in_secs,
                reason,
            } => format!(
                "tenant {tenant}: poll failed ({failures} in a row), retrying in {}: {reason}",
                humantime::format_duration(Duration::from_secs(*retry_in_secs))
            ),
            Event::PollRecovered { tenant, failures } => {
                format!("tenant {tenant}: polling works again after {failures} failed poll(s)")
            }
            Event::CredentialExpiring {
                tenant,
                what,
                client_id,
                expires,
            } => {
                let left = *expires - Utc::now();
                if left <= chrono::Duration::zero() {
                    format!(
                        "tenant {tenant}: the {what} of app {client_id} expired on {}: sign-in fails until it is replaced",
                        expires.to_rfc3339()
                    )
                } else {
                    format!(
                        "tenant {tenant}: the {what} of app {client_id} expires in {} day(s) ({}): replace it before then",
                        left.num_days(),
                        expires.to_rfc3339()
                    )
                }
            }
            Event::DestinationDown {
                destination,
                reason,
            } => format!("destination {destination} is down: {reason}"),
            Event::DestinationUp {
                destination,
                down_secs,
            } => format!(
                "destination {destination} takes records again, after {} down",
                humantime::format_duration(Duration::from_secs(*down_secs))
            ),
            Event::DeadLettered {
                source,
                count,
                reason,
            } => format!(
                "{source}: {count} went to the dead letters (`defender-bridge dead-letters list` shows them): {reason}"
            ),
            Event::QueueFill { percent } => format!(
                "the durable queue is {percent}% full: when it is full, polling pauses until the slowest destination catches up"
            ),
        }
    }

    /// Writes the event's log line, at the level its meaning calls for.
    fn log(&self) {
        let text = self.text();
        match self {
            Event::PollFailed { tenant, .. } => tracing::error!(tenant = %tenant, "{text}"),
            Event::CredentialExpiring {
                tenant, expires, ..
            } if *expires <= Utc::now() => tracing::error!(tenant = %tenant, "{text}"),
            Event::CredentialExpiring { tenant, .. } => tracing::warn!(tenant = %tenant, "{text}"),
            Event::PollRecovered { tenant, .. } => tracing::info!(tenant = %tenant, "{text}"),
            Event::DestinationDown { destination, .. } => {
                tracing::warn!(destination = %destination, "{text}")
            }
            Event::DestinationUp { destination, .. } => {
                tracing::info!(destination = %destination, "{text}")
            }
            Event::DeadLettered { .. } => tracing::warn!("{text}"),
            Event::QueueFill { .. } => tracing::warn!("{text}"),
        }
    }
}

/// The event stream. Cheap to clone; an event nobody listens to is only logged.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        // Health events are rare; a listener that falls this far behind is told how many it
        // missed (broadcast's Lagged), never blocks an emitter.
        Events {
            tx: broadcast::channel(1024).0,
        }
    }

    /// Logs `event` and hands it to every listener.
    pub fn emit(&self, event: Event) {
        event.log();
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
