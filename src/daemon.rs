//! `run`: every tenant polled, every alert version formatted for and sent to every destination
//! that wants it.
//!
//! One poller task and one handler task per tenant, so that a failing or slow tenant never
//! delays another (peers.md §7.4). A handler decodes each page, queues its records on every
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
        let poller = match Poller::connect(tenant.settings.clone(), http.clone(), &config.state_dir)
        {
            Ok(p) => p,
            Err(e) => {
                // A tenant that cannot even start (a certificate file missing) is reported and
                // skipped; the others run.
                tracing::error!(tenant = %tenant.settings.name, "cannot start polling: {e}");
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<Delivery>(2);
        tasks.spawn(poller.run(tx, stop.child_token()));
        tasks.spawn(handle(
            tenant.clone(),
            rx,
            routes.clone(),
            letters.clone(),
            stats.clone(),
            stop.child_token(),
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
