//! The Splunk HTTP Event Collector writer (`hec+https://splunk:8088`), one task per destination
//! (notes in delivery.md §2).
//!
//! Messages are HEC event objects (`{"time":…,"event":…}`, made by the output); the writer
//! batches them into gzip-compressed `POST /services/collector/event` requests with
//! `Authorization: Splunk <token>`.
//!
//! Without indexer acknowledgement a `200` means delivered: Splunk has the events in memory on
//! the receiving instance, not necessarily indexed (README "Delivery"). With it
//! (`indexer_ack = true`, the token's "Enable indexer acknowledgement"), every request carries
//! the destination's channel (`X-Splunk-Request-Channel`, a GUID the daemon keeps in its state
//! store, so that it survives restarts); the answer's `ackId` is polled on
//! `/services/collector/ack` and a batch counts as delivered only once its ack is `true`. A
//! batch whose ack has not come within `ack_timeout` (default 5 minutes, Splunk's own advice) is
//! sent again: never dropped, never taken as delivered on the strength of the first 200 (the
//! failure mode of Vector's sink, delivery.md §2). Duplicates come only from batches whose ack
//! was never seen, and are counted ([`super::Stats::resent`]).
//!
//! Answers: 429 and 503 (HEC's "server is busy", code 9) and other 5xx back off and send again;
//! 400 naming an event (`invalid-event-number`) refuses that event (it goes to the dead letters
//! with Splunk's text) and sends the rest again; 401 and 403 mark the destination down with the
//! reason and wait the longest backoff before trying again (a token fixed by a reload works).
//! Events leave in order: one counts as delivered once it and every event before it are.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use super::{Backoff, Error, Shared, SinkConfig};
use crate::http_body::{first_line, read_head};
use crate::source::SecretString;

/// Largest event by default (HEC's request limit on older versions is 1 MB, `limits.conf`
/// `max_content_length`; a batch holds at least one event).
pub const MAX_EVENT: usize = 512 * 1024;
/// Splunk: "wait about five minutes" before taking an unacknowledged event as lost.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Events per request and bytes per request (before gzip).
const BATCH_EVENTS: usize = 500;
const BATCH_BYTES: usize = 800 * 1024;
/// Events held by the writer at once (sent and awaiting their ack, or waiting to go).
const WINDOW: usize = 20_000;
/// How often pending acks are asked for.
const ACK_POLL: Duration = Duration::from_millis(500);
/// A request that has not been answered by then has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of an answer to a batch or a health check that is read: HEC's are a small JSON
/// object; the rest of a larger one is not read (see `crate::http_body`).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of an answer to an ack query that is read: one `"id":true` per awaited batch, and
/// at most `WINDOW` of them.
const MAX_ACKS_ANSWER_BYTES: usize = 1024 * 1024;

/// HEC settings of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HecOptions {
    pub token: Option<SecretString>,
    pub indexer_ack: bool,
    pub ack_timeout: Duration,
    /// The channel GUID; `None`: a new one for this run (without a state store, as `send`).
    pub channel: Option<String>,
    /// The events' `source`, `sourcetype` and `index` (the output writes them).
    pub source: String,
    pub sourcetype: String,
    pub index: Option<String>,
}

impl Default for HecOptions {
    fn default() -> Self {
        HecOptions {
            token: None,
            indexer_ack: false,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            channel: None,
            source: crate::format::hec::DEFAULT_SOURCE.to_string(),
            sourcetype: crate::format::hec::DEFAULT_SOURCETYPE.to_string(),
            index: None,
        }
    }
}

/// Where and how the writer posts.
pub(crate) struct Endpoint {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    channel: String,
    indexer_ack: bool,
    ack_timeout: Duration,
    destination: String,
    host: String,
    port: u16,
}

impl Endpoint {
    pub(crate) fn new(cfg: &SinkConfig) -> Result<Endpoint, Error> {
        let d = &cfg.destination;
        let err = |reason: String| Error::Hec {
            destination: d.to_string(),
            reason,
        };
        let scheme = if d.transport == super::Transport::Hec {
            "https"
        } else {
            "http"
        };
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(cfg.connect_timeout)
            .timeout(REQUEST_TIMEOUT);
        if let Some(path) = &cfg.tls.ca_file {
            let pem = std::fs::read(path).map_err(|e| Error::TlsFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::TlsFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            b = b.tls_certs_merge(certs);
        }
        if cfg.tls.insecure_skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        Ok(Endpoint {
            http,
            base: format!("{scheme}://{}:{}", d.host, d.port),
            token: cfg
                .hec
                .token
                .clone()
                .ok_or_else(|| err("no hec_token".into()))?,
            channel: cfg
                .hec
                .channel
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            indexer_ack: cfg.hec.indexer_ack,
            ack_timeout: cfg.hec.ack_timeout,
            destination: d.to_string(),
            host: d.host.to_string(),
            port: d.port,
        })
    }

    fn request(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Splunk {}", self.token.expose()),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.indexer_ack {
            r = r.header("X-Splunk-Request-Channel", &self.channel);
        }
        r
    }

    /// The address to report as up (the first the host resolves to).
    async fn peer(&self) -> SocketAddr {
        tokio::net::lookup_host((self.host.trim_matches(['[', ']']), self.port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }

    /// `GET /services/collector/health` (`check --online`): 200 "HEC is healthy".
    pub(crate) async fn probe(&self) -> Result<SocketAddr, Error> {
        let url = format!(
            "{}/services/collector/health{}",
            self.base,
            if self.indexer_ack { "?ack=true" } else { "" }
        );
        let mut r = self.http.get(url);
        if self.indexer_ack {
            r = r.header(
                reqwest::header::AUTHORIZATION,
                format!("Splunk {}", self.token.expose()),
            );
        }
        let resp = r.send().await.map_err(|e| Error::Hec {
            destination: self.destination.clone(),
            reason: error_text(&e),
        })?;
        let status = resp.status();
        let body = read_head(resp, MAX_ANSWER_BYTES).await;
        let body = String::from_utf8_lossy(&body);
        if status.is_success() {
            Ok(self.peer().await)
        } else {
            Err(Error::Hec {
                destination: self.destination.clone(),
                reason: format!("health check answered {status}: {}", first_line(&body)),
            })
        }
    }
}

/// reqwest's text without the URL, with its causes.
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not sent, or to be sent again.
    Waiting,
    /// Sent; its request's ackId is awaited since then.
    Acking {
        ack: u64,
        since: Instant,
    },
    Delivered,
    Refused(String),
}

struct Event {
    body: Bytes,
    state: State,
}

/// What one request came to.
enum Answer {
    /// 200; with indexer acknowledgement, the request's ackId.
    Ok(Option<u64>),
    /// 400 naming the event at this index of the batch, with Splunk's text.
    BadEvent(usize, String),
    /// 400 without an event number: the whole batch is refused.
    BadBatch(String),
    /// 401, 403: the token.
    Token(String),
    /// Try again after a backoff (429, 503, 5xx, no answer).
    Again(String),
}

pub(crate) async fn run(
    ep: Endpoint,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut events: VecDeque<Event> = VecDeque::new();
    let mut input_open = true;
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut last_poll = Instant::now();
    let mut ever_up = false;
    loop {
        while input_open && events.len() < WINDOW {
            match rx.try_recv() {
                Ok(body) => events.push_back(Event {
                    body,
                    state: State::Waiting,
                }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        // Events leave in order: delivered or refused, and every one before them too.
        while let Some(front) = events.front() {
            match &front.state {
                State::Delivered => shared.sent(1, front.body.len()),
                State::Refused(reason) => shared.refused(reason.clone()),
                _ => break,
            }
            events.pop_front();
        }
        if events.is_empty() && !input_open {
            return;
        }
        if let Some(&deadline) = shared.close_by.get() {
            if Instant::now() >= deadline {
                return;
            }
        }
        let now = Instant::now();
        // Acks not seen within the timeout: the batch goes again.
        for e in events.iter_mut() {
            if let State::Acking { since, .. } = e.state {
                if now.saturating_duration_since(since) >= ep.ack_timeout {
                    e.state = State::Waiting;
                    shared.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let waiting = events.iter().any(|e| e.state == State::Waiting);
        let acking = events
            .iter()
            .any(|e| matches!(e.state, State::Acking { .. }));
        // Acks first when due: a steady stream of new events must not starve them.
        if acking && now.saturating_duration_since(last_poll) >= ACK_POLL {
            last_poll = now;
            poll_acks(&ep, &mut events).await;
            continue;
        }
        if waiting && retry_at.is_none_or(|t| now >= t) {
            // The first run of waiting events, in order, up to the batch limits.
            let mut idx = Vec::new();
            let mut bytes = 0usize;
            for (i, e) in events.iter().enumerate() {
                if e.state != State::Waiting {
                    continue;
                }
                if !idx.is_empty()
                    && (idx.len() >= BATCH_EVENTS || bytes + e.body.len() > BATCH_BYTES)
                {
                    break;
                }
                bytes += e.body.len();
                idx.push(i);
            }
            let answer = post(&ep, idx.iter().map(|&i| &events[i].body)).await;
            match answer {
                Answer::Ok(ack) => {
                    failures = 0;
                    retry_at = None;
                    if !ever_up || !matches!(*shared.status.borrow(), super::Status::Up { .. }) {
                        if ever_up {
                            shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_up = true;
                        shared.up(ep.peer().await);
                    }
                    // Ack ids only grow on a channel; one at or below an awaited id means the
                    // collector started the channel again (a restart that forgot it): the awaited
                    // ids are void and their batches go again.
                    if let Some(new_id) = ack.filter(|_| ep.indexer_ack) {
                        for e in events.iter_mut() {
                            if matches!(e.state, State::Acking { ack, .. } if ack >= new_id) {
                                e.state = State::Waiting;
                                shared.resent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let state = match (ep.indexer_ack, ack) {
                        (true, Some(ack)) => State::Acking {
                            ack,
                            since: Instant::now(),
                        },
                        // Acks asked for and none came: Splunk's token has them off, and 200
                        // is all there is.
                        (true, None) => {
                            tracing::warn!(destination = %ep.destination,
                                "HEC answered without an ackId: the token does not have indexer acknowledgement on; 200 counts as delivered");
                            State::Delivered
                        }
                        (false, _) => State::Delivered,
                    };
                    for &i in &idx {
                        events[i].state = state.clone();
                    }
                }
                Answer::BadEvent(k, text) => {
                    let reason = format!("HEC refused the event: {text}");
                    tracing::error!(destination = %ep.destination, "{reason}; it goes to the dead letters, the rest of its batch is sent again");
                    if let Some(&i) = idx.get(k) {
                        events[i].state = State::Refused(reason);
                    } else if let Some(&i) = idx.first() {
                        events[i].state = State::Refused(reason);
                    }
                }
                Answer::BadBatch(text) => {
                    let reason = format!("HEC refused the request: {text}");
                    tracing::error!(destination = %ep.destination, "{reason}; its {} event(s) go to the dead letters", idx.len());
                    if idx.len() == 1 {
                        events[idx[0]].state = State::Refused(reason);
                    } else {
                        // Which one is bad? Each goes again alone: only that one is refused.
                        retry_at = None;
                        for &i in &idx {
                            events[i].state = State::Waiting;
                        }
                        single(&ep, &mut events, &idx, &shared).await;
                    }
                }
                Answer::Token(text) => {
                    failures = failures.saturating_add(1);
                    shared.down(format!("HEC refused the token: {text}; check hec_token"));
                    retry_at = Some(Instant::now() + backoff.max);
                }
                Answer::Again(text) => {
                    failures = failures.saturating_add(1);
                    shared.down(text);
                    retry_at = Some(Instant::now() + backoff.delay(failures));
                }
            }
            continue;
        }
        // Wait for a message, the next poll or the retry.
        let mut wake = now + Duration::from_secs(1);
        if acking {
            wake = wake.min(last_poll + ACK_POLL);
        }
        if let Some(t) = retry_at.filter(|_| waiting) {
            wake = wake.min(t);
        }
        if let Some(&deadline) = shared.close_by.get() {
            wake = wake.min(deadline);
        }
        let room = input_open && events.len() < WINDOW;
        tokio::select! {
            msg = rx.recv(), if room => match msg {
                Some(body) => events.push_back(Event { body, state: State::Waiting }),
                None => input_open = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Sends the events `idx` one request each, after a 400 for their batch that named none.
async fn single(ep: &Endpoint, events: &mut VecDeque<Event>, idx: &[usize], shared: &Shared) {
    for &i in idx {
        match post(ep, std::iter::once(&events[i].body)).await {
            Answer::Ok(Some(ack)) if ep.indexer_ack => {
                events[i].state = State::Acking {
                    ack,
                    since: Instant::now(),
                }
            }
            Answer::Ok(_) => events[i].state = State::Delivered,
            Answer::BadEvent(_, text) | Answer::BadBatch(text) => {
                events[i].state = State::Refused(format!("HEC refused the event: {text}"))
            }
            // Left waiting: the main loop backs off and tries again.
            Answer::Token(text) | Answer::Again(text) => {
                shared.down(text);
                return;
            }
        }
    }
}

/// One `POST /services/collector/event` of `bodies`, gzip-compressed.
async fn post<'a>(ep: &Endpoint, bodies: impl Iterator<Item = &'a Bytes>) -> Answer {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for b in bodies {
        // Concatenated event objects are HEC's batch form (docs.splunk.com "Format events
        // for HTTP Event Collector"); a newline between keeps them readable.
        let _ = gz.write_all(b);
        let _ = gz.write_all(b"\n");
    }
    let body = match gz.finish() {
        Ok(b) => b,
        Err(e) => return Answer::Again(format!("cannot compress the batch: {e}")),
    };
    let resp = ep
        .request("/services/collector/event")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return Answer::Again(format!("HEC request failed: {}", error_text(&e))),
    };
    let status = resp.status().as_u16();
    let text = read_head(resp, MAX_ANSWER_BYTES).await;
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    let said = json["text"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| first_line(&String::from_utf8_lossy(&text)));
    match status {
        // Accepted but not yet indexed: without its ackId (an answer cut off, a token without
        // indexer acknowledgement) the batch's fate is unknown, so it goes again rather than
        // counting as delivered (docs.splunk.com "About HTTP Event Collector Indexer
        // Acknowledgment").
        200..=299 if ep.indexer_ack && json["ackId"].as_u64().is_none() => Answer::Again(format!(
            "HEC answered HTTP {status} without an ackId ({said}): is indexer acknowledgement on for this token?"
        )),
        200..=299 => Answer::Ok(json["ackId"].as_u64()),
        400 => match json["invalid-event-number"].as_u64() {
            Some(k) => Answer::BadEvent(k as usize, format!("{said} (code {})", json["code"])),
            None => Answer::BadBatch(format!("{said} (code {})", json["code"])),
        },
        401 | 403 => Answer::Token(format!("HTTP {status}: {said}")),
        _ => Answer::Again(format!("HEC answered HTTP {status}: {said}")),
    }
}

/// Asks for every awaited ack; those that are `true` are delivered. An answer that cannot be
/// read changes nothing: the acks are asked for again, and time out into a resend.
async fn poll_acks(ep: &Endpoint, events: &mut VecDeque<Event>) {
    let mut ids: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.state {
            State::Acking { ack, .. } => Some(ack),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let body = serde_json::json!({ "acks": ids }).to_string();
    let resp = match ep
        .request("/services/collector/ack")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(destination = %ep.destination, "HEC ack query failed: {}", error_text(&e));
            return;
        }
    };
    if !resp.status().is_success() {
        tracing::debug!(destination = %ep.destination, "HEC ack query answered {}", resp.status());
        return;
    }
    // An answer cut off at the limit does not parse: the acks are asked for again.
    let answer = read_head(resp, MAX_ACKS_ANSWER_BYTES).await;
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&answer) else {
        return;
    };
    let Some(acks) = json["acks"].as_object() else {
        return;
    };
    for e in events.iter_mut() {
        if let State::Acking { ack, .. } = e.state {
            if acks.get(&ack.to_string()).and_then(|v| v.as_bool()) == Some(true) {
                e.state = State::Delivered;
            }
        }
    }
}
