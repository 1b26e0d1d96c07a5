//! The alert poller of one tenant: Graph `security/alerts_v2` or MDE `/api/alerts`.
//!
//! Each poll covers `[cursor - overlap, now)`. Pages go to the caller as [`AlertBatch`]es through
//! a channel; the checkpoint advances only after the caller accepted a batch (issue 4 §4), so a
//! crash can at most re-send the batch that was in flight. Rules and where they come from:
//! - Graph pages are ordered by `lastUpdateDateTime asc` (defender-api.md §3.1, peers.md §7.2),
//!   with `Prefer: include-unknown-enum-members`. While `@odata.nextLink` says there is more,
//!   the next page is asked from the newest instant seen (time-boundary paging, immune to
//!   results shifting under an offset); the nextLink itself is followed only through an instant
//!   that fills a whole page.
//!   Every page's order is checked: alerts_v2 does not document `$orderby` (delivery.md §5), and
//!   a server that ignores it has each window paged to its end by nextLink instead.
//! - MDE pages a window with `$skip` and never relies on nextLink, which MDE does not return
//!   reliably (defender-api.md §1.4); pages overlap by a tenth so that alerts leaving the result
//!   set while it is paged cannot shift one past us. A poll costs about one request per
//!   `0.9 × page_size` alerts in its window (issue 8 §2).
//! - A window ends at the API's clock (its `Date` header), not the local one (issue 8 §9). A
//!   short page ends a window only once the server has shown it fills pages to `$top`
//!   (issue 8 §10). A repeated nextLink, an ignored `$skip`, bodies over a limit and endless
//!   paging are errors, not loops (issue 8 §11).
//! - Windows start with `ge` and are de-duplicated by (id, lastUpdate), so alerts sharing one
//!   timestamp are never lost at a page boundary (peers.md §6, demisto PR 45413).
//! - 429 waits exactly Retry-After (defender-api.md §1.5), at most [`MAX_RETRY_AFTER`]; 5xx,
//!   timeouts and resets back off exponentially with jitter; a 401 renews the token once.
//! - A batch changes the checkpoint only once the receiver has accepted it, so a failed poll
//!   resumes from what was accepted, never from a fresh state (issue 8 §7).
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, EntraTokenProvider, TokenProvider};
use super::checkpoint::{AlertState, Checkpoint, CheckpointError};
use super::ratelimit::RateLimiter;
use super::tenant::{Api, TenantSettings, UpdatePolicy};
use crate::backoff::backoff;
use crate::http_body::{one_line, read_head, read_limited, BodyError};

/// Transient failures (5xx, timeouts, resets) retried inside one request before the poll fails
/// and the poll-level backoff takes over.
const REQUEST_ATTEMPTS: u32 = 3;
/// 429s tolerated for one request (each waited out) before the poll gives up for now.
const MAX_THROTTLED: u32 = 10;
/// Retry-After missing on a 429: wait a minute, the period of every documented limit.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest Retry-After obeyed: the documented limits reset within a minute or an hour, and a
/// broken value must not park a tenant for days (issue 8 §11).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);
/// Largest error body read, for the message.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Requests one poll may make before it stops: a server that never says "no more".
const MAX_REQUESTS_PER_POLL: u32 = 2_000;
/// Clocks further apart than this are logged.
const CLOCK_WARN_SECS: i64 = 60;
/// Clock differences up to this are not corrected (see `Poller::server_now`).
const CLOCK_TOLERANCE_SECS: i64 = 5;

/// One alert as the API returned it.
#[derive(Debug)]
pub struct RawAlert {
    pub id: String,
    /// `lastUpdateDateTime` (Graph) or `lastUpdateTime` (MDE).
    pub last_update: DateTime<Utc>,
    /// The alert object exactly as received.
    pub json: Box<RawValue>,
}

/// A page of alerts of one tenant, ready to be queued.
#[derive(Debug)]
pub struct AlertBatch {
    pub tenant_name: String,
    pub tenant_id: String,
    pub api: Api,
    pub alerts: Vec<RawAlert>,
    /// Alerts of the page that cannot be forwarded (no id, no readable lastUpdate time). The
    /// receiver must put them in the dead-letter file before it accepts the batch: the cursor
    /// moves past them, so the dead-letter file is the only place they are kept (issue 8 §12).
    pub rejected: Vec<RejectedAlert>,
    /// The tenant's cursor once this batch is accepted.
    pub cursor_after: DateTime<Utc>,
    /// The tenant's whole checkpoint once this batch is accepted, for a receiver that stores it
    /// with the alerts in one transaction (the durable queue); `None` when the poller saves its
    /// own checkpoint file.
    pub checkpoint: Option<Checkpoint>,
}

/// An alert object of a page that cannot be forwarded, kept whole for the dead-letter file.
#[derive(Debug)]
pub struct RejectedAlert {
    /// The alert's id, when it has one.
    pub id: Option<String>,
    /// Why it cannot be forwarded.
    pub reason: String,
    /// The alert object exactly as received.
    pub json: Box<RawValue>,
}

/// Where a poller's pages go: the seam between polling and delivery. In the daemon it is the
/// tenant's side of the durable queue (a page and the checkpoint after it in one transaction);
/// in tests, a recorder. [`PageSink::accept`] returns once the page is safe, and only then does
/// the poller's state move past it; a refused page comes again with the next poll.
pub trait PageSink: Send + Sync {
    fn accept(&self, batch: AlertBatch) -> impl Future<Output = Result<(), Refused>> + Send;
}

/// Why a page was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not this time: the poller keeps its state and polls the page again later.
    Again,
    /// The receiver has stopped: so does the poller.
    Closed,
}

impl From<Refused> for PollError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Again => PollError::NotAccepted,
            Refused::Closed => PollError::Closed,
        }
    }
}

#[derive(Debug, Error)]
pub enum PollError {
    #[error("sign-in failed: {0}")]
    Auth(#[from] AuthError),
    #[error("the API rejected a fresh token (HTTP 401): {0}")]
    Unauthorized(String),
    #[error("access denied (HTTP 403): the app lacks {permission} in this tenant, or consent was revoked: {detail}")]
    Forbidden {
        permission: &'static str,
        detail: String,
    },
    #[error("the API answered HTTP {status}: {detail}")]
    Api { status: u16, detail: String },
    #[error("the API kept answering 429 (throttled) {0} times in a row")]
    Throttled(u32),
    #[error("cannot reach the API: {0}")]
    Transport(String),
    #[error("unexpected API response: {0}")]
    BadResponse(String),
    #[error("the API sent a response larger than {0} bytes; asking for smaller pages next time")]
    TooLarge(usize),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the page was not accepted; it is polled again")]
    NotAccepted,
    /// The alerts were delivered, but the checkpoint file could not be written (a full disk, a
    /// read-only state directory, no file descriptors left). The poller keeps what it
    /// delivered in memory, so nothing is sent twice, and saves again at the next poll.
    #[error("alerts were delivered but the checkpoint could not be saved (saved again at the next poll): {0}")]
    Unsaved(CheckpointError),
    #[error("the receiver has shut down")]
    Closed,
}

impl PollError {
    /// Errors that retrying in a few seconds will not fix (bad secret, no consent, bad config):
    /// retried at the longest backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            PollError::Auth(e) => e.is_permanent(),
            PollError::Unauthorized(_) | PollError::Forbidden { .. } => true,
            PollError::Api { status, .. } => (400..500).contains(status),
            _ => false,
        }
    }
}

/// What one successful poll did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStats {
    /// HTTP requests sent to the alert API, retries included.
    pub requests: u32,
    pub received: usize,
    pub forwarded: usize,
    /// Alert objects handed over as rejected (for the dead-letter file).
    pub rejected: usize,
    /// Time spent waiting for the tenant's own rate limiter.
    pub rate_limited: Duration,
}

/// Health of a tenant, readable while [`Poller::run`] runs (for `check`, metrics and tests).
#[derive(Clone, Debug, Default)]
pub struct TenantStatus {
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub forwarded: u64,
    /// Alert objects that could not be forwarded and went to the dead-letter file.
    pub rejected: u64,
    /// How far the cursor was behind the API's clock after the last successful poll.
    pub behind: Duration,
    /// `behind` is more than one poll interval.
    pub lagging: bool,
    /// The last poll waited more than a quarter of the interval for the rate limiter.
    pub rate_limited: bool,
    /// API clock minus local clock, as the last `Date` header said.
    pub clock_offset: Option<chrono::Duration>,
    /// Responses refused for their size.
    pub oversized_responses: u64,
}

/// Polls one tenant.
pub struct Poller {
    settings: Arc<TenantSettings>,
    http: reqwest::Client,
    tokens: Arc<dyn TokenProvider>,
    limiter: RateLimiter,
    persist: Persist,
    /// The committed state: what the receiver has accepted. A batch changes it only once it is
    /// accepted, so a failed poll leaves nothing to roll back (issue 8 §7).
    state: Checkpoint,
    /// The last save failed after the destinations had accepted the alerts: the in-memory
    /// state is ahead of the file and is saved again at the next poll.
    unsaved: bool,
    server: ServerView,
    /// HTTP requests sent and time spent waiting for the rate limiter, since start.
    requests: AtomicU32,
    limited_micros: AtomicU64,
    /// `requests` when the current poll started.
    poll_started_at: u32,
    /// The next request's rate-limiter token was taken already (see `poll_once`).
    prepaid: AtomicBool,
    status: Arc<Mutex<TenantStatus>>,
    /// When the credential's expiry was last looked at (once a day).
    expiry_checked: Option<tokio::time::Instant>,
    /// Where poll failures, recoveries and expiry warnings go (the log and the notifier).
    events: crate::event::Events,
    /// The daemon's bound on HTTP requests in flight, shared by every tenant
    /// (`max_concurrent_requests`): see [`Poller::with_request_slots`].
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// How long before a certificate or secret expires the log starts warning (issue 10 §7).
const EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(30);

/// Who keeps the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Persist {
    /// The poller saves it to this file after each accepted batch (`Poller::connect`).
    File(PathBuf),
    /// The receiver stores it with the batch's alerts, in one transaction (the durable queue):
    /// every change goes out as a batch, with [`AlertBatch::checkpoint`].
    Receiver,
}

/// What this poller has learned about its API server while talking to it.
#[derive(Debug, Default)]
struct ServerView {
    /// Server time minus local time, from the last response's `Date` header.
    clock_offset: Option<chrono::Duration>,
    /// A page as long as the `$top` asked was seen: a shorter page ends its window.
    honours_top: bool,
    /// The server returned a short page and then more: it caps pages at this length.
    page_cap: Option<usize>,
    /// Graph: a page was not in `lastUpdateDateTime` order, so `$orderby` is not honoured.
    unordered: bool,
    /// `$top` halved after a response too large to read.
    top_limit: Option<usize>,
}

/// A page as both APIs return it, and the server's clock when it answered.
#[derive(Deserialize)]
struct Page {
    value: Vec<Box<RawValue>>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(skip)]
    date: Option<DateTime<Utc>>,
}

/// The few fields the poller reads from each alert; everything else passes through untouched.
#[derive(Deserialize)]
struct AlertHead {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "lastUpdateDateTime", alias = "lastUpdateTime", default)]
    last_update: Option<String>,
    #[serde(rename = "createdDateTime", alias = "alertCreationTime", default)]
    created: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    classification: Option<String>,
    #[serde(default)]
    determination: Option<String>,
}

/// A page split into what can be forwarded and what cannot.
struct Parsed {
    alerts: Vec<(RawAlert, AlertState)>,
    rejected: Vec<RejectedAlert>,
    newest: Option<DateTime<Utc>>,
    /// The page's times never go down.
    ascending: bool,
}

impl Poller {
    /// A poller for `settings` with its own Entra credential.
    pub fn connect(
        settings: TenantSettings,
        http: reqwest::Client,
        state_dir: &Path,
    ) -> Result<Self, PollError> {
        let tokens = Arc::new(EntraTokenProvider::new(&settings, http.clone())?);
        Self::new(settings, http, tokens, state_dir)
    }

    /// A poller whose receiver keeps the checkpoint (the durable queue: each batch carries the
    /// checkpoint after it, and the receiver stores both in one transaction). Starts from
    /// `checkpoint`, or at now minus the initial look-back.
    pub fn connect_with_checkpoint(
        settings: TenantSettings,
        http: reqwest::Client,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Self, PollError> {
        let tokens = Arc::new(EntraTokenProvider::new(&settings, http.clone())?);
        Ok(Self::build(
            settings,
            http,
            tokens,
            checkpoint,
            Persist::Receiver,
        ))
    }

    /// A poller using `tokens`; loads the checkpoint from `state_dir` or starts at now minus
    /// the initial look-back, and saves it there after each accepted batch.
    pub fn new(
        settings: TenantSettings,
        http: reqwest::Client,
        tokens: Arc<dyn TokenProvider>,
        state_dir: &Path,
    ) -> Result<Self, PollError> {
        let api = settings.api.to_string();
        let path = Checkpoint::path(state_dir, &settings.tenant_id, &api);
        let checkpoint = Checkpoint::load(&path)?;
        Ok(Self::build(
            settings,
            http,
            tokens,
            checkpoint,
            Persist::File(path),
        ))
    }

    fn build(
        settings: TenantSettings,
        http: reqwest::Client,
        tokens: Arc<dyn TokenProvider>,
        checkpoint: Option<Checkpoint>,
        persist: Persist,
    ) -> Self {
        let state = checkpoint.unwrap_or_else(|| {
            Checkpoint::fresh(
                &settings.tenant_id,
                &settings.api.to_string(),
                before(Utc::now(), settings.initial_lookback),
            )
        });
        Poller {
            limiter: RateLimiter::new(&settings.rate_limits()),
            settings: Arc::new(settings),
            http,
            tokens,
            persist,
            state,
            unsaved: false,
            server: ServerView::default(),
            requests: AtomicU32::new(0),
            limited_micros: AtomicU64::new(0),
            poll_started_at: 0,
            prepaid: AtomicBool::new(false),
            status: Arc::default(),
            expiry_checked: None,
            events: crate::event::Events::new(),
            slots: None,
        }
    }

    pub fn settings(&self) -> &TenantSettings {
        &self.settings
    }

    /// The committed state (what is on disk after the last accepted batch).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.state
    }

    /// The API's clock minus the local one, from the last `Date` header seen.
    pub fn clock_offset(&self) -> Option<chrono::Duration> {
        self.server.clock_offset
    }

    /// Keeps the tenant's health in `status` (shared with the daemon's health endpoints, and
    /// kept across a restart of the poller).
    pub fn with_status(mut self, status: Arc<Mutex<TenantStatus>>) -> Self {
        self.status = status;
        self
    }

    /// Sends the tenant's health events (poll failures, recoveries, expiring credentials) to
    /// `events` rather than only to the log.
    pub fn with_events(mut self, events: crate::event::Events) -> Self {
        self.events = events;
        self
    }

    /// Shares `slots` with the other tenants: each sign-in and each API request (sent and its
    /// body read) holds one, and nothing else does (rate-limiter waits, Retry-After waits and
    /// the queue's back-pressure hold none, so a throttled tenant delays no other). Every
    /// request in flight keeps a pooled connection and its TLS buffers: without a bound, the
    /// first sweep of 10,000 tenants had 10,000 in flight at once (README "Performance").
    pub fn with_request_slots(mut self, slots: Arc<tokio::sync::Semaphore>) -> Self {
        self.slots = Some(slots);
        self
    }

    /// A slot of [`Poller::with_request_slots`], `None` when unbounded (or closed, which
    /// nothing does).
    async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.slots {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// The tenant's token, signing in (within a slot) when the cached one will not do.
    async fn token(&self) -> Result<azure_core::credentials::AccessToken, AuthError> {
        let _slot = self.slot().await;
        self.tokens.token().await
    }

    /// A handle on the tenant's health, updated by [`Poller::run`].
    pub fn status(&self) -> Arc<Mutex<TenantStatus>> {
        self.status.clone()
    }

    /// Polls until `shutdown`, one poll per `poll_interval` (counted from the start of one poll to
    /// the start of the next, so a slow poll does not push the schedule) and backing off after
    /// failures. Errors are logged with the tenant's name and never stop the loop; only a closed
    /// channel or `shutdown` does.
    pub async fn run<P: PageSink>(mut self, pages: P, shutdown: CancellationToken) {
        let name = self.settings.name.clone();
        let mut failures: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            if self
                .expiry_checked
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(24 * 3600))
            {
                self.expiry_checked = Some(started);
                self.check_expiry();
            }
            let result = tokio::select! {
                r = self.poll_once(&pages) => r,
                _ = shutdown.cancelled() => return,
            };
            let delay = match result {
                Ok(stats) => {
                    if failures > 0 {
                        self.events.emit(crate::event::Event::PollRecovered {
                            tenant: name.clone(),
                            failures,
                        });
                    }
                    failures = 0;
                    tracing::debug!(tenant = %name, ?stats, "poll done");
                    self.report_lag(&stats);
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_success = Some(Utc::now());
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    s.forwarded += stats.forwarded as u64;
                    s.rejected += stats.rejected as u64;
                    self.settings
                        .poll_interval
                        .saturating_sub(started.elapsed())
                }
                Err(PollError::Closed) => return,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = if e.is_permanent() {
                        self.settings.backoff_max
                    } else {
                        backoff(
                            self.settings.backoff_base,
                            self.settings.backoff_max,
                            failures,
                        )
                    };
                    self.events.emit(crate::event::Event::PollFailed {
                        tenant: name.clone(),
                        failures,
                        retry_in_secs: delay.as_secs(),
                        reason: e.to_string(),
                    });
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_error = Some(e.to_string());
                    s.consecutive_failures = failures;
                    if matches!(e, PollError::TooLarge(_)) {
                        s.oversized_responses += 1;
                    }
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Warns, from 30 days before, that the tenant's certificate or client secret expires
    /// (an error once it has), and keeps the expiry as a metric.
    fn check_expiry(&self) {
        let Some(expires) = self.tokens.credential_expiry() else {
            return;
        };
        let s = &self.settings;
        metrics::gauge!("defender_bridge_credential_expiry_timestamp_seconds", "tenant" => s.name.clone())
            .set(expires.timestamp() as f64);
        let what = match s.credential {
            super::tenant::Credential::Secret(_) => "client secret",
            _ => "certificate",
        };
        if expires - Utc::now() <= EXPIRY_WARNING {
            self.events.emit(crate::event::Event::CredentialExpiring {
                tenant: s.name.clone(),
                what: what.to_string(),
                client_id: s.client_id.clone(),
                expires,
            });
        }
    }

    /// After a successful poll: a warning when the tenant's cursor is more than one poll
    /// interval behind the API's clock, and a note when it has caught up (issue 8 §4).
    fn report_lag(&self, stats: &PollStats) {
        let behind = (self.server_now() - self.state.cursor)
            .to_std()
            .unwrap_or_default();
        let lagging = behind > self.settings.poll_interval;
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match (s.lagging, lagging) {
            (false, true) => tracing::warn!(
                tenant = %self.settings.name,
                "tenant is {:.1}s behind (more than the poll interval of {:?}): the last poll took {} \
                 requests and waited {:.1}s for the tenant's own rate limiter",
                behind.as_secs_f64(),
                self.settings.poll_interval,
                stats.requests,
                stats.rate_limited.as_secs_f64()
            ),
            (true, false) => tracing::info!(
                tenant = %self.settings.name,
                "tenant has caught up ({:.1}s behind)",
                behind.as_secs_f64()
            ),
            _ => {}
        }
        // Paused by its own rate limiter for more than a quarter of the interval: not behind
        // yet, but the API's budget is what sets this tenant's pace (a catch-up, a burst).
        let limited = stats.rate_limited > self.settings.poll_interval / 4;
        if limited && !s.rate_limited && !lagging {
            tracing::warn!(
                tenant = %self.settings.name,
                "polling waited {:.1}s for the tenant's rate limiter ({} requests in the last poll; {} allows {}): alerts come in at the API's pace",
                stats.rate_limited.as_secs_f64(),
                stats.requests,
                self.settings.api,
                match self.settings.api {
                    Api::Graph => "150 a minute",
                    Api::Mde => "100 a minute and 1,500 an hour",
                }
            );
        }
        s.rate_limited = limited;
        s.lagging = lagging;
        s.behind = behind;
        s.clock_offset = self.server.clock_offset;
    }

    /// One complete poll from the checkpoint to now. On error the state stays at what the
    /// receiver accepted, so the next poll resumes from there.
    pub async fn poll_once<P: PageSink>(&mut self, pages: &P) -> Result<PollStats, PollError> {
        let mut stats = PollStats::default();
        let requests = self.requests.load(Ordering::Relaxed);
        self.poll_started_at = requests;
        let limited = self.limited_micros.load(Ordering::Relaxed);
        // Sign in first: a failed sign-in costs none of the API's budget and shows at once.
        self.token().await?;
        // Wait for the rate limiter before the window is drawn, not after: a window that ends
        // where the wait began misses every version that lived only during the wait (it is
        // replaced before the next window), and a tenant held by its limiter would miss many.
        let waited = self.limiter.acquire().await;
        self.limited_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.prepaid.store(true, Ordering::Relaxed);
        let result = match self.settings.api {
            Api::Graph => self.poll_graph(pages, &mut stats).await,
            Api::Mde => self.poll_mde(pages, &mut stats).await,
        };
        stats.requests = self.requests.load(Ordering::Relaxed) - requests;
        stats.rate_limited =
            Duration::from_micros(self.limited_micros.load(Ordering::Relaxed) - limited);
        result.map(|()| stats)
    }

    /// Reads the first page of the current window without forwarding anything or moving the
    /// checkpoint (`check --online`). Returns the number of alerts on it.
    pub async fn probe(&self) -> Result<usize, PollError> {
        let (lo, hi) = self.window();
        let url = match self.settings.api {
            Api::Graph => self.graph_url(lo, hi),
            Api::Mde => self.mde_url(lo, hi, 0),
        };
        Ok(self.get_page(&url).await?.value.len())
    }

    /// Local time corrected by the API's clock, as far as its `Date` headers tell. Offsets
    /// within [`CLOCK_TOLERANCE_SECS`] are left alone: `Date` has whole seconds, and the overlap
    /// covers a skew that small anyway.
    fn server_now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        self.server
            .clock_offset
            .filter(|o| o.num_seconds().abs() > CLOCK_TOLERANCE_SECS)
            .and_then(|o| now.checked_add_signed(o))
            .unwrap_or(now)
    }

    /// `[cursor - overlap, now)` in the API's time: a local clock ahead of Microsoft's would
    /// otherwise move the cursor past alerts not yet written (issue 8 §9).
    fn window(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let lo = floor_tick(before(self.state.cursor, self.settings.overlap));
        let hi = floor_tick(self.server_now()).max(lo + chrono::Duration::microseconds(1));
        (lo, hi)
    }

    /// The cursor once a window is complete: its end, but never past the API's clock at the
    /// last answer (the first poll's window is built before any `Date` header was seen).
    fn complete_at(&self, hi: DateTime<Utc>, date: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let skewed =
            |d: &DateTime<Utc>| (*d - Utc::now()).num_seconds().abs() > CLOCK_TOLERANCE_SECS;
        let end = date.filter(skewed).map_or(hi, |d| hi.min(floor_tick(d)));
        end.max(self.state.cursor)
    }

    /// Notes the API's clock from a response's `Date`, warning when it and the local clock
    /// differ by more than a minute.
    fn observe_clock(&mut self, date: Option<DateTime<Utc>>) {
        let Some(date) = date else { return };
        // `Date` has whole seconds, truncated: the offset errs on the late side, which only
        // ends windows a little early.
        let offset = date - Utc::now();
        let limit = chrono::Duration::seconds(CLOCK_WARN_SECS);
        let was_off = self.server.clock_offset.is_some_and(|o| o.abs() > limit);
        let off = offset.abs() > limit;
        if off && !was_off {
            tracing::warn!(tenant = %self.settings.name,
                "the local clock differs from the API's by {}s (local is {}); windows follow \
                 the API's clock, but check NTP on this machine",
                offset.num_seconds().abs(),
                if offset < chrono::Duration::zero() { "ahead" } else { "behind" });
        } else if was_off && !off {
            tracing::info!(tenant = %self.settings.name, "the local clock agrees with the API's again");
        }
        self.server.clock_offset = Some(offset);
    }

    /// `$top` for this API: the configured size within the API's maximum, halved after a page
    /// too large to read.
    fn top(&self) -> usize {
        let top = self.settings.page_size() as usize;
        self.server.top_limit.map_or(top, |l| top.min(l)).max(1)
    }

    /// GET a page and learn the server's clock from it; a page too large to read halves `$top`
    /// for the following requests.
    async fn fetch(&mut self, url: &str) -> Result<Page, PollError> {
        match self.get_page(url).await {
            Ok(page) => {
                self.observe_clock(page.date);
                Ok(page)
            }
            Err(e @ PollError::TooLarge(_)) => {
                let half = (self.top() / 2).max(1);
                tracing::warn!(tenant = %self.settings.name,
                    "a page was too large to read; asking for {half} alerts a page from now on");
                self.server.top_limit = Some(half);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Graph, time-boundary paging (module header): while `@odata.nextLink` says there is more,
    /// ask again from the newest instant seen. A server that does not honour `$orderby` has the
    /// window paged by its links to the end instead, and the cursor moves only then
    /// (issue 8 §8).
    async fn poll_graph<P: PageSink>(
        &mut self,
        pages: &P,
        stats: &mut PollStats,
    ) -> Result<(), PollError> {
        let (lo, hi) = self.window();
        let mut from = lo;
        let mut url = self.graph_url(from, hi);
        let mut followed = HashSet::new();
        loop {
            let page = self.fetch(&url).await?;
            stats.received += page.value.len();
            let date = page.date;
            let parsed = self.parse(page.value);
            if !parsed.ascending && !self.server.unordered {
                // alerts_v2 documents no $orderby (delivery.md §5): a server that ignores it
                // makes "everything before the newest instant is done" false. Start the window
                // again, by links.
                tracing::warn!(tenant = %self.settings.name,
                    "the API does not return alerts in lastUpdateDateTime order ($orderby is \
                     ignored); paging each window to its end by @odata.nextLink from now on");
                self.server.unordered = true;
                url = self.graph_url(lo, hi);
                continue;
            }
            let newest = parsed.newest;
            let cursor_after = match &page.next_link {
                None => self.complete_at(hi, date),
                Some(_) if self.server.unordered => self.state.cursor,
                // Sorted ascending: everything before this page's newest instant is done. The
                // instant itself is re-read by the next window (`ge`) and de-duplicated.
                Some(_) => newest.unwrap_or(self.state.cursor).max(self.state.cursor),
            };
            self.commit(pages, parsed, cursor_after, lo, stats).await?;
            let Some(next) = page.next_link else {
                return Ok(());
            };
            // More results. Ask again from the newest instant seen rather than through the
            // link's offset: when an alert on an earlier page is updated meanwhile it leaves the
            // result set, an offset then skips one alert, and that alert is lost for good if it
            // is older than the overlap (peers.md §6, elastic/integrations#20234; Elastic moved
            // to time-boundary paging, defender-api.md §3.1). Only when a whole page is one
            // instant (no progress), or the order cannot be trusted, is the nextLink followed.
            match newest {
                Some(n) if n > from && !self.server.unordered => {
                    from = n;
                    url = self.graph_url(from, hi);
                }
                _ => url = self.follow(&mut followed, &next)?,
            }
            self.check_budget()?;
        }
    }

    /// MDE: one time window `[cursor - overlap, now)`, paged with `$skip`, MDE returning no
    /// nextLink (defender-api.md §1.4). A poll costs about `n / (0.9 top) + 1` requests for `n`
    /// alerts in the window, whatever their timestamps (issue 8 §2: halving the window down to
    /// one instant cost 42 to 84 requests a poll for a burst of 30 alerts at one instant).
    ///
    /// Pages overlap by a tenth: an alert updated while the window is being paged leaves the
    /// result set and shifts the later ones back by one; the overlap keeps such shifts from
    /// skipping an alert, and the de-duplication set drops the repeats.
    async fn poll_mde<P: PageSink>(
        &mut self,
        pages: &P,
        stats: &mut PollStats,
    ) -> Result<(), PollError> {
        let (lo, hi) = self.window();
        let mut skip = 0usize;
        let mut window_seen: HashSet<(DateTime<Utc>, String)> = HashSet::new();
        // Some(n): this request looks past a short page of n alerts.
        let mut look: Option<usize> = None;
        loop {
            let top = self.top();
            let page = self.fetch(&self.mde_url(lo, hi, skip)).await?;
            let len = page.value.len();
            stats.received += len;
            let date = page.date;
            let parsed = self.parse(page.value);
            let fresh = parsed
                .alerts
                .iter()
                .filter(|(a, _)| window_seen.insert((a.last_update, a.id.clone())))
                .count();
            if len >= top {
                self.server.honours_top = true;
            }
            let was_look = look.take();
            if let (Some(short), true, None) = (was_look, fresh > 0, self.server.page_cap) {
                // More after a short page: the server caps pages at that page's length.
                tracing::warn!(tenant = %self.settings.name,
                    "the API returns at most {short} alerts a page although $top={top} was \
                     asked; a page of {short} counts as full from now on");
                self.server.page_cap = Some(short);
            }
            let full = len >= self.server.page_cap.unwrap_or(top).min(top);
            if full && skip > 0 && fresh == 0 && parsed.rejected.is_empty() {
                return Err(PollError::BadResponse(format!(
                    "the API answered $skip={skip} with alerts it had already returned for this \
                     window: it ignores $skip, so the window cannot be paged"
                )));
            }
            // A short page ends the window only when the server is known to fill pages up to
            // `$top` or its cap; otherwise it may cap pages below `$top` without saying so
            // (issue 8 §10), and one more request looks past it.
            let confirm = !full
                && len > 0
                && was_look.is_none()
                && !self.server.honours_top
                && self.server.page_cap.is_none();
            let more = full || confirm;
            let cursor_after = if more {
                self.state.cursor
            } else {
                self.complete_at(hi, date)
            };
            self.commit(pages, parsed, cursor_after, lo, stats).await?;
            if !more {
                return Ok(());
            }
            look = confirm.then_some(len);
            skip += len - margin(len);
            self.check_budget()?;
        }
    }

    /// Follows a nextLink unless it was followed before in this poll (a server that repeats
    /// it, or ignores its `$skiptoken`, would keep the loop going forever: issue 8 §11).
    fn follow(&self, followed: &mut HashSet<String>, next: &str) -> Result<String, PollError> {
        let url = self.check_next_link(next)?;
        if !followed.insert(url.clone()) {
            return Err(PollError::BadResponse(
                "the API returned an @odata.nextLink it had returned before in this poll; \
                 paging stopped"
                    .into(),
            ));
        }
        Ok(url)
    }

    /// The last guard against a server that never says "no more": a poll that has made this
    /// many requests stops, and the next one starts again from the cursor.
    fn check_budget(&self) -> Result<(), PollError> {
        let made = self.requests.load(Ordering::Relaxed) - self.poll_started_at;
        if made >= MAX_REQUESTS_PER_POLL {
            return Err(PollError::BadResponse(format!(
                "a poll made {made} requests without reaching the end of its window; stopped"
            )));
        }
        Ok(())
    }

    /// Applies de-dup and the update policy to a page, hands the survivors (and the alerts
    /// that cannot be forwarded, for the dead-letter file) over, waits for the acknowledgement,
    /// and only then changes the state and saves it with `cursor_after`.
    async fn commit<P: PageSink>(
        &mut self,
        pages: &P,
        page: Parsed,
        cursor_after: DateTime<Utc>,
        window_lo: DateTime<Utc>,
        stats: &mut PollStats,
    ) -> Result<(), PollError> {
        let mut forward = Vec::new();
        let mut new_seen: HashSet<(DateTime<Utc>, String)> = HashSet::new();
        let mut policy: HashMap<String, AlertState> = HashMap::new();
        for (alert, triage) in page.alerts {
            let key = (alert.last_update, alert.id.clone());
            if self.state.has_seen(&alert.id, alert.last_update) || new_seen.contains(&key) {
                continue;
            }
            new_seen.insert(key);
            let prev = policy
                .get(&alert.id)
                .or_else(|| self.state.alerts.get(&alert.id));
            let keep = match self.settings.update_policy {
                UpdatePolicy::All => true,
                UpdatePolicy::First => prev.is_none(),
                UpdatePolicy::Status => prev.is_none_or(|p| !p.same_triage(&triage)),
            };
            if self.settings.update_policy != UpdatePolicy::All
                && prev.is_none_or(|p| p.last_update <= triage.last_update)
            {
                policy.insert(alert.id.clone(), triage);
            }
            if keep {
                forward.push(alert);
            }
        }
        let mut rejected = Vec::new();
        let mut digests = Vec::new();
        for r in page.rejected {
            let digest = digest(r.json.get());
            // The receiver logs and dead-letters it.
            if !self.state.rejected.contains_key(&digest) && !digests.contains(&digest) {
                digests.push(digest);
                rejected.push(r);
            }
        }
        let changed =
            cursor_after != self.state.cursor || !new_seen.is_empty() || !digests.is_empty();
        if !changed && !self.unsaved {
            return Ok(());
        }
        let forwarded = forward.len();
        let rejected_count = digests.len();
        // The state once the batch is accepted.
        let mut next = self.state.clone();
        next.seen.extend(new_seen);
        next.alerts.extend(policy);
        let first_seen = self.server_now();
        next.rejected
            .extend(digests.into_iter().map(|d| (d, first_seen)));
        next.cursor = cursor_after.max(next.cursor);
        // Keep de-dup entries the next window can still return: it starts at cursor - overlap,
        // and never before this window's start while a window is being paged.
        let horizon = floor_tick(before(next.cursor, self.settings.overlap)).min(window_lo);
        let policy_horizon = before(Utc::now(), self.settings.policy_retention);
        next.prune(horizon, policy_horizon);
        let receiver_keeps = self.persist == Persist::Receiver;
        if !forward.is_empty() || !rejected.is_empty() || receiver_keeps {
            let batch = AlertBatch {
                tenant_name: self.settings.name.clone(),
                tenant_id: self.settings.tenant_id.clone(),
                api: self.settings.api,
                alerts: forward,
                rejected,
                cursor_after,
                checkpoint: receiver_keeps.then(|| next.clone()),
            };
            pages.accept(batch).await?;
        }
        // Accepted: only now does the state move.
        metrics::counter!("defender_bridge_alert_versions_forwarded_total", "tenant" => self.settings.name.clone())
            .increment(forwarded as u64);
        stats.forwarded += forwarded;
        stats.rejected += rejected_count;
        self.state = next;
        let Persist::File(path) = &self.persist else {
            return Ok(());
        };
        let (state, path) = (self.state.clone(), path.clone());
        let saved = tokio::task::spawn_blocking(move || state.save(&path))
            .await
            .map_err(|e| PollError::BadResponse(format!("checkpoint writer panicked: {e}")))?;
        self.unsaved = saved.is_err();
        saved.map_err(PollError::Unsaved)
    }

    /// Reads id, lastUpdate and triage fields of each alert. An alert without an id or a
    /// readable lastUpdate cannot be de-duplicated or cursored: it is handed over as rejected,
    /// for the dead-letter file (issue 8 §12), never silently dropped.
    fn parse(&self, values: Vec<Box<RawValue>>) -> Parsed {
        metrics::counter!("defender_bridge_alerts_polled_total", "tenant" => self.settings.name.clone())
            .increment(values.len() as u64);
        let mut out = Parsed {
            alerts: Vec::with_capacity(values.len()),
            rejected: Vec::new(),
            newest: None,
            ascending: true,
        };
        for json in values {
            let head: AlertHead = match serde_json::from_str(json.get()) {
                Ok(h) => h,
                Err(e) => {
                    out.rejected.push(RejectedAlert {
                        id: None,
                        reason: format!("not an alert object: {e}"),
                        json,
                    });
                    continue;
                }
            };
            let Some(id) = head.id.filter(|id| !id.trim().is_empty()) else {
                out.rejected.push(RejectedAlert {
                    id: None,
                    reason: "the alert has no id".into(),
                    json,
                });
                continue;
            };
            let when = head
                .last_update
                .as_deref()
                .or(head.created.as_deref())
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            let Some(last_update) = when else {
                out.rejected.push(RejectedAlert {
                    id: Some(id),
                    reason: "the alert has no readable lastUpdate time".into(),
                    json,
                });
                continue;
            };
            if out.newest.is_some_and(|n| last_update < n) {
                out.ascending = false;
            }
            out.newest = out.newest.max(Some(last_update));
            let triage = AlertState {
                last_update,
                status: head.status,
                classification: head.classification,
                determination: head.determination,
            };
            out.alerts.push((
                RawAlert {
                    id,
                    last_update,
                    json,
                },
                triage,
            ));
        }
        out
    }

    fn graph_url(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> String {
        let s = &self.settings;
        let mut filter = format!(
            "lastUpdateDateTime ge {} and lastUpdateDateTime lt {}",
            odata_time(lo),
            odata_time(hi)
        );
        if let Some(min) = &s.filters.min_severity {
            filter.push_str(&or_group(
                "severity",
                min.and_above().map(|v| v.api_name(Api::Graph)),
            ));
        }
        if !s.filters.service_sources.is_empty() {
            filter.push_str(&or_group(
                "serviceSource",
                s.filters.service_sources.iter().map(String::as_str),
            ));
        }
        format!(
            "{}/v1.0/security/alerts_v2?$filter={}&$orderby=lastUpdateDateTime%20asc&$top={}",
            s.api_base(),
            encode(&filter),
            self.top()
        )
    }

    fn mde_url(&self, lo: DateTime<Utc>, hi: DateTime<Utc>, skip: usize) -> String {
        let s = &self.settings;
        let mut filter = format!(
            "lastUpdateTime ge {} and lastUpdateTime lt {}",
            odata_time(lo),
            odata_time(hi)
        );
        if let Some(min) = &s.filters.min_severity {
            filter.push_str(&or_group(
                "severity",
                min.and_above().map(|v| v.api_name(Api::Mde)),
            ));
        }
        let mut url = format!(
            "{}/api/alerts?$filter={}&$expand=evidence&$top={}",
            s.api_base(),
            encode(&filter),
            self.top()
        );
        if skip > 0 {
            url.push_str(&format!("&$skip={skip}"));
        }
        url
    }

    /// The bearer token goes only to the configured API host: a nextLink elsewhere is refused.
    fn check_next_link(&self, next: &str) -> Result<String, PollError> {
        let base = url::Url::parse(&self.settings.api_base())
            .map_err(|e| PollError::BadResponse(format!("bad API base URL: {e}")))?;
        let link = url::Url::parse(next)
            .map_err(|e| PollError::BadResponse(format!("bad @odata.nextLink: {e}")))?;
        if link.scheme() != base.scheme()
            || link.host_str() != base.host_str()
            || link.port_or_known_default() != base.port_or_known_default()
        {
            return Err(PollError::BadResponse(format!(
                "@odata.nextLink points to another host ({}); not following it",
                link.host_str().unwrap_or("?")
            )));
        }
        Ok(next.to_string())
    }

    /// GET one page with the retry rules of this module's header.
    async fn get_page(&self, url: &str) -> Result<Page, PollError> {
        let s = &self.settings;
        let mut renewed = false;
        let mut transient = 0u32;
        let mut throttled = 0u32;
        loop {
            let token = self.token().await?;
            if !self.prepaid.swap(false, Ordering::Relaxed) {
                let waited = self.limiter.acquire().await;
                self.limited_micros
                    .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
            }
            // Held until the body is read (or the answer is known to be a failure); released
            // before any wait below.
            let slot = self.slot().await;
            let mut req = self.http.get(url).bearer_auth(token.token.secret());
            if s.api == Api::Graph {
                // defender-api.md §3.1: receive evolvable enum members added after v1.0.
                req = req.header("Prefer", "include-unknown-enum-members");
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let failure = match req.send().await {
                Err(e) => {
                    metrics::counter!("defender_bridge_api_requests_total", "tenant" => s.name.clone(), "status" => "error").increment(1);
                    describe_reqwest(&e)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    metrics::counter!("defender_bridge_api_requests_total", "tenant" => s.name.clone(), "status" => status.to_string()).increment(1);
                    let date = resp
                        .headers()
                        .get(reqwest::header::DATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| DateTime::parse_from_rfc2822(v.trim()).ok())
                        .map(|d| d.with_timezone(&Utc));
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, date));
                    match status {
                        200 => match read_limited(resp, s.max_page_bytes).await {
                            Ok(body) => {
                                let mut page = serde_json::from_slice::<Page>(&body).map_err(|e| {
                                    PollError::BadResponse(format!("the alert list is not valid JSON: {e}"))
                                })?;
                                page.date = date;
                                return Ok(page);
                            }
                            Err(BodyError::TooLarge) => {
                                return Err(PollError::TooLarge(s.max_page_bytes))
                            }
                            Err(BodyError::Read(e)) => describe_reqwest(&e),
                        },
                        401 if !renewed => {
                            // Expired or revoked token: sign in again, once.
                            tracing::info!(tenant = %s.name, "API answered 401, renewing the token");
                            drop(slot);
                            self.tokens.invalidate();
                            renewed = true;
                            continue;
                        }
                        401 => return Err(PollError::Unauthorized(api_error_text(resp).await)),
                        403 => {
                            return Err(PollError::Forbidden {
                                permission: match s.api {
                                    Api::Graph => "the application permission SecurityAlert.Read.All (Microsoft Graph)",
                                    Api::Mde => "the application permission Alert.Read.All (WindowsDefenderATP)",
                                },
                                detail: api_error_text(resp).await,
                            })
                        }
                        429 => {
                            metrics::counter!("defender_bridge_api_throttled_total", "tenant" => s.name.clone()).increment(1);
                            throttled += 1;
                            if throttled > MAX_THROTTLED {
                                return Err(PollError::Throttled(throttled - 1));
                            }
                            let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                            tracing::warn!(tenant = %s.name, "throttled (429), waiting {wait:?} as Retry-After says");
                            drop(slot);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        408 | 500..=599 => format!("HTTP {status}: {}", api_error_text(resp).await),
                        _ => {
                            return Err(PollError::Api {
                                status,
                                detail: api_error_text(resp).await,
                            })
                        }
                    }
                }
            };
            drop(slot);
            transient += 1;
            if transient >= REQUEST_ATTEMPTS {
                return Err(PollError::Transport(failure));
            }
            let delay = backoff(s.backoff_base, s.backoff_max, transient);
            tracing::warn!(tenant = %s.name, "request failed ({failure}), retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// `{"error":{"code":…,"message":…}}` (MDE and Graph error envelope, defender-api.md §1.5) as
/// "code: message", else the start of the body (a proxy's HTML page), as HEC and the webhook
/// show theirs. Only the first [`MAX_ERROR_BYTES`] are read: a larger body is cut, not refused.
async fn api_error_text(resp: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = read_head(resp, MAX_ERROR_BYTES).await;
    let text = match serde_json::from_slice::<Envelope>(&body) {
        Ok(e) => format!("{}: {}", e.error.code, e.error.message),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    one_line(&text, 300)
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "connection error"
    };
    let mut text = kind.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Retry-After in seconds or as an HTTP date (RFC 9110 §10.2.3), capped at
/// [`MAX_RETRY_AFTER`]. A date is read against the response's own `Date` when it has one, so a
/// local clock that is off does not change the wait.
fn parse_retry_after(v: &str, date: Option<DateTime<Utc>>) -> Option<Duration> {
    let wait = match v.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let when = DateTime::parse_from_rfc2822(v.trim()).ok()?;
            (when.with_timezone(&Utc) - date.unwrap_or_else(Utc::now))
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `t - d`, saturating at the earliest time chrono has instead of panicking (issue 8 §5).
fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How many alerts of a page of `len` the next page repeats (a tenth, see `poll_mde`).
fn margin(len: usize) -> usize {
    if len < 2 {
        0
    } else {
        (len / 10).max(1)
    }
}

/// A stable name for an alert object that has no usable id.
fn digest(json: &str) -> String {
    use sha1::Digest as _;
    let hash = sha1::Sha1::digest(json.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// OData DateTimeOffset literal with 7 fraction digits, the APIs' own precision
/// (defender-api.md §1.4: Elastic's `2006-01-02T15:04:05.9999999Z`).
fn odata_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// Truncates to the 100 ns tick of the APIs' timestamps.
fn floor_tick(t: DateTime<Utc>) -> DateTime<Utc> {
    let extra = t.timestamp_subsec_nanos() % 100;
    t - chrono::Duration::nanoseconds(i64::from(extra))
}

fn or_group<'a>(field: &str, values: impl Iterator<Item = &'a str>) -> String {
    let terms: Vec<String> = values
        .map(|v| format!("{field} eq '{}'", v.replace('\'', "''")))
        .collect();
    format!(" and ({})", terms.join(" or "))
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_time_has_seven_digits() {
        let t = DateTime::parse_from_rfc3339("2026-11-28T10:00:00.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(odata_time(t), "2026-11-28T10:00:00.1234567Z");
        assert_eq!(odata_time(floor_tick(t)), "2026-11-28T10:00:00.1234567Z");
    }

    #[test]
    fn retry_after_seconds_and_date() {
        assert_eq!(parse_retry_after("7", None), Some(Duration::from_secs(7)));
        // A date in the past: no wait. One read against the response's own Date.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", None),
            Some(Duration::ZERO)
        );
        let date = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:27:30 GMT")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", Some(date)),
            Some(Duration::from_secs(30))
        );
        // A huge value is capped.
        assert_eq!(parse_retry_after("999999999", None), Some(MAX_RETRY_AFTER));
        assert_eq!(before(Utc::now(), Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
