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

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::backoff::backoff;
use crate::config::{Config, Destination, Tenant};
use crate::dead_letter::Letter;
use crate::delivery::Forwarder;
use crate::output::{Output, OutputStats};
use crate::queue::{checkpoint_key, Queue, QueueStats, Record};
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
    run_with_reload(config, stop, None).await
}

/// [`run`], taking new configurations from `reloads` while it runs (SIGHUP, issue 10 §3): new
/// tenants and destinations start, removed ones stop, changed ones restart; the queue, the
/// checkpoints and the cursors stay, so nothing queued is lost. Settings of the whole daemon
/// (`state_dir`, `queue_max_bytes`, `metrics_listen`, HTTP proxy and CA, `log_level`) take
/// effect at the next start, and the log says so.
pub async fn run_with_reload(
    config: Config,
    stop: CancellationToken,
    mut reloads: Option<mpsc::Receiver<Config>>,
) -> anyhow::Result<RunReport> {
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
    // Before anything counts: a metric handle made before the recorder is a no-op for good.
    let recorder = config
        .metrics_listen
        .and_then(|_| crate::metrics::recorder());
    let queue = Queue::open(&config.state_dir, config.queue_max_bytes)?;
    migrate_checkpoints(&queue, &config)?;
    queue.attach(&cursor_names(&config))?;
    let http = build_http_client(&config.http)?;
    match crate::dead_letter::import_file(&queue, &config.dead_letter).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "{n} dead letter(s) of {} moved into the queue (the file is renamed to ….imported)",
            config.dead_letter.display()
        ),
        Err(e) => tracing::warn!("cannot import the dead-letter file of an older version: {e:#}"),
    }
    let mut running = Running::new(queue.clone(), http, &config);
    running.set_shard(&config);
    running.set_tenant_map(&config);
    // Before the tenants and destinations: it hears their first events.
    running.start_notifier(&config);
    for d in &config.destinations {
        running.start_destination(d).await?;
    }
    for t in &config.tenants {
        running.start_tenant(t);
    }
    let metrics_stop = CancellationToken::new();
    let mut metrics_task = None;
    if let Some(addr) = config.metrics_listen {
        // Delivery comes first: an endpoint that cannot be served is an error in the log,
        // not a daemon that does not run.
        match (tokio::net::TcpListener::bind(addr).await, recorder.clone()) {
            (Ok(listener), Some(handle)) => {
                tracing::info!("metrics, /healthz, /readyz and /status on http://{addr}");
                metrics_task = Some(tokio::spawn(crate::metrics::serve(
                    listener,
                    handle,
                    running.health.clone(),
                    metrics_stop.clone(),
                )));
            }
            (Err(e), _) => tracing::error!(
                "cannot serve metrics on {addr} (metrics_listen): {e}; running without them"
            ),
            (_, None) => {
                tracing::error!("cannot install the metrics recorder; running without metrics")
            }
        }
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
    let mut current = config;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            c = async {
                match reloads.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => c,
        };
        let Some(next) = next else {
            // Nobody can send a reload any more; run on.
            reloads = None;
            continue;
        };
        running.reload(&current, &next).await;
        current = next;
    }
    let deadline = tokio::time::Instant::now() + current.shutdown_timeout;
    tracing::info!("stopping: polling ends, the destinations deliver what is queued");
    // Pollers first: a page being appended finishes its transaction or is not acknowledged,
    // and either way its alerts and checkpoint are in the queue together or not at all.
    running.stop_all_tenants().await;
    running.stop_notifier().await;
    let behind = running.drain_destinations(deadline).await;
    // The endpoint holds the writers: it ends before they are shut down.
    metrics_stop.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let head = queue.stats().head;
    let mut out = Vec::new();
    let mut unflushed = Vec::new();
    let names: Vec<String> = running.destinations.keys().cloned().collect();
    for (name, output) in running.take_outputs() {
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
    let stats = running.stats.clone();
    drop(running);
    let queue_stats = queue.stats();
    let letters = queue.dead_letters().map(|l| l.len()).unwrap_or(0);
    queue.close().await;
    // The summary at stop (issue 10 §6).
    tracing::info!(
        "stopped: {} alert version(s) queued this run, {} rejected, {} undecodable; {} write \
         transaction(s); {} dead letter(s) kept",
        stats.alerts.load(Ordering::Relaxed),
        stats.rejected.load(Ordering::Relaxed),
        stats.undecodable.load(Ordering::Relaxed),
        queue_stats.commits,
        letters
    );
    for (name, s) in &out {
        tracing::info!(destination = %name,
            "delivered {} record(s) ({} bytes), {} value(s) truncated, {} dead-lettered, {} reconnect(s)",
            s.sink.messages_sent, s.sink.bytes_sent, s.truncated, s.dead_lettered, s.sink.reconnects);
    }
    unflushed.extend(behind);
    if !unflushed.is_empty() {
        anyhow::bail!("{}", unflushed.join("; "));
    }
    Ok(RunReport {
        outputs: out,
        queue: queue_stats,
    })
}

/// Moves checkpoint files of the days before the queue into it.
fn migrate_checkpoints(queue: &Queue, config: &Config) -> anyhow::Result<()> {
    for t in &config.tenants {
        let s = &t.settings;
        let key = checkpoint_key(&s.tenant_id, s.api);
        let file = Checkpoint::path(&config.state_dir, &s.tenant_id, &s.api.to_string());
        if queue.migrate_checkpoint_file(&key, &file)? {
            tracing::info!(tenant = %s.name, "checkpoint file {} moved into the queue", file.display());
        }
    }
    Ok(())
}

/// The queue cursors to keep: every destination's, and the notifier's when there are rules.
fn cursor_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
    if !config.notifications.is_empty() {
        names.push(crate::notify::CURSOR.to_string());
    }
    names
}

/// The notifier, running under its supervisor.
struct NotifierTask {
    fingerprint: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A tenant's poller, running under its supervisor.
struct TenantTask {
    fingerprint: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A destination's delivery loop and writer.
struct DestinationTask {
    fingerprint: u64,
    output: Arc<Output>,
    /// Polling has stopped: deliver what is queued, then end (the daemon's stop).
    stop: CancellationToken,
    /// Deliver what the writer holds, then end (a reload took the destination out).
    leave: CancellationToken,
    /// The deadline has passed: keep what was delivered and end now.
    out_of_time: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<u64, crate::queue::QueueError>>,
}

/// The tenants and destinations of a running daemon, started and stopped one by one.
struct Running {
    queue: Queue,
    http: reqwest::Client,
    shutdown_timeout: Duration,
    stats: Arc<RunStats>,
    tenant_map: crate::delivery::TenantMap,
    tenants: std::collections::BTreeMap<String, TenantTask>,
    destinations: std::collections::BTreeMap<String, DestinationTask>,
    health: Arc<crate::metrics::Health>,
    /// Health events: the log, and the notifier.
    events: crate::event::Events,
    notifier: Option<NotifierTask>,
    /// `max_concurrent_requests`, shared by every tenant's poller.
    request_slots: Arc<tokio::sync::Semaphore>,
    /// The threads that make the destinations' records, one per core.
    workers: crate::workers::Workers,
}

impl Running {
    fn new(queue: Queue, http: reqwest::Client, config: &Config) -> Running {
        Running {
            health: Arc::new(crate::metrics::Health {
                tenants: std::sync::Mutex::new(Vec::new()),
                destinations: std::sync::Mutex::new(Vec::new()),
                queue: queue.clone(),
                shard: std::sync::Mutex::new(None),
            }),
            queue,
            http,
            shutdown_timeout: config.shutdown_timeout,
            stats: Arc::new(RunStats::default()),
            tenant_map: crate::delivery::TenantMap::default(),
            tenants: Default::default(),
            destinations: Default::default(),
            events: crate::event::Events::new(),
            notifier: None,
            request_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
            workers: crate::workers::Workers::new(crate::workers::default_jobs()),
        }
    }

    /// Starts the notifier when the configuration has rules. It restarts after a panic: its
    /// cursor holds queued records until it has matched them.
    fn start_notifier(&mut self, config: &Config) {
        if config.notifications.is_empty() {
            return;
        }
        let stop = CancellationToken::new();
        let clouds: HashMap<String, crate::source::Cloud> = config
            .tenants
            .iter()
            .map(|t| (t.settings.name.clone(), t.settings.cloud))
            .collect();
        let (notifications, queue, http, events) = (
            config.notifications.clone(),
            self.queue.clone(),
            self.http.clone(),
            self.events.clone(),
        );
        tracing::info!(
            "notifications: {} rule(s): {}",
            notifications.rules.len(),
            notifications
                .rules
                .iter()
                .map(|r| format!(
                    "{} → {}",
                    r.name,
                    r.actions
                        .iter()
                        .map(|a| format!("{} {}", a.kind(), a.target()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        // Made here, so that it hears every event from now on, also across restarts.
        let mut notifier = Some(crate::notify::Notifier::new(
            notifications.clone(),
            queue.clone(),
            http.clone(),
            events.clone(),
            clouds.clone(),
        ));
        let task_stop = stop.clone();
        let task = tokio::spawn(supervise(
            "notifications".to_string(),
            (Duration::from_secs(1), Duration::from_secs(60)),
            stop.clone(),
            move || -> Result<crate::notify::Notifier, String> {
                Ok(notifier.take().unwrap_or_else(|| {
                    crate::notify::Notifier::new(
                        notifications.clone(),
                        queue.clone(),
                        http.clone(),
                        events.clone(),
                        clouds.clone(),
                    )
                }))
            },
            move |n: crate::notify::Notifier| n.run(task_stop.clone()),
        ));
        self.notifier = Some(NotifierTask {
            fingerprint: config.notifications.fingerprint(),
            stop,
            task,
        });
    }

    /// A HEC destination's channel: kept in the state store, so that after a restart the
    /// collector's acks for what was sent before still answer on the same channel.
    async fn hec_channel(&self, destination: &str) -> anyhow::Result<String> {
        let key = format!("hec/channel/{destination}");
        if let Some(v) = self
            .queue
            .notify_get(std::slice::from_ref(&key))?
            .pop()
            .flatten()
        {
            if let Ok(channel) = String::from_utf8(v) {
                return Ok(channel);
            }
        }
        let channel = uuid::Uuid::new_v4().to_string();
        self.queue
            .notify_commit(crate::queue::NotifyChange {
                put: vec![(key, channel.clone().into_bytes())],
                ..Default::default()
            })
            .await?;
        tracing::info!(destination = %destination, "HEC channel {channel} (kept in the state store)");
        Ok(channel)
    }

    async fn stop_notifier(&mut self) {
        if let Some(n) = self.notifier.take() {
            n.stop.cancel();
            let _ = n.task.await;
        }
    }

    /// What the delivery loops know of the tenants (syslog host names, portal links).
    fn set_tenant_map(&self, config: &Config) {
        let map: HashMap<String, Tenant> = config
            .tenants
            .iter()
            .map(|t| (t.settings.name.clone(), t.clone()))
            .collect();
        *self.tenant_map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    async fn start_destination(&mut self, d: &Destination) -> anyhow::Result<()> {
        let mut d = d.clone();
        let hec = &mut d.output.sink.hec;
        if d.output.sink.destination.transport.is_hec() && hec.indexer_ack && hec.channel.is_none()
        {
            hec.channel = Some(self.hec_channel(&d.name).await?);
        }
        let d = &d;
        let output = Arc::new(Output::build(&d.output)?);
        let progress = Arc::new(crate::metrics::Progress::default());
        lock(&self.health.destinations).push(crate::metrics::DestinationView {
            name: d.name.clone(),
            url: d.output.sink.destination.to_string(),
            output: output.clone(),
            progress: progress.clone(),
        });
        let (stop, leave) = (CancellationToken::new(), CancellationToken::new());
        let out_of_time = Arc::new(tokio::sync::Notify::new());
        let forwarder = Forwarder {
            destination: d.clone(),
            output: output.clone(),
            tenants: self.tenant_map.clone(),
            progress,
            leave: leave.clone(),
            events: self.events.clone(),
            workers: self.workers.clone(),
        };
        // Down and up, as health events (issue 11 §5).
        {
            let (mut status, events, name) = (output.status(), self.events.clone(), d.name.clone());
            let (stop, leave) = (stop.clone(), leave.clone());
            tokio::spawn(async move {
                let mut down_since: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        changed = status.changed() => if changed.is_err() { return },
                        _ = stop.cancelled() => return,
                        _ = leave.cancelled() => return,
                    }
                    let now = status.borrow_and_update().clone();
                    match now {
                        crate::sink::Status::Down { reason } if down_since.is_none() => {
                            down_since = Some(tokio::time::Instant::now());
                            events.emit(crate::event::Event::DestinationDown {
                                destination: name.clone(),
                                reason,
                            });
                        }
                        crate::sink::Status::Up { .. } => {
                            if let Some(since) = down_since.take() {
                                events.emit(crate::event::Event::DestinationUp {
                                    destination: name.clone(),
                                    down_secs: since.elapsed().as_secs(),
                                });
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        let task = tokio::spawn(forwarder.run_supervised(
            self.queue.clone(),
            stop.clone(),
            out_of_time.clone(),
        ));
        self.destinations.insert(
            d.name.clone(),
            DestinationTask {
                fingerprint: destination_fingerprint(d),
                output,
                stop,
                leave,
                out_of_time,
                task,
            },
        );
        Ok(())
    }

    /// Takes a destination out: it delivers what its writer holds (within `shutdown_timeout`),
    /// moves its cursor and closes; what it had not read stays queued.
    async fn stop_destination(&mut self, name: &str) {
        let Some(d) = self.destinations.remove(name) else {
            return;
        };
        lock(&self.health.destinations).retain(|v| v.name != name);
        d.leave.cancel();
        let mut task = d.task;
        if tokio::time::timeout(self.shutdown_timeout, &mut task)
            .await
            .is_err()
        {
            d.out_of_time.notify_waiters();
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        match Arc::try_unwrap(d.output) {
            Ok(output) => {
                if let Err(e) = output.shutdown(Duration::from_secs(5)).await {
                    tracing::warn!(destination = %name, "{e}; what it had not delivered stays queued");
                }
            }
            Err(_) => {
                tracing::warn!(destination = %name, "its writer was still in use when it was taken out")
            }
        }
    }

    fn start_tenant(&mut self, tenant: &Tenant) {
        let settings = tenant.settings.clone();
        let name = settings.name.clone();
        // One status per tenant while it is configured: a restarted poller goes on with it.
        let status = Arc::new(std::sync::Mutex::new(
            crate::source::defender::TenantStatus::default(),
        ));
        lock(&self.health.tenants).push(crate::metrics::TenantView {
            name: name.clone(),
            api: settings.api,
            poll_interval: settings.poll_interval,
            status: status.clone(),
        });
        let stop = CancellationToken::new();
        let key = checkpoint_key(&settings.tenant_id, settings.api);
        let (http, start_queue) = (self.http.clone(), self.queue.clone());
        let events = self.events.clone();
        let slots = self.request_slots.clone();
        let pages = TenantPages {
            tenant: tenant.clone(),
            queue: self.queue.clone(),
            stats: self.stats.clone(),
            stop: stop.clone(),
            events: self.events.clone(),
        };
        let tenant_stop = stop.clone();
        let task = tokio::spawn(supervise(
            name.clone(),
            (settings.backoff_base, settings.backoff_max),
            stop.clone(),
            move || -> Result<Poller, String> {
                let checkpoint = start_queue.checkpoint(&key).map_err(|e| e.to_string())?;
                let resume = match &checkpoint {
                    Some(cp) => format!("resumes from {}", cp.cursor.to_rfc3339()),
                    None => format!(
                        "has no checkpoint yet: starts {} back",
                        humantime::format_duration(settings.initial_lookback)
                    ),
                };
                let poller =
                    Poller::connect_with_checkpoint(settings.clone(), http.clone(), checkpoint)
                        .map_err(|e| e.to_string())?
                        .with_status(status.clone())
                        .with_events(events.clone())
                        .with_request_slots(slots.clone());
                // One line per tenant at start (issue 10 §6): where it signs in, what it polls,
                // and where it goes on from.
                tracing::info!(tenant = %settings.name, tenant_id = %settings.tenant_id,
                    "polling the {} API of the {} cloud (sign-in {}, API {}) every {:?}; {resume}",
                    settings.api, settings.cloud, settings.authority_host(), settings.api_base(),
                    settings.poll_interval);
                Ok(poller)
            },
            move |poller: Poller| poller.run(pages.clone(), tenant_stop.clone()),
        ));
        self.tenants.insert(
            name,
            TenantTask {
                fingerprint: tenant_fingerprint(tenant),
                stop,
                task,
            },
        );
    }

    /// Stops a tenant's poller between two requests or pages: a page being committed is in the
    /// queue with its checkpoint, or neither is.
    async fn stop_tenant(&mut self, name: &str) {
        if let Some(t) = self.tenants.remove(name) {
            t.stop.cancel();
            let _ = t.task.await;
        }
        lock(&self.health.tenants).retain(|v| v.name != name);
    }

    async fn stop_all_tenants(&mut self) {
        for t in self.tenants.values() {
            t.stop.cancel();
        }
        let names: Vec<String> = self.tenants.keys().cloned().collect();
        for name in names {
            if let Some(t) = self.tenants.remove(&name) {
                let _ = t.task.await;
            }
        }
    }

    /// The daemon's stop: every destination delivers what is queued until `deadline`; then
    /// each keeps what it delivered and ends. Returns the errors of the loops.
    async fn drain_destinations(&mut self, deadline: tokio::time::Instant) -> Vec<String> {
        for d in self.destinations.values() {
            d.stop.cancel();
        }
        let mut behind = Vec::new();
        for d in self.destinations.values_mut() {
            let finished = tokio::time::timeout_at(deadline, &mut d.task).await;
            match finished {
                Ok(r) => collect_delivery(r, &mut behind),
                Err(_) => {
                    // Out of time: each loop keeps what was delivered; the rest stays queued.
                    d.out_of_time.notify_waiters();
                    match tokio::time::timeout(Duration::from_secs(5), &mut d.task).await {
                        Ok(r) => collect_delivery(r, &mut behind),
                        // A loop stuck in its last cursor write: what it delivered since its
                        // last write is sent again at the next start (at-least-once).
                        Err(_) => d.task.abort(),
                    }
                }
            }
        }
        behind
    }

    /// The writers, once their loops have ended, for the final flush.
    fn take_outputs(&mut self) -> Vec<(String, Arc<Output>)> {
        lock(&self.health.destinations).clear();
        std::mem::take(&mut self.destinations)
            .into_iter()
            .map(|(name, d)| (name, d.output))
            .collect()
    }

    /// Moves from `old` to `new` (a configuration that has been validated): destinations
    /// first, so that a new tenant's alerts have their destinations.
    fn set_shard(&self, config: &Config) {
        *self.health.shard.lock().unwrap_or_else(|p| p.into_inner()) =
            config.shard.map(|s| (s, config.tenants_in_file));
    }

    async fn reload(&mut self, old: &Config, new: &Config) {
        self.set_shard(new);
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        for (what, changed) in [
            ("state_dir", old.state_dir != new.state_dir),
            (
                "queue_max_bytes",
                old.queue_max_bytes != new.queue_max_bytes,
            ),
            (
                "max_concurrent_requests",
                old.max_concurrent_requests != new.max_concurrent_requests,
            ),
            ("metrics_listen", old.metrics_listen != new.metrics_listen),
            (
                "the HTTP settings (proxy, ca_file)",
                format!("{:?}", old.http) != format!("{:?}", new.http),
            ),
            ("log_level", old.log_level != new.log_level),
        ] {
            if changed {
                tracing::warn!("reload: a new {what} takes effect at the next restart");
            }
        }
        self.shutdown_timeout = new.shutdown_timeout;
        let (mut started, mut stopped, mut restarted) = (0, 0, 0);
        // Build the new and changed writers before anything stops: one that cannot be built
        // (a format file that went missing) leaves the old one running.
        let wanted: HashMap<&str, &Destination> = new
            .destinations
            .iter()
            .map(|d| (d.name.as_str(), d))
            .collect();
        let gone: Vec<String> = self
            .destinations
            .iter()
            .filter(|(name, d)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|w| destination_fingerprint(w) != d.fingerprint)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            let restart = wanted.get(name.as_str()).copied();
            if let Some(d) = restart {
                if let Err(e) = Output::build(&d.output) {
                    tracing::error!(destination = %name, "reload: the changed destination cannot start, the old one goes on: {e}");
                    continue;
                }
            }
            self.stop_destination(name).await;
            if restart.is_some() {
                restarted += 1;
            } else {
                stopped += 1;
                tracing::info!(destination = %name, "reload: destination removed");
            }
        }
        // Cursors: a new destination starts at the head, a removed one's is dropped.
        if let Err(e) = self.queue.attach(&cursor_names(new)) {
            tracing::error!("reload: cannot update the destinations' cursors: {e}");
        }
        self.set_tenant_map(new);
        for d in &new.destinations {
            if self.destinations.contains_key(&d.name) {
                continue;
            }
            match self.start_destination(d).await {
                Ok(()) if gone.contains(&d.name) => {
                    tracing::info!(destination = %d.name, "reload: destination restarted with its new settings")
                }
                Ok(()) => {
                    started += 1;
                    tracing::info!(destination = %d.name, "reload: destination added");
                }
                Err(e) => {
                    tracing::error!(destination = %d.name, "reload: the destination cannot start: {e}")
                }
            }
        }
        let wanted: HashMap<&str, &Tenant> = new
            .tenants
            .iter()
            .map(|t| (t.settings.name.as_str(), t))
            .collect();
        let gone: Vec<String> = self
            .tenants
            .iter()
            .filter(|(name, t)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|w| tenant_fingerprint(w) != t.fingerprint)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.stop_tenant(name).await;
            if wanted.contains_key(name.as_str()) {
                restarted += 1;
                tracing::info!(tenant = %name, "reload: tenant restarted with its new settings");
            } else {
                stopped += 1;
                tracing::info!(tenant = %name, "reload: tenant removed (its checkpoint stays in the queue)");
            }
        }
        if let Err(e) = migrate_checkpoints(&self.queue, new) {
            tracing::warn!("reload: {e:#}");
        }
        for t in &new.tenants {
            if !self.tenants.contains_key(&t.settings.name) {
                if !gone.contains(&t.settings.name) {
                    started += 1;
                    tracing::info!(tenant = %t.settings.name, "reload: tenant added");
                }
                self.start_tenant(t);
            }
        }
        let notify_changed = self.notifier.as_ref().map(|n| n.fingerprint)
            != (!new.notifications.is_empty()).then(|| new.notifications.fingerprint());
        if notify_changed {
            self.stop_notifier().await;
            self.start_notifier(new);
            tracing::info!("reload: notification rules changed; their pending digests stay");
        }
        tracing::info!(
            "configuration reloaded: {started} started, {stopped} stopped, {restarted} restarted; {} tenant(s), {} destination(s)",
            self.tenants.len(),
            self.destinations.len()
        );
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What makes a tenant "changed" on reload: every setting, its secret's value and the
/// content of its certificate files (a rotated file is a change), hashed in memory only.
fn tenant_fingerprint(t: &Tenant) -> u64 {
    use crate::source::Credential;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{t:?}").hash(&mut h);
    match &t.settings.credential {
        Credential::Secret(s) => s.expose().hash(&mut h),
        Credential::CertificatePem { cert, key } => {
            std::fs::read(cert).ok().hash(&mut h);
            key.as_ref().map(|k| std::fs::read(k).ok()).hash(&mut h);
        }
        Credential::CertificatePfx { path, password } => {
            std::fs::read(path).ok().hash(&mut h);
            password
                .as_ref()
                .map(|p| p.expose().to_string())
                .hash(&mut h);
        }
    }
    h.finish()
}

/// What makes a destination "changed" on reload: its settings, with its tenant filter in a
/// stable order, and the content of a format file it names.
fn destination_fingerprint(d: &Destination) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", d.output).hash(&mut h);
    format!("{:?}", d.min_severity).hash(&mut h);
    let mut tenants: Option<Vec<&String>> = d.tenants.as_ref().map(|t| t.iter().collect());
    if let Some(t) = tenants.as_mut() {
        t.sort();
    }
    tenants.hash(&mut h);
    std::fs::read(&d.output.format).ok().hash(&mut h);
    h.finish()
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
    events: crate::event::Events,
}

impl PageSink for TenantPages {
    async fn accept(&self, batch: AlertBatch) -> Result<(), Refused> {
        match handle_page(
            &self.tenant,
            batch,
            &self.queue,
            &self.stats,
            &self.stop,
            &self.events,
        )
        .await
        {
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
    events: &crate::event::Events,
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
    let first_reason = dead.first().map(|l| l.reason.clone());
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
                if !dead.is_empty() {
                    events.emit(crate::event::Event::DeadLettered {
                        source: format!("tenant {name}"),
                        count: dead.len() as u64,
                        reason: first_reason.clone().unwrap_or_default(),
                    });
                }
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
        let page = handle_page(
            &tenant(),
            page(),
            &queue,
            &stats,
            &stop,
            &crate::event::Events::new(),
        )
        .await;
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
