//! The daemon's own health, for the SIEM team's dashboards and the operator (DESIGN.md
//! "metrics"; issue 10 §4, §5): Prometheus metrics, `/healthz`, `/readyz` and `/status` (what
//! `defender-bridge status` reads), on one loopback port (`metrics_listen`).
//!
//! Events are counted where they happen with the `metrics` macros (a no-op until the recorder
//! is installed, so `send`, `check` and the tests pay nothing). What already has a counter
//! elsewhere (a writer's bytes, a tenant's last success, the queue's depth) is read at scrape
//! time by [`Health::refresh`] instead of being counted twice. Labels are tenant and
//! destination *names* from the configuration, never a secret or a URL with credentials.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::output::Output;
use crate::queue::{Queue, Record};
use crate::sink::Status;
use crate::source::defender::TenantStatus;
use crate::source::Api;

/// Buckets of `defender_bridge_delivery_latency_seconds`: from a local receiver's milliseconds
/// to a SIEM that was down for minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

/// Every metric, with its help text: the README's list is this one.
pub const METRICS: &[(&str, &str, &str)] = &[
    // (name, type, help)
    ("defender_bridge_alerts_polled_total", "counter", "Alert objects read from the API, per tenant"),
    ("defender_bridge_alert_versions_forwarded_total", "counter", "Alert versions put in the queue (new or changed), per tenant"),
    ("defender_bridge_api_requests_total", "counter", "Alert API requests by HTTP status (\"error\": no answer), per tenant"),
    ("defender_bridge_api_throttled_total", "counter", "API answers 429 (throttled), per tenant"),
    ("defender_bridge_token_refreshes_total", "counter", "Access tokens obtained from Entra ID, per tenant"),
    ("defender_bridge_sign_in_failures_total", "counter", "Failed sign-ins by kind (wrong_secret, secret_expired, app_not_consented, unknown_tenant, proxy_auth, refused, transport, certificate, settings), per tenant"),
    ("defender_bridge_tenant_behind_seconds", "gauge", "Now minus the tenant's cursor after its last successful poll"),
    ("defender_bridge_tenant_last_success_timestamp_seconds", "gauge", "Unix time of the tenant's last successful poll (0: none yet)"),
    ("defender_bridge_tenant_consecutive_failures", "gauge", "Polls of the tenant that failed in a row"),
    ("defender_bridge_tenant_poll_interval_seconds", "gauge", "The tenant's poll_interval"),
    ("defender_bridge_credential_expiry_timestamp_seconds", "gauge", "Unix time the tenant's certificate or client secret (secret_expires) expires, where known"),
    ("defender_bridge_records_delivered_total", "counter", "Records delivered, per destination (TCP/TLS: acknowledged by the receiver's TCP; RELP: rsp 200; UDP: sent)"),
    ("defender_bridge_bytes_delivered_total", "counter", "Bytes of the delivered records, framing included, per destination"),
    ("defender_bridge_values_truncated_total", "counter", "Values cut to fit a key's length or the message size, per destination"),
    ("defender_bridge_dead_letters_total", "counter", "Records that went to the dead letters (too large, refused by the receiver, damaged), per destination"),
    ("defender_bridge_reconnects_total", "counter", "Connections made after the first, per destination"),
    ("defender_bridge_destination_up", "gauge", "1 when the destination is connected (or has had nothing to send yet), 0 when it is down"),
    ("defender_bridge_queue_depth", "gauge", "Records queued and not yet delivered, per destination"),
    ("defender_bridge_queue_oldest_age_seconds", "gauge", "Now minus the lastUpdateDateTime of the oldest record not yet delivered, per destination (0: none)"),
    ("defender_bridge_delivery_latency_seconds", "histogram", "From handing a record to the writer to its delivery, per destination"),
    ("defender_bridge_queue_bytes", "gauge", "Bytes of the alert versions in the queue"),
    ("defender_bridge_queue_max_bytes", "gauge", "queue_max_bytes: polling pauses when the queue reaches it"),
    ("defender_bridge_queue_commits_total", "counter", "Write transactions of the queue since start (each two fsyncs)"),
    ("defender_bridge_dead_letters", "gauge", "Dead letters kept in the queue (`dead-letters list`)"),
    ("defender_bridge_notification_alerts_total", "counter", "Alert versions a notification rule matched, per rule"),
    ("defender_bridge_notifications_sent_total", "counter", "Notification messages delivered (SMTP accepted, webhook 2xx), per rule and action"),
    ("defender_bridge_notification_failures_total", "counter", "Notification messages that failed and wait to be tried again, per rule and action"),
    ("defender_bridge_notifications_pending", "gauge", "Alerts and health events waiting in a rule's digest (sent after its window), per rule and action"),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the histograms' samples are folded into their buckets (the exporter's own
/// `install` does it every 5 s).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process's recorder, once (a second daemon run in one process, as in tests,
/// shares it). `None` if another recorder was installed first.
pub fn recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("defender_bridge_delivery_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            // `install_recorder`, unlike `install`, runs no upkeep: a histogram's samples pile
            // up until a scrape renders them (docs of `PrometheusHandle::run_upkeep`), 8 bytes
            // per delivered record for a daemon nobody scrapes (the replay bench: +20 MB per
            // million records).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            for (name, kind, help) in METRICS {
                match *kind {
                    "counter" => metrics::describe_counter!(*name, *help),
                    "gauge" => metrics::describe_gauge!(*name, *help),
                    _ => metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help),
                }
            }
            Some(handle)
        })
        .clone()
}

/// One tenant as the health endpoints see it.
pub struct TenantView {
    pub name: String,
    pub api: Api,
    pub poll_interval: Duration,
    pub status: Arc<Mutex<TenantStatus>>,
}

/// One destination as the health endpoints see it.
pub struct DestinationView {
    pub name: String,
    pub url: String,
    pub output: Arc<Output>,
    pub progress: Arc<Progress>,
}

/// What a destination's delivery loop reports beyond its writer's counters.
#[derive(Debug, Default)]
pub struct Progress {
    /// Unix milliseconds of the last delivery (0: none since start).
    last_delivery_ms: AtomicI64,
}

impl Progress {
    pub fn delivered_now(&self) {
        self.last_delivery_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn last_delivery(&self) -> Option<DateTime<Utc>> {
        match self.last_delivery_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }
}

/// The running daemon's parts that health is read from.
pub struct Health {
    /// Changed when a reload starts or stops tenants and destinations.
    pub tenants: Mutex<Vec<TenantView>>,
    pub destinations: Mutex<Vec<DestinationView>>,
    pub queue: Queue,
    /// This instance's shard and the tenant count of its configuration file.
    pub shard: Mutex<Option<(crate::shard::Shard, usize)>>,
}

/// What `/status` answers and `defender-bridge status` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Nothing needs attention (what `/readyz` says).
    pub ready: bool,
    /// What needs attention, in plain words.
    pub problems: Vec<String>,
    pub tenants: Vec<TenantReport>,
    pub destinations: Vec<DestinationReport>,
    pub queue_bytes: u64,
    pub queue_max_bytes: u64,
    pub dead_letters: usize,
    /// "I/N of M tenants" when this instance is one shard of several.
    #[serde(default)]
    pub shard: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TenantReport {
    pub name: String,
    pub api: String,
    /// "ok", "behind", "failing" or "starting" (no successful poll yet).
    pub state: String,
    pub last_success: Option<DateTime<Utc>>,
    pub behind_seconds: f64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationReport {
    pub name: String,
    pub url: String,
    /// "up", "down" or "idle" (nothing sent yet).
    pub state: String,
    pub down_reason: Option<String>,
    pub queued: u64,
    pub oldest_age_seconds: Option<f64>,
    pub delivered: u64,
    pub last_delivery: Option<DateTime<Utc>>,
}

impl Health {
    /// Reads every tenant's and destination's state, sets the gauges and counters kept
    /// elsewhere, and says what needs attention: a tenant without a successful poll within
    /// three poll intervals (counted from start for one that has had none), a destination
    /// that is down (issue 10 §4 `/readyz`).
    pub fn report(&self, started: DateTime<Utc>) -> StatusReport {
        let now = Utc::now();
        let mut problems = Vec::new();
        let mut tenants = Vec::new();
        let views = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        for t in views.iter() {
            let s = t.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let labels = [("tenant", t.name.clone())];
            metrics::gauge!("defender_bridge_tenant_behind_seconds", &labels)
                .set(s.behind.as_secs_f64());
            metrics::gauge!(
                "defender_bridge_tenant_last_success_timestamp_seconds",
                &labels
            )
            .set(s.last_success.map_or(0.0, |t| t.timestamp() as f64));
            metrics::gauge!("defender_bridge_tenant_consecutive_failures", &labels)
                .set(f64::from(s.consecutive_failures));
            metrics::gauge!("defender_bridge_tenant_poll_interval_seconds", &labels)
                .set(t.poll_interval.as_secs_f64());
            let allowed =
                chrono::Duration::from_std(t.poll_interval * 3).unwrap_or(chrono::Duration::MAX);
            let since = s.last_success.unwrap_or(started);
            let stale = now - since > allowed;
            let state = match (s.last_success, s.consecutive_failures, s.lagging) {
                (_, n, _) if n > 0 => "failing",
                (None, _, _) => "starting",
                (_, _, true) => "behind",
                _ => "ok",
            };
            if stale {
                problems.push(match &s.last_error {
                    Some(e) => format!(
                        "tenant {}: no successful poll for {}: {e}",
                        t.name,
                        since_text(now - since)
                    ),
                    None => format!(
                        "tenant {}: no successful poll for {}",
                        t.name,
                        since_text(now - since)
                    ),
                });
            }
            tenants.push(TenantReport {
                name: t.name.clone(),
                api: t.api.to_string(),
                state: state.into(),
                last_success: s.last_success,
                behind_seconds: s.behind.as_secs_f64(),
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error.clone(),
            });
        }
        let head = self.queue.stats().head;
        let mut destinations = Vec::new();
        drop(views);
        let views = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        for d in views.iter() {
            let labels = [("destination", d.name.clone())];
            let stats = d.output.stats();
            metrics::counter!("defender_bridge_records_delivered_total", &labels)
                .absolute(stats.sink.messages_sent);
            metrics::counter!("defender_bridge_bytes_delivered_total", &labels)
                .absolute(stats.sink.bytes_sent);
            metrics::counter!("defender_bridge_values_truncated_total", &labels)
                .absolute(stats.truncated);
            metrics::counter!("defender_bridge_reconnects_total", &labels)
                .absolute(stats.sink.reconnects);
            let status = d.output.status().borrow().clone();
            let (state, reason) = match status {
                Status::Up { .. } => ("up", None),
                Status::Idle => ("idle", None),
                Status::Down { reason } => ("down", Some(reason)),
            };
            metrics::gauge!("defender_bridge_destination_up", &labels).set(if state == "down" {
                0.0
            } else {
                1.0
            });
            let cursor = self.queue.cursor(&d.name).unwrap_or(head);
            let queued = head.saturating_sub(cursor);
            let oldest = self
                .queue
                .read(cursor, 1)
                .ok()
                .and_then(|v| v.into_iter().next())
                .and_then(|(_, bytes)| Record::decode(&bytes).ok())
                .map(|r| (now - r.last_update).num_milliseconds().max(0) as f64 / 1000.0);
            metrics::gauge!("defender_bridge_queue_depth", &labels).set(queued as f64);
            metrics::gauge!("defender_bridge_queue_oldest_age_seconds", &labels)
                .set(oldest.unwrap_or(0.0));
            if let Some(r) = &reason {
                problems.push(format!(
                    "destination {}: down ({r}), {queued} record(s) waiting",
                    d.name
                ));
            }
            destinations.push(DestinationReport {
                name: d.name.clone(),
                url: d.url.clone(),
                state: state.into(),
                down_reason: reason,
                queued,
                oldest_age_seconds: oldest,
                delivered: stats.sink.messages_sent,
                last_delivery: d.progress.last_delivery(),
            });
        }
        drop(views);
        let q = self.queue.stats();
        let dead_letters = self.queue.dead_letters().map(|l| l.len()).unwrap_or(0);
        metrics::gauge!("defender_bridge_queue_bytes").set(q.bytes as f64);
        metrics::gauge!("defender_bridge_queue_max_bytes").set(q.max_bytes as f64);
        metrics::counter!("defender_bridge_queue_commits_total").absolute(q.commits);
        metrics::gauge!("defender_bridge_dead_letters").set(dead_letters as f64);
        StatusReport {
            shard: self
                .shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|(s, n)| format!("{s} ({} of {n} tenant(s))", tenants.len())),
            ready: problems.is_empty(),
            problems,
            tenants,
            destinations,
            queue_bytes: q.bytes,
            queue_max_bytes: q.max_bytes,
            dead_letters,
        }
    }
}

fn since_text(d: chrono::Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.num_seconds().max(0) as u64)).to_string()
}

/// Longest request head read; anything longer is answered 431 and closed.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends no complete request head in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `GET /metrics`, `/healthz`, `/readyz` and `/status` until `stop`. HTTP/1.1, one
/// request per connection, no body: what Prometheus, a load balancer's health check and
/// `defender-bridge status` need, and no more (so the lean build carries no HTTP server
/// crate). Requests are bounded in size and time. Returns once no connection holds `health`
/// any more (the daemon's writers are shut down after it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let started = Utc::now();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (conn, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Dropping `conns` aborts the connections still open.
            _ = stop.cancelled() => return,
        };
        let (handle, health) = (handle.clone(), health.clone());
        conns.spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &handle, &health, started))
                .await;
        });
    }
}

async fn answer(
    mut conn: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    health: &Health,
    started: DateTime<Utc>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > MAX_REQUEST {
            return respond(&mut conn, 431, "text/plain", "request too large\n").await;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut conn, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/metrics" => {
            // Read the gauges kept elsewhere first, so the scrape is current.
            let _ = health.report(started);
            handle.run_upkeep();
            let body = handle.render();
            respond(&mut conn, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => respond(&mut conn, 200, "text/plain", "ok\n").await,
        "/readyz" => {
            let r = health.report(started);
            if r.ready {
                respond(&mut conn, 200, "text/plain", "ready\n").await
            } else {
                let body = format!("not ready:\n{}\n", r.problems.join("\n"));
                respond(&mut conn, 503, "text/plain", &body).await
            }
        }
        "/status" => {
            let r = health.report(started);
            let body = serde_json::to_string(&r).unwrap_or_else(|_| "{}".into());
            respond(&mut conn, 200, "application/json", &body).await
        }
        _ => {
            respond(
                &mut conn,
                404,
                "text/plain",
                "not found: /metrics, /healthz, /readyz, /status\n",
            )
            .await
        }
    }
}

async fn respond(
    conn: &mut tokio::net::TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric is documented in the README's Monitoring table, and nothing else is.
    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| `defender_bridge_"))
            .collect();
        assert_eq!(table.len(), METRICS.len(), "{table:#?}");
        for (name, kind, _) in METRICS {
            assert!(
                table
                    .iter()
                    .any(|l| l.starts_with(&format!("| `{name}`"))
                        && l.contains(&format!("| {kind} |"))),
                "{name} is not in the README's table"
            );
        }
    }

    /// The example alert rules and dashboard (packaging/monitoring/) use only metrics that
    /// exist, and the dashboard is valid JSON.
    #[test]
    fn the_packaged_rules_and_dashboard_use_real_metrics() {
        let rules = include_str!("../packaging/monitoring/prometheus-alerts.yml");
        let dashboard = include_str!("../packaging/monitoring/grafana-dashboard.json");
        serde_json::from_str::<serde_json::Value>(dashboard).expect("the dashboard is JSON");
        for (file, text) in [("rules", rules), ("dashboard", dashboard)] {
            let mut used = 0;
            for (i, _) in text.match_indices("defender_bridge_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    METRICS.iter().any(|(m, _, _)| *m == base || *m == name),
                    "the {file} use {name}, which is no metric"
                );
                used += 1;
            }
            assert!(used > 5, "the {file} use {used} metrics");
        }
    }

    /// `/status` answers what `status` reads back.
    #[test]
    fn a_status_report_round_trips() {
        let r = StatusReport {
            ready: false,
            problems: vec!["destination siem: down (refused), 3 record(s) waiting".into()],
            tenants: vec![TenantReport {
                name: "contoso".into(),
                api: "graph".into(),
                state: "ok".into(),
                last_success: Some(Utc::now()),
                behind_seconds: 1.5,
                consecutive_failures: 0,
                last_error: None,
            }],
            destinations: Vec::new(),
            queue_bytes: 10,
            queue_max_bytes: 20,
            dead_letters: 0,
            shard: Some("1/3 (1 of 3 tenant(s))".into()),
        };
        let back: StatusReport =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(back.problems, r.problems);
        assert_eq!(back.tenants[0].name, "contoso");
    }
}
