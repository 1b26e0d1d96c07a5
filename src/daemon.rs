//! `run`: every tenant polled, every alert version queued on disk, and delivered from there to
//! every destination that wants it (DESIGN.md "The flow").
//!
//! One poller task per tenant, so that a failing or slow tenant never delays another
//! (peers.md §7.4), under a supervisor per tenant that retries a start that failed and restarts
//! the poller after a panic (issue 8 §13). The poller hands each page to its [`TenantPages`],
//! which appends the page's alerts, its dead letters (what cannot be forwarded) and the
//! tenant's new checkpoint to the durable queue in one transaction; only then does the poller
//! go on (src/queue/). Each destination has its own delivery loop reading the queue from its own
//! cursor (src/delivery.rs), so a SIEM that is down holds up nothing but its own records: the
//! pollers and the other destinations go on, and it catches up from the queue when it is back.
//! A restart resumes the pollers from their checkpoints and the destinations from their cursors
//! (at-least-once: what a destination delivered in its last quarter second before a crash can
//! go again; the alert id and lastUpdate time in every record let the SIEM de-duplicate).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::config::{Config, Tenant};
use crate::dead_letter::Letter;
use crate::delivery::Forwarder;
use crate::output::{Output, OutputStats};
use crate::queue::{checkpoint_key, Queue, QueueStats, Record};
use crate::source::defender::backoff;
use crate::source::{build_http_client, AlertBatch, Checkpoint, PageSink, Poller, Refused};

/// What a run did, once it has stopped.
#[derive(Debug)]
pub struct RunReport {
    /// Each destination's counters, by name.
    pub outputs: Vec<(String, OutputStats)>,
    /// The queue's counters (commits: its write transactions, each one fsync).
    pub queue: QueueStats,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct RunStats {
    pub alerts: AtomicU64,
    pub undecodable: AtomicU64,
    /// Alerts the poller could not forward (no id, no readable lastUpdate time).
    pub rejected: AtomicU64,
}

/// Runs until `stop` is cancelled, then stops polling, lets the destinations deliver what is
/// queued and closes them, all within the configured `shutdown_timeout`; what was not
/// delivered by then stays queued for the next start.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<RunReport> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state directory {}: {e}",
            config.state_dir.display()
        )
    })?;
    // Held until `run` returns: a second daemon on this directory would poll the same tenants
    // and overwrite the same checkpoints.
    let _lock = lock_state_dir(&config.state_dir)?;
    match Checkpoint::remove_temp_files(&config.state_dir) {
        Ok(removed) => {
            for path in removed {
                tracing::info!(
                    "removed {}, left by an interrupted checkpoint save",
                    path.display()
                );
            }
        }
        Err(e) => tracing::warn!(
            "cannot clean the temp files of {}: {e}",
            config.state_dir.display()
        ),
    }
    let queue = Queue::open(&config.state_dir, config.queue_max_bytes)?;
    for t in &config.tenants {
        let s = &t.settings;
        let key = checkpoint_key(&s.tenant_id, s.api);
        let file = Checkpoint::path(&config.state_dir, &s.tenant_id, &s.api.to_string());
        if queue.migrate_checkpoint_file(&key, &file)? {
            tracing::info!(tenant = %s.name, "checkpoint file {} moved into the queue", file.display());
        }
    }
    let names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    queue.attach(&names)?;
    let http = build_http_client(&config.http)?;
    match crate::dead_letter::import_file(&queue, &config.dead_letter).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "{n} dead letter(s) of {} moved into the queue (the file is renamed to ….imported)",
            config.dead_letter.display()
        ),
        Err(e) => tracing::warn!("cannot import the dead-letter file of an older version: {e:#}"),
    }
    let by_name: Arc<HashMap<String, Tenant>> = Arc::new(
        config
            .tenants
            .iter()
            .map(|t| (t.settings.name.clone(), t.clone()))
            .collect(),
    );
    let mut outputs = Vec::new();
    let deliver_stop = CancellationToken::new();
    let out_of_time = Arc::new(tokio::sync::Notify::new());
    let mut deliveries = tokio::task::JoinSet::new();
    for d in &config.destinations {
        let output = Arc::new(Output::build(&d.output)?);
        outputs.push((d.name.clone(), output.clone()));
        let forwarder = Forwarder {
            destination: d.clone(),
            output,
            tenants: by_name.clone(),
        };
        deliveries.spawn(forwarder.run_supervised(
            queue.clone(),
            deliver_stop.clone(),
            out_of_time.clone(),
        ));
    }
    let stats = Arc::new(RunStats::default());
    let poll_stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for tenant in &config.tenants {
        let settings = tenant.settings.clone();
        let key = checkpoint_key(&settings.tenant_id, settings.api);
        let (http, start_queue) = (http.clone(), queue.clone());
        let pages = TenantPages {
            tenant: tenant.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            stop: poll_stop.clone(),
        };
        let tenant_stop = poll_stop.clone();
        tasks.spawn(supervise(
            tenant.settings.name.clone(),
            (settings.backoff_base, settings.backoff_max),
            poll_stop.clone(),
            move || -> Result<Poller, String> {
                let checkpoint = start_queue.checkpoint(&key).map_err(|e| e.to_string())?;
                Poller::connect_with_checkpoint(settings.clone(), http.clone(), checkpoint)
                    .map_err(|e| e.to_string())
            },
            move |poller: Poller| poller.run(pages.clone(), tenant_stop.clone()),
        ));
    }
    let q = queue.stats();
    tracing::info!(
        tenants = config.tenants.len(),
        destinations = config.destinations.len(),
        queued_bytes = q.bytes,
        "running"
    );
    // Config valid, store open, every task started: systemd (Type=notify) may go on.
    let _watchdog = crate::systemd::ready();
    stop.cancelled().await;
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    tracing::info!("stopping: polling ends, the destinations deliver what is queued");
    // Pollers first: a page being appended finishes its transaction or is not acknowledged,
    // and either way its alerts and checkpoint are in the queue together or not at all.
    poll_stop.cancel();
    while tasks.join_next().await.is_some() {}
    deliver_stop.cancel();
    let mut behind = Vec::new();
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(r) = deliveries.join_next().await {
            collect_delivery(r, &mut behind);
        }
    })
    .await;
    if drained.is_err() {
        // Out of time: each loop keeps what was delivered; the rest stays queued.
        out_of_time.notify_waiters();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(r) = deliveries.join_next().await {
                collect_delivery(r, &mut behind);
            }
        })
        .await;
        if ended.is_err() {
            // A loop stuck in its last cursor write: what it delivered since its last write is
            // sent again at the next start (at-least-once).
            deliveries.abort_all();
            while deliveries.join_next().await.is_some() {}
        }
    }
    let head = queue.stats().head;
    let mut out = Vec::new();
    let mut unflushed = Vec::new();
    for (name, output) in outputs {
        let Ok(output) = Arc::try_unwrap(output) else {
            unflushed.push(format!("{name}: the writer is still in use at shutdown"));
            continue;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match output.shutdown(left.max(Duration::from_millis(100))).await {
            Ok(s) => out.push((name, s)),
            // What the writer had not delivered is still queued (its cursor did not move).
            Err(e) => {
                tracing::warn!(destination = %name, "{e}; what it had not delivered stays queued")
            }
        }
    }
    for name in &names {
        let cursor = queue.cursor(name).unwrap_or(0);
        if cursor < head {
            // Not an error: they are safe on disk and go first at the next start.
            tracing::warn!(destination = %name,
                "{} record(s) not delivered by the shutdown deadline stay queued for the next start",
                head - cursor);
        }
    }
    let queue_stats = queue.stats();
    queue.close().await;
    for e in behind {
        unflushed.push(e);
    }
    if !unflushed.is_empty() {
        anyhow::bail!("{}", unflushed.join("; "));
    }
    Ok(RunReport {
        outputs: out,
        queue: queue_stats,
    })
}

fn collect_delivery(
    r: Result<Result<u64, crate::queue::QueueError>, tokio::task::JoinError>,
    errors: &mut Vec<String>,
) {
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => errors.push(e.to_string()),
        Err(e) => errors.push(format!("a delivery loop failed: {e}")),
    }
}

/// Keeps one tenant going until `stop` (issue 8 §13). `start` (the poller's `connect`: its
/// certificate may not be mounted yet, its checkpoint may be damaged) is tried again after a
/// capped exponential backoff with jitter until it succeeds; then `run` runs in its own task. If
/// that task ends or panics while the daemon is not stopping, the failure is logged and the
/// tenant started again after a backoff. A panic never reaches another tenant or the process.
/// `delays` are the first and the longest delay; the count of failures in a row, which sets
/// the delay, starts again after a run that lasted the longest delay.
pub(crate) async fn supervise<T, E, Fut>(
    name: String,
    (base, max): (Duration, Duration),
    stop: CancellationToken,
    mut start: impl FnMut() -> Result<T, E>,
    mut run: impl FnMut(T) -> Fut,
) where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut failures: u32 = 0;
    loop {
        let started = match start() {
            Ok(t) => t,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(base, max, failures);
                tracing::error!(tenant = %name,
                    "cannot start polling ({failures} failure(s) in a row), retrying in {delay:?}: {e}");
                if !sleep_unless_stopped(delay, &stop).await {
                    return;
                }
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(tenant = %name, "polling started after {failures} failure(s)");
        }
        let began = tokio::time::Instant::now();
        let ended = tokio::spawn(run(started)).await;
        // A JoinError says "task 12 panicked with message \"…\"".
        let why = match &ended {
            Ok(()) => "its poller and handler ended".to_string(),
            Err(e) => e.to_string(),
        };
        if stop.is_cancelled() {
            if ended.is_err() {
                tracing::error!(tenant = %name, "during shutdown: {why}");
            }
            return;
        }
        if began.elapsed() >= max {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = backoff(base, max, failures);
        tracing::error!(tenant = %name, "tenant stopped: {why}; restarting in {delay:?}");
        if !sleep_unless_stopped(delay, &stop).await {
            return;
        }
    }
}

/// Sleeps `delay`; false when `stop` came first.
async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

/// Locks `<state_dir>/defender-bridge.lock` for as long as the returned file is open. The
/// kernel drops the lock when the process ends, however it ends, so a crash leaves no stale lock.
pub(crate) fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("defender-bridge.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the state directory {} is in use by another defender-bridge (it holds {}); stop that one, or give this one its own state_dir",
            state_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
}

/// One tenant's side of the queue: where its poller's pages go.
#[derive(Clone)]
pub(crate) struct TenantPages {
    tenant: Tenant,
    queue: Queue,
    stats: Arc<RunStats>,
    stop: CancellationToken,
}

impl PageSink for TenantPages {
    async fn accept(&self, batch: AlertBatch) -> Result<(), Refused> {
        match handle_page(&self.tenant, batch, &self.queue, &self.stats, &self.stop).await {
            Page::Done => Ok(()),
            Page::Again => Err(Refused::Again),
            Page::Stopped => Err(Refused::Closed),
        }
    }
}

/// What became of a page.
#[derive(Debug, PartialEq, Eq)]
enum Page {
    /// Its records, dead letters and checkpoint are committed.
    Done,
    /// Not: the checkpoint stays, and the page comes again.
    Again,
    /// The daemon is stopping.
    Stopped,
}

/// Puts what cannot be forwarded in the page's dead letters, and appends them, the rest and the
/// checkpoint to the queue in one transaction. A queue that cannot take the page (a full or
/// unwritable disk) holds this tenant's polling here, the page in hand, and goes on by itself
/// once the write works again (issue 9 §2).
async fn handle_page(
    tenant: &Tenant,
    batch: AlertBatch,
    queue: &Queue,
    stats: &RunStats,
    stop: &CancellationToken,
) -> Page {
    let name = &tenant.settings.name;
    // The cursor moves past every alert of the page, so what cannot be forwarded is committed
    // with it (issue 8 §12).
    let mut dead = Vec::new();
    for r in &batch.rejected {
        tracing::error!(tenant = %name, alert = r.id.as_deref().unwrap_or("-"),
            "alert cannot be forwarded, it goes to the dead letters: {}", r.reason);
        dead.push(Letter {
            destination: "-",
            alert_id: r.id.as_deref(),
            last_update_date_time: None,
            tenant_name: Some(name),
            reason: r.reason.clone(),
            record: r.json.get(),
            alert: Some(&r.json),
        });
    }
    let mut records = Vec::with_capacity(batch.alerts.len());
    let mut undecodable = 0u64;
    for raw in &batch.alerts {
        // Checked here once, so that every destination's loop gets alerts it can decode.
        if let Err(e) = Alert::from_json(raw.json.get()) {
            undecodable += 1;
            tracing::error!(tenant = %name, alert = %raw.id,
                "cannot decode alert, it goes to the dead letters: {e}");
            dead.push(Letter {
                destination: "-",
                alert_id: Some(&raw.id),
                last_update_date_time: Some(raw.last_update.to_rfc3339()),
                tenant_name: Some(name),
                reason: format!("cannot decode alert: {e}"),
                record: raw.json.get(),
                alert: Some(&raw.json),
            });
            continue;
        }
        records.push(raw);
    }
    // Encoded again only when a write failed and is tried again.
    let encode = |raws: &[&crate::source::RawAlert]| -> Vec<Vec<u8>> {
        raws.iter()
            .map(|raw| {
                Record {
                    tenant_name: name.clone(),
                    tenant_id: batch.tenant_id.clone(),
                    api: batch.api.to_string(),
                    alert_id: raw.id.clone(),
                    last_update: raw.last_update,
                    alert: raw.json.clone(),
                    only: None,
                }
                .encode()
            })
            .collect()
    };
    let dead: Vec<Vec<u8>> = dead.iter().map(Letter::to_json).collect();
    let Some(checkpoint) = &batch.checkpoint else {
        tracing::error!(tenant = %name, "a page came without its checkpoint; not acknowledged");
        return Page::Again;
    };
    let count = records.len() as u64;
    let key = checkpoint_key(&batch.tenant_id, batch.api);
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut last_logged = tokio::time::Instant::now();
    loop {
        let appended = tokio::select! {
            a = queue.append(&key, encode(&records), dead.clone(), checkpoint) => a,
            // A full queue waits for space; a stop must not wait for it.
            _ = stop.cancelled() => return Page::Stopped,
        };
        match appended {
            Ok(()) => {
                if let Some(since) = failing_since {
                    tracing::info!(tenant = %name, "the queue takes pages again, after {:.0?}; polling goes on", since.elapsed());
                }
                stats.alerts.fetch_add(count, Ordering::Relaxed);
                stats.undecodable.fetch_add(undecodable, Ordering::Relaxed);
                stats
                    .rejected
                    .fetch_add(batch.rejected.len() as u64, Ordering::Relaxed);
                return Page::Done;
            }
            Err(crate::queue::QueueError::Closed) => return Page::Stopped,
            Err(e) => {
                let now = tokio::time::Instant::now();
                if failing_since.is_none() || now - last_logged >= QUEUE_FAILING_LOG_EVERY {
                    tracing::error!(tenant = %name, "cannot queue the page; polling of this tenant waits until the queue can be written: {e}");
                    last_logged = now;
                }
                failing_since.get_or_insert(now);
                if !sleep_unless_stopped(QUEUE_RETRY, stop).await {
                    return Page::Stopped;
                }
            }
        }
    }
}

/// How often a page the queue cannot take is tried again.
const QUEUE_RETRY: Duration = Duration::from_secs(1);
/// How often a queue that keeps failing is logged again.
const QUEUE_FAILING_LOG_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Api, Credential, RawAlert, RejectedAlert, SecretString, TenantSettings};
    use serde_json::value::RawValue;

    fn tenant() -> Tenant {
        Tenant {
            settings: TenantSettings::new(
                "contoso",
                "t",
                "c",
                Credential::Secret(SecretString::new("x")),
            ),
            syslog_hostname: None,
        }
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    /// A page with an alert the poller rejected (no id) and one that does not decode.
    fn page() -> AlertBatch {
        AlertBatch {
            tenant_name: "contoso".into(),
            tenant_id: "t".into(),
            api: Api::Graph,
            alerts: vec![RawAlert {
                id: "da-odd".into(),
                last_update: chrono::Utc::now(),
                json: raw(r#"{"id":"da-odd","colour":"blue"}"#),
            }],
            rejected: vec![RejectedAlert {
                id: None,
                reason: "it has no id".into(),
                json: raw(r#"{"title":"no id"}"#),
            }],
            cursor_after: chrono::Utc::now(),
            checkpoint: Some(Checkpoint::fresh("t", "graph", chrono::Utc::now())),
        }
    }

    /// Rejected and undecodable alerts of a page are in the dead letters, whole, with their
    /// reasons, committed with the page's checkpoint.
    #[tokio::test]
    async fn what_cannot_be_forwarded_is_dead_lettered_with_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let stats = RunStats::default();
        let stop = CancellationToken::new();
        let queue = Queue::open(dir.path(), 1 << 20).unwrap();
        let page = handle_page(&tenant(), page(), &queue, &stats, &stop).await;
        assert_eq!(page, Page::Done);
        // Neither went into the queue; the page's checkpoint did.
        assert_eq!(queue.stats().head, 0);
        assert!(queue.checkpoint("t-graph").unwrap().is_some());
        let lines: Vec<serde_json::Value> = queue
            .dead_letters()
            .unwrap()
            .iter()
            .map(|(_, l)| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["reason"], "it has no id");
        assert_eq!(lines[0]["record"], r#"{"title":"no id"}"#);
        assert!(lines[0].get("alertId").is_none());
        assert_eq!(lines[1]["alertId"], "da-odd");
        assert_eq!(lines[1]["tenantName"], "contoso");
        assert!(
            lines[1]["reason"]
                .as_str()
                .unwrap()
                .starts_with("cannot decode alert"),
            "{lines:?}"
        );
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(stats.undecodable.load(Ordering::Relaxed), 1);
    }

    /// A start that fails is retried; a run that panics is restarted; neither reaches the
    /// caller; `stop` ends the supervisor.
    #[tokio::test]
    async fn the_supervisor_retries_a_failed_start_and_restarts_a_panicked_task() {
        use std::sync::atomic::AtomicU32;
        let starts = Arc::new(AtomicU32::new(0));
        let runs = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let (second_run, running) = tokio::sync::oneshot::channel::<()>();
        let second_run = Arc::new(std::sync::Mutex::new(Some(second_run)));
        let supervisor = tokio::spawn(supervise(
            "contoso".to_string(),
            (Duration::from_millis(5), Duration::from_millis(50)),
            stop.clone(),
            {
                let starts = starts.clone();
                move || match starts.fetch_add(1, Ordering::SeqCst) {
                    0 => Err("the certificate is not there yet"),
                    n => Ok(n),
                }
            },
            {
                let (runs, stop) = (runs.clone(), stop.clone());
                move |_| {
                    let (runs, stop, second_run) = (runs.clone(), stop.clone(), second_run.clone());
                    async move {
                        if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                            panic!("the first run panics");
                        }
                        if let Some(tx) = second_run.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                        stop.cancelled().await;
                    }
                }
            },
        ));
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("restarted after the panic")
            .unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), supervisor)
            .await
            .expect("the supervisor ends on stop")
            .expect("the panic did not reach the supervisor");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
