//! A Splunk HTTP Event Collector for tests, on 127.0.0.1 and a free port: the documented
//! endpoints (`/services/collector/event`, `/ack`, `/health`; docs.splunk.com "HTTP Event
//! Collector REST API endpoints", delivery.md §2) with scripted behaviour: acks that come late,
//! never, or in reverse order; "server is busy" storms; a 400 naming one event of a batch; a
//! restart that forgets the channels.
//!
//! With acknowledgement on, a batch's events count as *indexed* only once its ack turns true:
//! a batch whose ack never comes is lost, as Splunk warns it may be. That is what makes the
//! tests' exact-set assertions meaningful: only a writer that resends unacknowledged batches
//! gets every event indexed.
#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

/// How acks behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// True after this delay.
    After(Duration),
    /// Never true (the batches are lost).
    Never,
    /// True after the delay, but a later batch's ack before an earlier one's.
    Reversed(Duration),
}

#[derive(Clone, Debug)]
pub struct HecScript {
    pub token: String,
    /// `None`: no indexer acknowledgement (200 means indexed).
    pub acks: Option<Acks>,
}

struct Batch {
    events: Vec<Value>,
    at: Instant,
    ack: u64,
    /// Accepted while acks never came: lost for good, whatever the script says later.
    lost: bool,
}

#[derive(Default)]
struct Inner {
    indexed: Vec<Value>,
    /// channel → (next ack id, batches awaiting their ack).
    channels: HashMap<String, (u64, Vec<Batch>)>,
    busy: u32,
    /// Accepted batches still to be answered with a cut-off body (no readable ackId).
    garble: u32,
    reject_id: Option<String>,
    requests: u64,
    rejected_requests: u64,
    ack_queries: u64,
    channels_seen: Vec<String>,
    content_encodings: Vec<String>,
    /// channel → ack ids that are true and not yet reported.
    acked: HashMap<String, std::collections::BTreeSet<u64>>,
}

struct Shared {
    script: Mutex<HecScript>,
    inner: Mutex<Inner>,
}

type S = Arc<Shared>;

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().expect("HEC state lock")
}

/// A running collector; stopped on drop.
pub struct HecServer {
    port: u16,
    shared: S,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HecServer {
    pub fn start(script: HecScript) -> HecServer {
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            inner: Mutex::new(Inner::default()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("HEC runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the HEC server");
                ready_tx
                    .send(listener.local_addr().expect("address").port())
                    .expect("report the port");
                let app = Router::new()
                    .route("/services/collector/event", post(event))
                    .route("/services/collector/ack", post(ack))
                    .route("/services/collector/health", get(health))
                    .with_state(s);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let port = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the HEC server starts");
        HecServer {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next `n` event requests answer 503 "Server is busy" (code 9).
    pub fn busy(&self, n: u32) {
        lock(&self.shared.inner).busy = n;
    }

    /// The next `n` accepted batches (acks on) are answered 200 with a body cut off before its
    /// ackId, as by a proxy that drops the connection mid-answer; their ack never comes, so
    /// they are lost unless sent again.
    pub fn garble(&self, n: u32) {
        lock(&self.shared.inner).garble = n;
    }

    /// A batch holding the event whose `event.id` is `id` is answered 400 naming it.
    pub fn reject(&self, id: &str) {
        lock(&self.shared.inner).reject_id = Some(id.to_string());
    }

    pub fn set_acks(&self, acks: Option<Acks>) {
        self.shared.script.lock().expect("script").acks = acks;
    }

    /// A restart that forgets every channel: acks awaited are gone, ids start again at 0.
    pub fn forget(&self) {
        let mut inner = lock(&self.shared.inner);
        inner.channels.clear();
        inner.acked.clear();
    }

    /// Every event indexed, in order.
    pub fn indexed(&self) -> Vec<Value> {
        settle(&self.shared);
        lock(&self.shared.inner).indexed.clone()
    }

    /// The `event.id` of every indexed event, in order.
    pub fn ids(&self) -> Vec<String> {
        self.indexed()
            .iter()
            .map(|e| {
                e["event"]["id"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e["event"].to_string())
            })
            .collect()
    }

    pub fn requests(&self) -> u64 {
        lock(&self.shared.inner).requests
    }

    pub fn ack_queries(&self) -> u64 {
        lock(&self.shared.inner).ack_queries
    }

    pub fn channels(&self) -> Vec<String> {
        lock(&self.shared.inner).channels_seen.clone()
    }

    pub fn content_encodings(&self) -> Vec<String> {
        lock(&self.shared.inner).content_encodings.clone()
    }

    /// Waits until `n` events are indexed (panics with what there is after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.indexed();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} events indexed; requests {}",
                got.len(),
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HecServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves batches whose ack has turned true into the index (in reverse order when so
/// scripted); their ids answer true at the channel's next ack query.
fn settle(shared: &Shared) {
    let acks = shared.script.lock().expect("script").acks;
    let mut inner = lock(&shared.inner);
    let now = Instant::now();
    let mut done: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut indexed = Vec::new();
    for (channel, (_, batches)) in inner.channels.iter_mut() {
        let ready = |b: &Batch| {
            !b.lost
                && match acks {
                    Some(Acks::After(d)) => now - b.at >= d,
                    Some(Acks::Reversed(d)) => now - b.at >= d,
                    Some(Acks::Never) | None => false,
                }
        };
        let mut keep = Vec::new();
        let mut ready_batches = Vec::new();
        for b in batches.drain(..) {
            if ready(&b) {
                ready_batches.push(b);
            } else {
                keep.push(b);
            }
        }
        if matches!(acks, Some(Acks::Reversed(_))) {
            // The newest ready batch first; the oldest waits one more round while others wait.
            ready_batches.reverse();
            if ready_batches.len() > 1 {
                let oldest = ready_batches.pop().expect("non-empty");
                keep.insert(0, oldest);
            }
        }
        for b in ready_batches {
            done.entry(channel.clone()).or_default().push(b.ack);
            indexed.extend(b.events);
        }
        *batches = keep;
    }
    inner.indexed.extend(indexed);
    for (channel, ids) in done {
        inner.acked.entry(channel).or_default().extend(ids);
    }
}

fn answer(code: StatusCode, body: Value) -> (StatusCode, String) {
    (code, body.to_string())
}

async fn event(
    State(s): State<S>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let script = s.script.lock().expect("script").clone();
    let mut inner = lock(&s.inner);
    inner.requests += 1;
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(format!("Splunk {}", script.token).as_str())
    {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"text": "Invalid token", "code": 4}),
        );
    }
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    inner.content_encodings.push(encoding.clone());
    let raw = if encoding == "gzip" {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"text": "Invalid data format", "code": 6}),
            );
        }
        out
    } else {
        body.to_vec()
    };
    let events: Vec<Value> = match serde_json::Deserializer::from_slice(&raw)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
    {
        Ok(e) => e,
        Err(_) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"text": "Invalid data format", "code": 6}),
            )
        }
    };
    if events.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"text": "No data", "code": 5}),
        );
    }
    if inner.busy > 0 {
        inner.busy -= 1;
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"text": "Server is busy", "code": 9}),
        );
    }
    if let Some(k) = inner.reject_id.as_ref().and_then(|id| {
        events
            .iter()
            .position(|e| e["event"]["id"].as_str() == Some(id.as_str()))
    }) {
        inner.rejected_requests += 1;
        // Nothing of the batch is kept (the conservative reading of Splunk's documentation).
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"text": "Invalid data format", "code": 6, "invalid-event-number": k}),
        );
    }
    for e in &events {
        if e.get("event").is_none() {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"text": "Event field is required", "code": 12}),
            );
        }
    }
    match script.acks {
        None => {
            inner.indexed.extend(events);
            answer(StatusCode::OK, json!({"text": "Success", "code": 0}))
        }
        Some(_) => {
            let Some(channel) = headers
                .get("x-splunk-request-channel")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
            else {
                return answer(
                    StatusCode::BAD_REQUEST,
                    json!({"text": "Data channel is missing", "code": 10}),
                );
            };
            if !inner.channels_seen.contains(&channel) {
                inner.channels_seen.push(channel.clone());
            }
            let garbled = inner.garble > 0;
            if garbled {
                inner.garble -= 1;
            }
            let (next, batches) = inner.channels.entry(channel).or_insert((0, Vec::new()));
            let id = *next;
            *next += 1;
            batches.push(Batch {
                events,
                at: Instant::now(),
                ack: id,
                lost: garbled || script.acks == Some(Acks::Never),
            });
            if garbled {
                return (
                    StatusCode::OK,
                    r#"{"text":"Success","code":0,"ack"#.to_string(),
                );
            }
            answer(
                StatusCode::OK,
                json!({"text": "Success", "code": 0, "ackId": id}),
            )
        }
    }
}

/// Acks true once, then forgotten (false), as Splunk's.
async fn ack(
    State(s): State<S>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    settle(&s);
    let mut inner = lock(&s.inner);
    inner.ack_queries += 1;
    let Some(channel) = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"text": "Data channel is missing", "code": 10}),
        );
    };
    let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut out = serde_json::Map::new();
    let acked = inner.acked.entry(channel.to_string()).or_default();
    for id in asked["acks"].as_array().into_iter().flatten() {
        if let Some(id) = id.as_u64() {
            let was = acked.remove(&id);
            out.insert(id.to_string(), Value::Bool(was));
        }
    }
    answer(StatusCode::OK, json!({ "acks": out }))
}

async fn health() -> (StatusCode, String) {
    answer(
        StatusCode::OK,
        json!({"text": "HEC is healthy", "code": 17}),
    )
}
