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
use crate::source::{build_http_client, Checkpoint, Delivery, Poller};

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
    let undecodable_letters = match config
        .destinations
        .iter()
        .find_map(|d| d.output.dead_letter.clone())
    {
        Some(path) => Some(Arc::new(DeadLetterFile::open(&path).map_err(|e| {
            anyhow::anyhow!("dead-letter file {}: {e}", path.display())
        })?)),
        None => None,
    };
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
            undecodable_letters.clone(),
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

/// One tenant's pages: decode, send to every route that wants the alert, wait until written,
/// acknowledge.
async fn handle(
    tenant: Tenant,
    mut rx: mpsc::Receiver<Delivery>,
    routes: Arc<Vec<Route>>,
    letters: Option<Arc<DeadLetterFile>>,
    stats: Arc<RunStats>,
    stop: CancellationToken,
) {
    let name = tenant.settings.name.clone();
    let ctx = Context {
        tenant_name: Some(&name),
        hostname: tenant.syslog_hostname.as_deref(),
    };
    loop {
        let delivery = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            _ = stop.cancelled() => return,
        };
        let Delivery { batch, ack } = delivery;
        let mut used = vec![false; routes.len()];
        let mut failed = false;
        for raw in &batch.alerts {
            let mut alert = match Alert::from_json(raw.json.get()) {
                Ok(a) => a,
                Err(e) => {
                    // Never lost: an alert that does not decode goes to the dead-letter file.
                    stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(tenant = %name, alert = %raw.id, "cannot decode alert: {e}");
                    if let Some(l) = &letters {
                        let _ = l.write(&Letter {
                            destination: "-",
                            alert_id: &raw.id,
                            last_update_date_time: Some(raw.last_update.to_rfc3339()),
                            tenant_name: Some(&name),
                            reason: format!("cannot decode alert: {e}"),
                            record: raw.json.get(),
                        });
                    }
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
                if !r.destination.wants(&name, &alert.severity) {
                    continue;
                }
                used[i] = true;
                let sent = tokio::select! {
                    s = r.output.send(&alert, &ctx) => s,
                    _ = stop.cancelled() => return,
                };
                if let Err(e) = sent {
                    tracing::error!(tenant = %name, destination = r.output.destination(), "{e}");
                    failed = true;
                }
            }
        }
        if failed {
            // Not acknowledged: the checkpoint stays, and the page comes again.
            continue;
        }
        // Wait until every destination used has written what it was given.
        for (_, r) in routes.iter().enumerate().filter(|(i, _)| used[*i]) {
            loop {
                let flushed = tokio::select! {
                    f = r.output.flush(Duration::from_secs(5)) => f,
                    _ = stop.cancelled() => return,
                };
                match flushed {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(tenant = %name, "waiting for {}: {e}", r.output.destination())
                    }
                }
            }
        }
        ack.accept();
    }
}
