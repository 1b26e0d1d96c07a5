//! Notifications (issue 11): `[[notification]]` rules that mail (SMTP) or post (webhook:
//! generic, Teams, Slack) a digest of the alerts an MSSP must act on, and of the collector's
//! own health events.
//!
//! The notifier is one more reader of the durable queue, with its own cursor ([`CURSOR`]), as
//! a destination is: it matches each queued alert version against the rules and commits what
//! matched to the rule's pending digest *in the same transaction* that moves its cursor, so a
//! crash neither loses a matched alert nor matches it twice, and the pending digests survive a
//! restart. Sending happens apart from matching (one task per message), with its own retries
//! and backoff, so a mail server that is down never holds up the queue, the pollers or the
//! SIEM destinations. A digest gathers what a rule matched in its `window`; `max_per_hour`
//! caps its messages, and what waits for the cap is folded into the next message and counted.

pub mod config;
pub mod message;
pub mod rule;
pub mod smtp;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::event::{Event, Events};
use crate::queue::{NotifyChange, Queue, QueueError, Record};
use crate::source::{Cloud, SecretString};
use message::{Digest, Item};
use rule::{Action, AlertFacts, Change, Rule};

/// The notifier's cursor in the queue (destination names cannot start with `@`).
pub const CURSOR: &str = "@notifications";

/// `[smtp]`: the mail server of the rules' e-mail.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: lettre::message::Mailbox,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection, then STARTTLS before anything else (RFC 3207; port 587).
    StartTls,
    /// TLS from the first byte (RFC 8314 §3.3; port 465).
    Implicit,
    /// No TLS (a relay on this machine).
    None,
}

/// `[smtp]` and the rules, validated.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    pub smtp: Option<SmtpSettings>,
    pub rules: Vec<Rule>,
}

impl Notifications {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Changes when anything of the rules changes, secrets included (a reload restarts the
    /// notifier then; its pending digests stay in the store).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", self.rules).hash(&mut h);
        format!("{:?}", self.smtp).hash(&mut h);
        if let Some(p) = self.smtp.as_ref().and_then(|s| s.password.as_ref()) {
            p.expose().hash(&mut h);
        }
        for r in &self.rules {
            for a in &r.actions {
                if let Action::Webhook { url, headers, .. } = a {
                    url.expose().hash(&mut h);
                    for (k, v) in headers {
                        (k, v.expose()).hash(&mut h);
                    }
                }
            }
        }
        h.finish()
    }
}

/// Why a message was not delivered, in the terms of the step that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotifyError {
    #[error("DNS: {0}")]
    Dns(String),
    #[error("connection: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("the mail server refused the message: {0}")]
    Refused(String),
    #[error("HTTP {status} from {host}: {body}")]
    Http {
        host: String,
        status: u16,
        body: String,
    },
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("e-mail needs an [smtp] block")]
    NoSmtp,
}

/// Sends `digest` through `action`.
pub async fn deliver(
    action: &Action,
    smtp: Option<&SmtpSettings>,
    http: &reqwest::Client,
    digest: &Digest,
) -> Result<(), NotifyError> {
    match action {
        Action::Email { to, cc } => {
            let s = smtp.ok_or(NotifyError::NoSmtp)?;
            smtp::send(s, smtp::message(s, to, cc, digest)?).await
        }
        Action::Webhook {
            url,
            shape,
            headers,
        } => webhook::post(http, url, headers, &webhook::body(*shape, digest)).await,
    }
}

/// One entry of a pending digest in the store.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    at: DateTime<Utc>,
    item: Item,
}

/// What the notifier remembers of an alert: its status, to tell a status change.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    status: String,
    /// Unix seconds when last seen (entries unseen for [`SEEN_KEEP`] are forgotten).
    t: i64,
}

/// How long an alert's last status is remembered.
const SEEN_KEEP: chrono::Duration = chrono::Duration::days(30);
/// Records matched per transaction.
const READ_BATCH: usize = 512;
/// First and longest delay between two attempts of a message that failed.
const RETRY: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(600));

fn pending_prefix(rule: &str, action: usize) -> String {
    format!("p/{rule}/{action}/")
}

fn seen_key(tenant_id: &str, alert_id: &str) -> String {
    format!("s/{tenant_id}/{alert_id}")
}

/// One rule's action, with its pending digest.
struct Channel {
    rule: Arc<Rule>,
    action: usize,
    prefix: String,
    next_seq: u64,
    /// What waits to be sent, and the last sequence number in it.
    pending: Digest,
    upto: Option<u64>,
    /// When the first of `pending` came (the window counts from it).
    first_at: Option<DateTime<Utc>>,
    /// A message on its way: its digest and the last sequence number in it.
    in_flight: Option<(Digest, u64)>,
    limit: RateLimit,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The window had passed, but `max_per_hour` held the message back.
    held: bool,
}

impl Channel {
    fn label(&self) -> [(&'static str, String); 2] {
        [
            ("rule", self.rule.name.clone()),
            ("action", self.rule.actions[self.action].kind().to_string()),
        ]
    }

    fn add(&mut self, seq: u64, at: DateTime<Utc>, item: Item) {
        self.pending.add(item);
        self.upto = Some(self.upto.map_or(seq, |u| u.max(seq)));
        self.first_at = Some(self.first_at.map_or(at, |f| f.min(at)));
        self.next_seq = self.next_seq.max(seq + 1);
    }

    fn gauge(&self) {
        let n = self.pending.alert_count + self.pending.health.len() as u64;
        let in_flight = self
            .in_flight
            .as_ref()
            .map_or(0, |(d, _)| d.alert_count + d.health.len() as u64);
        metrics::gauge!("defender_bridge_notifications_pending", &self.label())
            .set((n + in_flight) as f64);
    }
}

/// `max_per_hour`: messages sent within the last hour, at most `max`.
struct RateLimit {
    max: usize,
    sent: VecDeque<tokio::time::Instant>,
}

impl RateLimit {
    fn new(max: u32) -> RateLimit {
        RateLimit {
            max: max as usize,
            sent: VecDeque::new(),
        }
    }

    /// Whether one more message may go at `now`.
    fn allows(&mut self, now: tokio::time::Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(3600))
        {
            self.sent.pop_front();
        }
        self.sent.len() < self.max
    }

    fn record(&mut self, at: tokio::time::Instant) {
        self.sent.push_back(at);
    }
}

/// A message that went or did not.
struct Outcome {
    channel: usize,
    result: Result<(), NotifyError>,
}

/// The notifier of a running daemon.
pub struct Notifier {
    notifications: Notifications,
    queue: Queue,
    http: reqwest::Client,
    events: Events,
    rx: tokio::sync::broadcast::Receiver<Event>,
    /// Tenant name → cloud (the portal of its links).
    clouds: HashMap<String, Cloud>,
}

impl Notifier {
    /// Subscribes to `events` at once, so that nothing emitted after this is missed.
    pub fn new(
        notifications: Notifications,
        queue: Queue,
        http: reqwest::Client,
        events: Events,
        clouds: HashMap<String, Cloud>,
    ) -> Notifier {
        let rx = events.subscribe();
        Notifier {
            notifications,
            queue,
            http,
            events,
            rx,
            clouds,
        }
    }

    /// Loads the pending digests, then matches, gathers and sends until `stop`. A store
    /// error is logged and tried again; it never ends the loop.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut channels = Vec::new();
        for r in &self.notifications.rules {
            let rule = Arc::new(r.clone());
            for action in 0..r.actions.len() {
                channels.push(Channel {
                    rule: rule.clone(),
                    action,
                    prefix: pending_prefix(&r.name, action),
                    next_seq: 0,
                    pending: Digest {
                        rule: r.name.clone(),
                        max_per_hour: r.max_per_hour,
                        ..Digest::default()
                    },
                    upto: None,
                    first_at: None,
                    in_flight: None,
                    limit: RateLimit::new(r.max_per_hour),
                    failures: 0,
                    retry_at: None,
                    held: false,
                });
            }
        }
        loop {
            match self.load(&mut channels).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(
                        "notifications: cannot read the pending digests, trying again in 5s: {e}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
        let wants_alerts = self.notifications.rules.iter().any(|r| r.alerts);
        let mut head = self.queue.subscribe();
        let (done_tx, mut done_rx) = mpsc::channel::<Outcome>(64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Destination → (down since, reason, rules that have said so).
        let mut down: HashMap<String, (tokio::time::Instant, String, Vec<bool>)> = HashMap::new();
        let mut queue_armed = vec![true; self.notifications.rules.len()];
        let mut last_fill_check = tokio::time::Instant::now() - Duration::from_secs(60);
        let mut last_prune = tokio::time::Instant::now();
        let mut cursor = self.queue.cursor(CURSOR).unwrap_or(0);
        let mut events_open = true;
        loop {
            // Match what is queued first; then wait for something to do.
            match self
                .match_records(&mut channels, cursor, wants_alerts)
                .await
            {
                Ok(Some(c)) => {
                    cursor = c;
                    continue;
                }
                Ok(None) => {}
                Err(QueueError::Closed) => return,
                Err(e) => {
                    tracing::error!(
                        "notifications: cannot match queued alerts, trying again in 5s: {e}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = head.changed() => {}
                ev = self.rx.recv(), if events_open => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!("notifications: {n} health event(s) came faster than they could be matched and were missed");
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            events_open = false;
                            continue;
                        }
                    };
                    let mut items: Vec<(usize, Item)> = Vec::new();
                    let now = Utc::now();
                    match &ev {
                        Event::DestinationDown { destination, reason } => {
                            down.entry(destination.clone()).or_insert_with(|| {
                                (tokio::time::Instant::now(), reason.clone(), vec![false; self.notifications.rules.len()])
                            });
                        }
                        Event::DestinationUp { destination, .. } => {
                            if let Some((_, _, said)) = down.remove(destination) {
                                for (i, r) in self.notifications.rules.iter().enumerate() {
                                    if said[i] && r.takes_event(&ev) {
                                        items.push((i, Item::Health { at: now, event: ev.clone() }));
                                    }
                                }
                            }
                        }
                        Event::QueueFill { .. } => {
                            for (i, r) in self.notifications.rules.iter().enumerate() {
                                if queue_armed[i] && r.takes_event(&ev) {
                                    queue_armed[i] = false;
                                    items.push((i, Item::Health { at: now, event: ev.clone() }));
                                }
                            }
                        }
                        _ => {
                            for (i, r) in self.notifications.rules.iter().enumerate() {
                                if r.takes_event(&ev) {
                                    items.push((i, Item::Health { at: now, event: ev.clone() }));
                                }
                            }
                        }
                    }
                    self.keep(&mut channels, items).await;
                }
                Some(outcome) = done_rx.recv() => {
                    self.finish(&mut channels[outcome.channel], outcome.result).await;
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    // A destination down for longer than a rule's down_for.
                    let mut items = Vec::new();
                    for (dest, (since, reason, said)) in down.iter_mut() {
                        for (i, r) in self.notifications.rules.iter().enumerate() {
                            if !said[i] && now - *since >= r.down_for {
                                let ev = Event::DestinationDown {
                                    destination: dest.clone(),
                                    reason: format!("{reason} (down for {})", humantime::format_duration(Duration::from_secs((now - *since).as_secs()))),
                                };
                                if r.takes_event(&ev) {
                                    said[i] = true;
                                    items.push((i, Item::Health { at: Utc::now(), event: ev }));
                                }
                            }
                        }
                    }
                    self.keep(&mut channels, items).await;
                    if now - last_fill_check >= Duration::from_secs(10) {
                        last_fill_check = now;
                        let q = self.queue.stats();
                        let percent = (q.bytes.saturating_mul(100) / q.max_bytes.max(1)).min(100) as u8;
                        let mut crossed = false;
                        for (i, r) in self.notifications.rules.iter().enumerate() {
                            if !r.events.queue_full {
                                continue;
                            }
                            if percent >= r.queue_fill_percent && queue_armed[i] {
                                crossed = true;
                            } else if percent + 10 < r.queue_fill_percent {
                                queue_armed[i] = true;
                            }
                        }
                        if crossed {
                            // Logged, and back here through the stream.
                            self.events.emit(Event::QueueFill { percent });
                        }
                    }
                    if now - last_prune >= Duration::from_secs(3600) {
                        last_prune = now;
                        if let Err(e) = self.prune_seen().await {
                            tracing::warn!("notifications: cannot forget old alerts: {e}");
                        }
                    }
                    for (i, c) in channels.iter_mut().enumerate() {
                        self.maybe_send(i, c, &done_tx);
                    }
                }
            }
        }
    }

    /// Rebuilds the pending digests from the store; drops those of rules that are gone.
    async fn load(&self, channels: &mut [Channel]) -> Result<(), QueueError> {
        let mut orphans = Vec::new();
        let mut count = 0usize;
        for (key, value) in self.queue.notify_scan("p/")? {
            let channel = channels.iter_mut().find(|c| key.starts_with(&c.prefix));
            let seq = key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
            match (channel, seq, serde_json::from_slice::<Stored>(&value)) {
                (Some(c), Some(seq), Ok(s)) => {
                    c.add(seq, s.at, s.item);
                    count += 1;
                }
                (None, _, _) => orphans.push(key),
                (Some(_), _, Err(e)) => {
                    tracing::warn!(
                        "notifications: a pending entry cannot be read and is dropped ({key}): {e}"
                    );
                    orphans.push(key);
                }
                (Some(_), None, _) => orphans.push(key),
            }
        }
        if count > 0 {
            tracing::info!(
                "notifications: {count} pending alert(s) and event(s) from before the restart"
            );
        }
        if !orphans.is_empty() {
            tracing::info!(
                "notifications: {} pending entries of rules or actions no longer configured are dropped",
                orphans.len()
            );
            let delete = orphans
                .into_iter()
                .map(|k| {
                    let end = format!("{k}\0");
                    (k, end)
                })
                .collect();
            self.queue
                .notify_commit(NotifyChange {
                    cursor: None,
                    put: Vec::new(),
                    delete,
                })
                .await?;
        }
        for c in channels.iter() {
            c.gauge();
        }
        Ok(())
    }

    /// Matches the next records after `cursor`; returns the new cursor, or `None` when there
    /// was nothing to read.
    async fn match_records(
        &self,
        channels: &mut [Channel],
        cursor: u64,
        wants_alerts: bool,
    ) -> Result<Option<u64>, QueueError> {
        if !wants_alerts {
            // Rules of health events only: nothing to match, the cursor follows the head.
            let head = self.queue.stats().head;
            if head <= cursor {
                return Ok(None);
            }
            self.queue
                .notify_commit(NotifyChange {
                    cursor: Some((CURSOR.to_string(), head)),
                    ..NotifyChange::default()
                })
                .await?;
            return Ok(Some(head));
        }
        let records = self.queue.read(cursor, READ_BATCH)?;
        let Some(last) = records.last().map(|(s, _)| *s) else {
            return Ok(None);
        };
        let mut change = NotifyChange {
            cursor: Some((CURSOR.to_string(), last)),
            ..NotifyChange::default()
        };
        let mut items: Vec<(usize, Item)> = Vec::new();
        let now = Utc::now();
        let decoded: Vec<Record> = records
            .iter()
            .filter_map(|(_, bytes)| Record::decode(bytes).ok())
            // A dead letter replayed for one destination notified when it first came.
            .filter(|r| r.only.is_none())
            .collect();
        let keys: Vec<String> = decoded
            .iter()
            .map(|r| seen_key(&r.tenant_id, &r.alert_id))
            .collect();
        let stored = self.queue.notify_get(&keys)?;
        // Statuses seen in this batch, before the store has them.
        let mut batch: HashMap<&str, String> = HashMap::new();
        for ((record, key), stored) in decoded.iter().zip(&keys).zip(stored) {
            let Ok(alert) = Alert::from_json(record.alert.get()) else {
                continue;
            };
            let status = alert.status.as_deref().unwrap_or("").to_string();
            let before = match batch.get(key.as_str()) {
                Some(s) => Some(s.clone()),
                None => stored
                    .and_then(|v| serde_json::from_slice::<Seen>(&v).ok())
                    .map(|s| s.status),
            };
            let change_kind = match &before {
                None => Change::New,
                Some(b) if !b.eq_ignore_ascii_case(&status) => Change::Status,
                Some(_) => Change::Update,
            };
            batch.insert(key, status.clone());
            change.put.push((
                key.clone(),
                serde_json::to_vec(&Seen {
                    status,
                    t: now.timestamp(),
                })
                .unwrap_or_default(),
            ));
            let cloud = self
                .clouds
                .get(&record.tenant_name)
                .copied()
                .unwrap_or(Cloud::Commercial);
            let mut facts = AlertFacts::of(&alert, &record.tenant_name, &record.tenant_id, cloud);
            facts.change = change_kind;
            if change_kind == Change::Status {
                facts.previous_status = before;
            }
            for (i, r) in self.notifications.rules.iter().enumerate() {
                if r.takes_alert(&facts, now) {
                    metrics::counter!("defender_bridge_notification_alerts_total", "rule" => r.name.clone()).increment(1);
                    let f = if r.include_device_user {
                        facts.clone()
                    } else {
                        facts.clone().without_device_user()
                    };
                    items.push((i, Item::Alert(Box::new(f))));
                }
            }
        }
        let placed = self.place(channels, items, &mut change);
        self.queue.notify_commit(change).await?;
        apply(channels, placed);
        Ok(Some(last))
    }

    /// Commits health items to their rules' pending digests.
    async fn keep(&self, channels: &mut [Channel], items: Vec<(usize, Item)>) {
        if items.is_empty() {
            return;
        }
        let mut change = NotifyChange::default();
        let placed = self.place(channels, items, &mut change);
        match self.queue.notify_commit(change).await {
            Ok(()) => {}
            Err(QueueError::Closed) => return,
            Err(e) => {
                // Not kept: a health event is said again by what causes it (the next failed
                // poll, the next check), and the log has it.
                tracing::error!("notifications: cannot keep a health event for its digest: {e}");
                return;
            }
        }
        apply(channels, placed);
    }

    /// Gives each item a place (sequence number) in its rule's channels and adds the puts.
    fn place(
        &self,
        channels: &mut [Channel],
        items: Vec<(usize, Item)>,
        change: &mut NotifyChange,
    ) -> Vec<(usize, u64, DateTime<Utc>, Item)> {
        let now = Utc::now();
        let mut placed = Vec::new();
        for (rule, item) in items {
            for (ci, c) in channels.iter_mut().enumerate() {
                if c.rule.name != self.notifications.rules[rule].name {
                    continue;
                }
                let seq = c.next_seq;
                c.next_seq += 1;
                let stored = Stored {
                    at: now,
                    item: item.clone(),
                };
                change.put.push((
                    format!("{}{seq:020}", c.prefix),
                    serde_json::to_vec(&stored).unwrap_or_default(),
                ));
                placed.push((ci, seq, now, item.clone()));
            }
        }
        placed
    }

    /// Starts the channel's message when its window has passed, the rate limit allows it,
    /// and no message or retry is waiting.
    fn maybe_send(&self, index: usize, c: &mut Channel, done: &mpsc::Sender<Outcome>) {
        let (Some(first), Some(upto)) = (c.first_at, c.upto) else {
            return;
        };
        if c.in_flight.is_some() || c.retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            return;
        }
        let window = chrono::Duration::from_std(c.rule.window).unwrap_or(chrono::Duration::MAX);
        if Utc::now() - first < window {
            return;
        }
        if !c.limit.allows(tokio::time::Instant::now()) {
            if !c.held {
                c.held = true;
                tracing::info!(rule = %c.rule.name, "notifications: max_per_hour ({}) reached; what the rule matches waits for the next message", c.rule.max_per_hour);
            }
            return;
        }
        let mut digest = std::mem::replace(
            &mut c.pending,
            Digest {
                rule: c.rule.name.clone(),
                max_per_hour: c.rule.max_per_hour,
                ..Digest::default()
            },
        );
        if c.held {
            digest.folded = digest.alert_count;
            c.held = false;
        }
        c.upto = None;
        c.first_at = None;
        c.in_flight = Some((digest.clone(), upto));
        let action = c.rule.actions[c.action].clone();
        let smtp = self.notifications.smtp.clone();
        let http = self.http.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let result = deliver(&action, smtp.as_ref(), &http, &digest).await;
            let _ = done
                .send(Outcome {
                    channel: index,
                    result,
                })
                .await;
        });
    }

    /// After a message: forgets what it carried, or puts it back for a later attempt.
    async fn finish(&self, c: &mut Channel, result: Result<(), NotifyError>) {
        let Some((digest, upto)) = c.in_flight.take() else {
            return;
        };
        let labels = c.label();
        match result {
            Ok(()) => {
                metrics::counter!("defender_bridge_notifications_sent_total", &labels).increment(1);
                c.limit.record(tokio::time::Instant::now());
                c.failures = 0;
                c.retry_at = None;
                tracing::info!(rule = %c.rule.name, action = c.rule.actions[c.action].kind(),
                    "notification sent to {}: {} alert(s), {} event(s)",
                    c.rule.actions[c.action].target(), digest.alert_count, digest.health.len());
                let change = NotifyChange {
                    cursor: None,
                    put: Vec::new(),
                    delete: vec![(c.prefix.clone(), format!("{}{:020}", c.prefix, upto + 1))],
                };
                if let Err(e) = self.queue.notify_commit(change).await {
                    // Sent again after a restart: a duplicate message, not a lost one.
                    tracing::warn!(rule = %c.rule.name, "notifications: cannot forget a sent digest: {e}");
                }
            }
            Err(e) => {
                metrics::counter!("defender_bridge_notification_failures_total", &labels)
                    .increment(1);
                c.failures = c.failures.saturating_add(1);
                let delay = crate::backoff::backoff(RETRY.0, RETRY.1, c.failures);
                c.retry_at = Some(tokio::time::Instant::now() + delay);
                tracing::warn!(rule = %c.rule.name, action = c.rule.actions[c.action].kind(),
                    "notification to {} failed ({} in a row), trying again in {delay:.0?}: {e}",
                    c.rule.actions[c.action].target(), c.failures);
                // What came meanwhile goes after what waited.
                let later = std::mem::replace(&mut c.pending, digest);
                c.pending.merge(later);
                c.upto = Some(c.upto.map_or(upto, |u| u.max(upto)));
                c.first_at = Some(c.first_at.unwrap_or_else(Utc::now));
            }
        }
        c.gauge();
    }

    /// Forgets the statuses of alerts not seen for [`SEEN_KEEP`].
    async fn prune_seen(&self) -> Result<(), QueueError> {
        let limit = (Utc::now() - SEEN_KEEP).timestamp();
        let mut delete = Vec::new();
        for (k, v) in self.queue.notify_scan("s/")? {
            let old = serde_json::from_slice::<Seen>(&v).map_or(true, |s| s.t < limit);
            if old {
                let end = format!("{k}\0");
                delete.push((k, end));
            }
        }
        if delete.is_empty() {
            return Ok(());
        }
        self.queue
            .notify_commit(NotifyChange {
                cursor: None,
                put: Vec::new(),
                delete,
            })
            .await
    }
}

/// Adds committed items to the channels' in-memory digests.
fn apply(channels: &mut [Channel], placed: Vec<(usize, u64, DateTime<Utc>, Item)>) {
    let mut touched = BTreeMap::new();
    for (ci, seq, at, item) in placed {
        channels[ci].add(seq, at, item);
        touched.insert(ci, ());
    }
    for ci in touched.keys() {
        channels[*ci].gauge();
    }
}

/// What `notify-test` reports of one action.
pub struct TestResult {
    pub action: &'static str,
    pub target: String,
    pub result: Result<(), NotifyError>,
}

/// Sends a clearly marked test message through every action of `rule` (`notify-test`).
pub async fn test(
    notifications: &Notifications,
    rule: &str,
    http: &reqwest::Client,
) -> anyhow::Result<Vec<TestResult>> {
    let Some(r) = notifications.rules.iter().find(|r| r.name == rule) else {
        let names: Vec<&str> = notifications
            .rules
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        anyhow::bail!(
            "no notification rule is named {rule:?}{}",
            if names.is_empty() {
                " (the configuration has no [[notification]] rules)".to_string()
            } else {
                format!(" (the rules are: {})", names.join(", "))
            }
        );
    };
    let mut digest = Digest {
        rule: r.name.clone(),
        max_per_hour: r.max_per_hour,
        test: true,
        ..Digest::default()
    };
    let now = Utc::now();
    let sample = AlertFacts {
        tenant: "example-tenant".into(),
        tenant_id: "00000000-0000-0000-0000-000000000000".into(),
        id: "da-test-0000".into(),
        change: Change::New,
        previous_status: None,
        title: Some("TEST: defender-bridge notification test (not a real alert)".into()),
        severity: "informational".into(),
        status: Some("new".into()),
        category: Some("Test".into()),
        service_source: Some("defender-bridge".into()),
        detection_source: Some("notify-test".into()),
        device_groups: vec![],
        devices: if r.include_device_user {
            vec!["test-device.example".into()]
        } else {
            vec![]
        },
        users: vec![],
        mitre_techniques: vec![],
        created: Some(now),
        first_activity: Some(now),
        last_activity: Some(now),
        last_update: Some(now),
        alert_url: Cloud::Commercial
            .alert_link("da-test-0000", "00000000-0000-0000-0000-000000000000"),
        incident_url: None,
    };
    digest.add(Item::Alert(Box::new(sample)));
    let mut out = Vec::new();
    for a in &r.actions {
        out.push(TestResult {
            action: a.kind(),
            target: a.target(),
            result: deliver(a, notifications.smtp.as_ref(), http, &digest).await,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `max_per_hour` counts the messages of the last hour, sliding.
    #[test]
    fn the_rate_limit_slides_over_the_last_hour() {
        let t0 = tokio::time::Instant::now();
        let mut l = RateLimit::new(2);
        assert!(l.allows(t0));
        l.record(t0);
        l.record(t0 + Duration::from_secs(600));
        assert!(!l.allows(t0 + Duration::from_secs(601)));
        assert!(!l.allows(t0 + Duration::from_secs(3599)));
        assert!(l.allows(t0 + Duration::from_secs(3600)));
        l.record(t0 + Duration::from_secs(3600));
        assert!(!l.allows(t0 + Duration::from_secs(4199)));
        assert!(l.allows(t0 + Duration::from_secs(4200)));
    }

    /// A digest held back by the limit says how many alerts it folded in.
    #[test]
    fn a_held_digest_counts_what_it_folded() {
        let mut d = Digest {
            rule: "r".into(),
            max_per_hour: 1,
            ..Digest::default()
        };
        d.folded = 7;
        d.alert_count = 7;
        assert!(d
            .text()
            .contains("7 of these alerts waited for this message: the rule sends at most 1 message(s) an hour (max_per_hour)."));
        assert_eq!(d.generic()["folded"], 7);
    }
}
