//! `run`: every tenant polled, every alert version formatted for and sent to every destination
//! that wants it.
//!
//! One poller task and one handler task per tenant, so that a failing or slow tenant never
//! delays another (peers.md §7.4), under a supervisor per tenant that retries a start that
//! failed and restarts the pair after a panic (issue 8 §13). A handler decodes each page, queues its records on every
//! matching output, waits until the outputs have written them, and only then acknowledges the
//! page, which lets the tenant's checkpoint move past it (issue: "advanced only after every
//! destination accepted the records of that page"). While a destination is down its tenants'
//! checkpoints wait, so a restart loses nothing; the records of a page being written when the
//! daemon stops can be sent again after the restart (at-least-once, with the alert id and
//! lastUpdate time in every record for the SIEM to de-duplicate).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::config::{Config, Destination, Tenant};
use crate::dead_letter::{DeadLetterFile, Letter};
use crate::format::Context;
use crate::output::{Output, OutputStats};
use crate::source::defender::backoff;
use crate::source::{build_http_client, AlertBatch, Checkpoint, Delivery, Poller};

/// A destination and what it takes.
struct Route {
    output: Output,
    destination: Destination,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct RunStats {
    pub alerts: AtomicU64,
    pub undecodable: AtomicU64,
    /// Alerts the poller could not forward (no id, no readable lastUpdate time).
    pub rejected: AtomicU64,
}

/// Runs until `stop` is cancelled, then flushes every output within the configured timeout.
pub async fn run(
    config: Config,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(String, OutputStats)>> {
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
    let http = build_http_client(&config.http)?;
    let mut routes = Vec::new();
    for d in &config.destinations {
        routes.push(Route {
            output: Output::build(&d.output)?,
            destination: d.clone(),
        });
    }
    let routes = Arc::new(routes);
    let letters =
        Arc::new(DeadLetterFile::open(&config.dead_letter).map_err(|e| {
            anyhow::anyhow!("dead-letter file {}: {e}", config.dead_letter.display())
        })?);
    let stats = Arc::new(RunStats::default());
    let mut tasks = tokio::task::JoinSet::new();
    for tenant in &config.tenants {
        let settings = tenant.settings.clone();
        let (http, state_dir) = (http.clone(), config.state_dir.clone());
        let (tenant, routes, letters, stats, tenant_stop) = (
            tenant.clone(),
            routes.clone(),
            letters.clone(),
            stats.clone(),
            stop.clone(),
        );
        tasks.spawn(supervise(
            tenant.settings.name.clone(),
            (settings.backoff_base, settings.backoff_max),
            stop.clone(),
            move || Poller::connect(settings.clone(), http.clone(), &state_dir),
            move |poller| {
                run_tenant(
                    poller,
                    tenant.clone(),
                    routes.clone(),
                    letters.clone(),
                    stats.clone(),
                    tenant_stop.clone(),
                )
            },
        ));
    }
    tracing::info!(
        tenants = config.tenants.len(),
        destinations = config.destinations.len(),
        "running"
    );
    stop.cancelled().await;
    tracing::info!("stopping: flushing the destinations");
    while tasks.join_next().await.is_some() {}
    let routes =
        Arc::try_unwrap(routes).map_err(|_| anyhow::anyhow!("a tenant task is still running"))?;
    let mut out = Vec::new();
    let mut unflushed = Vec::new();
    for r in routes {
        let name = r.output.destination().to_string();
        match r.output.shutdown(config.shutdown_timeout).await {
            Ok(s) => out.push((name, s)),
            Err(e) => unflushed.push(e.to_string()),
        }
    }
    if !unflushed.is_empty() {
        anyhow::bail!("{}", unflushed.join("; "));
    }
    Ok(out)
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

/// One tenant's poller and handler. When one of them ends the other cannot go on (their
/// channel is closed), so it is stopped too; a panic of either is passed on to the supervisor.
async fn run_tenant(
    poller: Poller,
    tenant: Tenant,
    routes: Arc<Vec<Route>>,
    letters: Arc<DeadLetterFile>,
    stats: Arc<RunStats>,
    stop: CancellationToken,
) {
    let pair_stop = stop.child_token();
    let (tx, rx) = mpsc::channel::<Delivery>(2);
    let mut pair = tokio::task::JoinSet::new();
    pair.spawn(poller.run(tx, pair_stop.clone()));
    pair.spawn(handle(
        tenant,
        rx,
        routes,
        letters,
        stats,
        pair_stop.clone(),
    ));
    let mut panic = None;
    while let Some(ended) = pair.join_next().await {
        pair_stop.cancel();
        if let Err(e) = ended {
            if e.is_panic() && panic.is_none() {
                panic = Some(e.into_panic());
            }
        }
    }
    if let Some(p) = panic {
        std::panic::resume_unwind(p);
    }
}

/// Locks `<state_dir>/defender-bridge.lock` for as long as the returned file is open. The
/// kernel drops the lock when the process ends, however it ends, so a crash leaves no stale lock.
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
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

/// One tenant's pages: decode, send to every route that wants the alert, put what cannot be
/// forwarded in the dead-letter file, wait until written, acknowledge.
async fn handle(
    tenant: Tenant,
    mut rx: mpsc::Receiver<Delivery>,
    routes: Arc<Vec<Route>>,
    letters: Arc<DeadLetterFile>,
    stats: Arc<RunStats>,
    stop: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            _ = stop.cancelled() => return,
        };
        let Delivery { batch, ack } = delivery;
        match handle_page(&tenant, &batch, &routes, &letters, &stats, &stop).await {
            Page::Done => ack.accept(),
            // Not acknowledged: the checkpoint stays, and the page comes again.
            Page::Again => continue,
            Page::Stopped => return,
        }
    }
}

/// What became of a page.
#[derive(Debug, PartialEq, Eq)]
enum Page {
    /// Every record written and every dead letter saved: acknowledge it.
    Done,
    /// Something was not: leave it unacknowledged so that it comes again.
    Again,
    /// The daemon is stopping.
    Stopped,
}

async fn handle_page(
    tenant: &Tenant,
    batch: &AlertBatch,
    routes: &[Route],
    letters: &DeadLetterFile,
    stats: &RunStats,
    stop: &CancellationToken,
) -> Page {
    let name = &tenant.settings.name;
    let ctx = Context {
        tenant_name: Some(name),
        hostname: tenant.syslog_hostname.as_deref(),
    };
    // The cursor moves past every alert of the page, so what cannot be forwarded must be in the
    // dead-letter file before the page is acknowledged (issue 8 §12).
    let mut dead = Vec::new();
    for r in &batch.rejected {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(tenant = %name, alert = r.id.as_deref().unwrap_or("-"),
            "alert cannot be forwarded, it goes to the dead-letter file: {}", r.reason);
        dead.push(Letter {
            destination: "-",
            alert_id: r.id.as_deref(),
            last_update_date_time: None,
            tenant_name: Some(name),
            reason: r.reason.clone(),
            record: r.json.get(),
        });
    }
    let mut used = vec![false; routes.len()];
    let mut failed = false;
    for raw in &batch.alerts {
        let mut alert = match Alert::from_json(raw.json.get()) {
            Ok(a) => a,
            Err(e) => {
                stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(tenant = %name, alert = %raw.id,
                    "cannot decode alert, it goes to the dead-letter file: {e}");
                dead.push(Letter {
                    destination: "-",
                    alert_id: Some(&raw.id),
                    last_update_date_time: Some(raw.last_update.to_rfc3339()),
                    tenant_name: Some(name),
                    reason: format!("cannot decode alert: {e}"),
                    record: raw.json.get(),
                });
                continue;
            }
        };
        stats.alerts.fetch_add(1, Ordering::Relaxed);
        // The MDE API has no alert link; Graph's alertWebUrl has this form.
        if alert.alert_web_url.is_none() {
            let tid = alert
                .tenant_id
                .as_deref()
                .unwrap_or(&tenant.settings.tenant_id);
            alert.alert_web_url = Some(tenant.settings.cloud.alert_link(&alert.id, tid).into());
        }
        for (i, r) in routes.iter().enumerate() {
            if !r.destination.wants(name, &alert.severity) {
                continue;
            }
            used[i] = true;
            let sent = tokio::select! {
                s = r.output.send(&alert, &ctx) => s,
                _ = stop.cancelled() => return Page::Stopped,
            };
            if let Err(e) = sent {
                tracing::error!(tenant = %name, destination = r.output.destination(), "{e}");
                failed = true;
            }
        }
    }
    if failed {
        // Dead letters are written once the page's records were taken, so that a page that
        // comes again does not put its letters in the file twice.
        return Page::Again;
    }
    for letter in &dead {
        if let Err(e) = letters.write(letter) {
            tracing::error!(tenant = %name, dead_letter = %letters.path().display(),
                "cannot write the dead-letter file, the page is not acknowledged and comes again: {e}");
            return Page::Again;
        }
    }
    // Wait until every destination used has written what it was given.
    for (_, r) in routes.iter().enumerate().filter(|(i, _)| used[*i]) {
        loop {
            let flushed = tokio::select! {
                f = r.output.flush(Duration::from_secs(5)) => f,
                _ = stop.cancelled() => return Page::Stopped,
            };
            match flushed {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(tenant = %name, "waiting for {}: {e}", r.output.destination())
                }
            }
        }
    }
    Page::Done
}

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
        }
    }

    /// Rejected and undecodable alerts of a page are in the dead-letter file, whole, with their
    /// reasons, before the page is acknowledged.
    #[tokio::test]
    async fn what_cannot_be_forwarded_is_dead_lettered_before_the_page_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letter.ndjson");
        let letters = DeadLetterFile::open(&path).unwrap();
        let stats = RunStats::default();
        let stop = CancellationToken::new();
        let page = handle_page(&tenant(), &page(), &[], &letters, &stats, &stop).await;
        assert_eq!(page, Page::Done);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
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
            "{text}"
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

    /// A dead-letter file that cannot be written (a full disk: /dev/full) leaves the page
    /// unacknowledged, so that it comes again.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_dead_letter_write_leaves_the_page_unacknowledged() {
        let letters = DeadLetterFile::open(Path::new("/dev/full")).unwrap();
        let stop = CancellationToken::new();
        let stats = RunStats::default();
        let page = handle_page(&tenant(), &page(), &[], &letters, &stats, &stop).await;
        assert_eq!(page, Page::Again);
    }
}
