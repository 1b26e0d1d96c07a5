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
//! - MDE pages by time window and never relies on nextLink, which MDE does not return reliably
//!   (defender-api.md §1.4): a full page halves the window; a one-instant window that is still
//!   full is paged with `$skip`.
//! - Windows start with `ge` and are de-duplicated by (id, lastUpdate), so alerts sharing one
//!   timestamp are never lost at a page boundary (peers.md §6, demisto PR 45413).
//! - 429 waits exactly Retry-After (defender-api.md §1.5); 5xx, timeouts and resets back off
//!   exponentially with jitter; a 401 renews the token once.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, EntraTokenProvider, TokenProvider};
use super::checkpoint::{AlertState, Checkpoint, CheckpointError};
use super::ratelimit::RateLimiter;
use super::tenant::{Api, TenantSettings, UpdatePolicy};

/// Transient failures (5xx, timeouts, resets) retried inside one request before the poll fails
/// and the poll-level backoff takes over.
const REQUEST_ATTEMPTS: u32 = 3;
/// 429s tolerated for one request (each waited out) before the poll gives up for now.
const MAX_THROTTLED: u32 = 10;
/// Retry-After missing on a 429: wait a minute, the period of every documented limit.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

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

/// A batch and the acknowledgement the poller waits for before it moves its checkpoint.
#[derive(Debug)]
pub struct Delivery {
    pub batch: AlertBatch,
    pub ack: Ack,
}

/// Accept a batch once its records are queued or sent. Dropping it without accepting makes the
/// poller keep its checkpoint and retry the poll later.
#[derive(Debug)]
pub struct Ack(oneshot::Sender<()>);

impl Ack {
    pub fn accept(self) {
        let _ = self.0.send(());
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
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the batch was not accepted (the receiver dropped it)")]
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
    pub requests: u32,
    pub received: usize,
    pub forwarded: usize,
}

/// Health of a tenant, readable while [`Poller::run`] runs (for `check`, metrics and tests).
#[derive(Clone, Debug, Default)]
pub struct TenantStatus {
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub forwarded: u64,
}

/// Polls one tenant.
pub struct Poller {
    settings: Arc<TenantSettings>,
    http: reqwest::Client,
    tokens: Arc<dyn TokenProvider>,
    limiter: RateLimiter,
    path: PathBuf,
    state: Checkpoint,
    /// The last save failed after the destinations had accepted the alerts: the in-memory
    /// state is ahead of the file and is saved again at the next poll.
    unsaved: bool,
    status: Arc<Mutex<TenantStatus>>,
}

/// A page as both APIs return it.
#[derive(Deserialize)]
struct Page {
    value: Vec<Box<RawValue>>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// The few fields the poller reads from each alert; everything else passes through untouched.
#[derive(Deserialize)]
struct AlertHead {
    id: String,
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

    /// A poller using `tokens`; loads the checkpoint from `state_dir` or starts at now minus
    /// the initial look-back.
    pub fn new(
        settings: TenantSettings,
        http: reqwest::Client,
        tokens: Arc<dyn TokenProvider>,
        state_dir: &Path,
    ) -> Result<Self, PollError> {
        let api = settings.api.to_string();
        let path = Checkpoint::path(state_dir, &settings.tenant_id, &api);
        let state = match Checkpoint::load(&path)? {
            Some(cp) => cp,
            None => Checkpoint::fresh(
                &settings.tenant_id,
                &api,
                Utc::now() - to_chrono(settings.initial_lookback),
            ),
        };
        Ok(Poller {
            limiter: RateLimiter::new(&settings.rate_limits()),
            settings: Arc::new(settings),
            http,
            tokens,
            path,
            state,
            unsaved: false,
            status: Arc::default(),
        })
    }

    pub fn settings(&self) -> &TenantSettings {
        &self.settings
    }

    /// The committed state (what is on disk after the last accepted batch).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.state
    }

    /// A handle on the tenant's health, updated by [`Poller::run`].
    pub fn status(&self) -> Arc<Mutex<TenantStatus>> {
        self.status.clone()
    }

    /// Polls until `shutdown`, one poll per `poll_interval` (counted from the start of one poll to
    /// the start of the next, so a slow poll does not push the schedule) and backing off after
    /// failures. Errors are logged with the tenant's name and never stop the loop; only a closed
    /// channel or `shutdown` does.
    pub async fn run(mut self, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) {
        let name = self.settings.name.clone();
        let mut failures: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = self.poll_once(&out) => r,
                _ = shutdown.cancelled() => return,
            };
            let delay = match result {
                Ok(stats) => {
                    failures = 0;
                    tracing::debug!(tenant = %name, ?stats, "poll done");
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_success = Some(Utc::now());
                    s.last_error = None;
                    s.consecutive_failures = 0;
                    s.forwarded += stats.forwarded as u64;
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
                    tracing::error!(tenant = %name, tenant_id = %self.settings.tenant_id,
                        "poll failed ({failures} in a row), retrying in {delay:?}: {e}");
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_error = Some(e.to_string());
                    s.consecutive_failures = failures;
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One complete poll from the checkpoint to now. On error the in-memory state goes back to
    /// the last saved checkpoint, so the next poll resumes from what was accepted.
    pub async fn poll_once(
        &mut self,
        out: &mpsc::Sender<Delivery>,
    ) -> Result<PollStats, PollError> {
        let mut stats = PollStats::default();
        let result = match self.settings.api {
            Api::Graph => self.poll_graph(out, &mut stats).await,
            Api::Mde => self.poll_mde(out, &mut stats).await,
        };
        // A failed save after delivery keeps the in-memory state: going back to the file would
        // send everything since the last save again, at every retry.
        if matches!(&result, Err(e) if !matches!(e, PollError::Unsaved(_))) {
            let api = self.settings.api.to_string();
            self.state = match Checkpoint::load(&self.path) {
                Ok(Some(cp)) => cp,
                // Nothing saved yet: keep the first-run cursor, forget unsaved de-dup entries.
                _ => Checkpoint::fresh(&self.settings.tenant_id, &api, self.state_start()),
            };
        }
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

    fn state_start(&self) -> DateTime<Utc> {
        // Used only when no checkpoint was ever saved: the cursor was the first-run start.
        self.state.cursor.min(Utc::now())
    }

    fn window(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let lo = floor_tick(self.state.cursor - to_chrono(self.settings.overlap));
        let hi = floor_tick(Utc::now()).max(lo + chrono::Duration::microseconds(1));
        (lo, hi)
    }

    async fn poll_graph(
        &mut self,
        out: &mpsc::Sender<Delivery>,
        stats: &mut PollStats,
    ) -> Result<(), PollError> {
        let (lo, hi) = self.window();
        let mut from = lo;
        let mut url = self.graph_url(from, hi);
        loop {
            let page = self.get_page(&url).await?;
            stats.requests += 1;
            stats.received += page.value.len();
            let (alerts, max_seen) = self.parse(page.value);
            let cursor_after = match &page.next_link {
                // Sorted ascending: everything before this page's newest instant is done. The
                // instant itself is re-read by the next window (`ge`) and de-duplicated.
                Some(_) => max_seen.unwrap_or(self.state.cursor).max(self.state.cursor),
                None => hi.max(self.state.cursor),
            };
            stats.forwarded += self.commit(out, alerts, cursor_after, lo).await?;
            let Some(next) = page.next_link else {
                return Ok(());
            };
            // More results. Ask again from the newest instant seen rather than through the
            // link's offset: when an alert on an earlier page is updated meanwhile it leaves the
            // result set, an offset then skips one alert, and that alert is lost for good if it
            // is older than the overlap (peers.md §6, elastic/integrations#20234; Elastic moved
            // to time-boundary paging, defender-api.md §3.1). Only when a whole page is one
            // instant (no progress) is the nextLink followed, to page through that instant.
            match max_seen {
                Some(newest) if newest > from => {
                    from = newest;
                    url = self.graph_url(from, hi);
                }
                _ => url = self.check_next_link(&next)?,
            }
        }
    }

    async fn poll_mde(
        &mut self,
        out: &mpsc::Sender<Delivery>,
        stats: &mut PollStats,
    ) -> Result<(), PollError> {
        let (mut lo, end) = self.window();
        let top = self.settings.page_size.max(1) as usize;
        let tick = chrono::Duration::nanoseconds(100);
        // Window length: halved after a full page, doubled after one that fit, so a burst
        // costs a few extra requests instead of a halving series for every window after it.
        let mut span = end - lo;
        while lo < end {
            let mut hi = if end - lo > span {
                floor_tick(lo + span).max(lo + tick)
            } else {
                end
            };
            let mut skip = 0usize;
            loop {
                let page = self.get_page(&self.mde_url(lo, hi, skip)).await?;
                stats.requests += 1;
                let full = page.value.len() >= top;
                if full && skip == 0 && hi - lo > tick {
                    // Too many alerts for one page: halve the window and ask again.
                    let half = floor_tick(lo + (hi - lo) / 2);
                    hi = if half > lo { half } else { lo + tick };
                    span = hi - lo;
                    continue;
                }
                stats.received += page.value.len();
                let (alerts, _) = self.parse(page.value);
                if full {
                    // One instant with more alerts than a page: $skip through it. The cursor
                    // stays at `lo` until the instant is complete; de-dup covers a restart.
                    stats.forwarded += self.commit(out, alerts, self.state.cursor, lo).await?;
                    skip += top;
                    continue;
                }
                stats.forwarded += self
                    .commit(out, alerts, hi.max(self.state.cursor), lo)
                    .await?;
                break;
            }
            lo = hi;
            span = span.checked_mul(2).unwrap_or(span).min(end - lo);
        }
        Ok(())
    }

    /// Applies de-dup and the update policy to `alerts`, hands the survivors over, waits for the
    /// acknowledgement, then saves the checkpoint with `cursor_after`.
    async fn commit(
        &mut self,
        out: &mpsc::Sender<Delivery>,
        alerts: Vec<(RawAlert, AlertState)>,
        cursor_after: DateTime<Utc>,
        window_lo: DateTime<Utc>,
    ) -> Result<usize, PollError> {
        let mut forward = Vec::new();
        let mut changed = cursor_after != self.state.cursor;
        for (alert, triage) in alerts {
            if self.state.has_seen(&alert.id, alert.last_update) {
                continue;
            }
            changed = true;
            self.state
                .seen
                .insert((alert.last_update, alert.id.clone()));
            let keep = match self.settings.update_policy {
                UpdatePolicy::All => true,
                UpdatePolicy::First => !self.state.alerts.contains_key(&alert.id),
                UpdatePolicy::Status => match self.state.alerts.get(&alert.id) {
                    None => true,
                    Some(prev) => !prev.same_triage(&triage),
                },
            };
            if self.settings.update_policy != UpdatePolicy::All {
                let newer = self
                    .state
                    .alerts
                    .get(&alert.id)
                    .is_none_or(|prev| prev.last_update <= triage.last_update);
                if newer {
                    self.state.alerts.insert(alert.id.clone(), triage);
                }
            }
            if keep {
                forward.push(alert);
            }
        }
        if !changed && !self.unsaved {
            return Ok(0);
        }
        let forwarded = forward.len();
        if !forward.is_empty() {
            let (tx, rx) = oneshot::channel();
            let batch = AlertBatch {
                tenant_name: self.settings.name.clone(),
                tenant_id: self.settings.tenant_id.clone(),
                api: self.settings.api,
                alerts: forward,
                rejected: Vec::new(),
                cursor_after,
            };
            out.send(Delivery {
                batch,
                ack: Ack(tx),
            })
            .await
            .map_err(|_| PollError::Closed)?;
            rx.await.map_err(|_| PollError::NotAccepted)?;
        }
        self.state.cursor = cursor_after.max(self.state.cursor);
        // Keep de-dup entries the next window can still return: it starts at cursor - overlap,
        // and never before this window's start while a window is being paged.
        let horizon =
            floor_tick(self.state.cursor - to_chrono(self.settings.overlap)).min(window_lo);
        let policy_horizon = Utc::now() - to_chrono(self.settings.policy_retention);
        self.state.prune(horizon, policy_horizon);
        let (state, path) = (self.state.clone(), self.path.clone());
        let saved = tokio::task::spawn_blocking(move || state.save(&path))
            .await
            .map_err(|e| PollError::BadResponse(format!("checkpoint writer panicked: {e}")))?;
        self.unsaved = saved.is_err();
        saved.map_err(PollError::Unsaved)?;
        Ok(forwarded)
    }

    /// Reads id, lastUpdate and triage fields of each alert. Alerts without an id cannot be
    /// de-duplicated or cursored; they are logged and counted, not forwarded.
    fn parse(
        &self,
        values: Vec<Box<RawValue>>,
    ) -> (Vec<(RawAlert, AlertState)>, Option<DateTime<Utc>>) {
        let mut out = Vec::with_capacity(values.len());
        let mut max_seen = None;
        for json in values {
            let head: AlertHead = match serde_json::from_str(json.get()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(tenant = %self.settings.name, "skipping an alert without a usable id: {e}");
                    continue;
                }
            };
            let when = head
                .last_update
                .as_deref()
                .or(head.created.as_deref())
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            let Some(last_update) = when else {
                tracing::error!(tenant = %self.settings.name, alert = %head.id,
                    "skipping an alert without a readable lastUpdate time");
                continue;
            };
            max_seen = max_seen.max(Some(last_update));
            let triage = AlertState {
                last_update,
                status: head.status,
                classification: head.classification,
                determination: head.determination,
            };
            out.push((
                RawAlert {
                    id: head.id,
                    last_update,
                    json,
                },
                triage,
            ));
        }
        (out, max_seen)
    }

    fn graph_url(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> String {
        let s = &self.settings;
        let mut filter = format!(
            "lastUpdateDateTime ge {} and lastUpdateDateTime lt {}",
            odata_time(lo),
            odata_time(hi)
        );
        if let Some(min) = s.filters.min_severity {
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
            s.page_size.clamp(1, 1000)
        )
    }

    fn mde_url(&self, lo: DateTime<Utc>, hi: DateTime<Utc>, skip: usize) -> String {
        let s = &self.settings;
        let mut filter = format!(
            "lastUpdateTime ge {} and lastUpdateTime lt {}",
            odata_time(lo),
            odata_time(hi)
        );
        if let Some(min) = s.filters.min_severity {
            filter.push_str(&or_group(
                "severity",
                min.and_above().map(|v| v.api_name(Api::Mde)),
            ));
        }
        let mut url = format!(
            "{}/api/alerts?$filter={}&$expand=evidence&$top={}",
            s.api_base(),
            encode(&filter),
            s.page_size.clamp(1, 10_000)
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
            self.limiter.acquire().await;
            let token = self.tokens.token().await?;
            let mut req = self.http.get(url).bearer_auth(token.token.secret());
            if s.api == Api::Graph {
                // defender-api.md §3.1: receive evolvable enum members added after v1.0.
                req = req.header("Prefer", "include-unknown-enum-members");
            }
            let failure = match req.send().await {
                Err(e) => describe_reqwest(&e),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    match status {
                        200 => match resp.bytes().await {
                            Ok(body) => {
                                return serde_json::from_slice::<Page>(&body).map_err(|e| {
                                    PollError::BadResponse(format!("the alert list is not valid JSON: {e}"))
                                })
                            }
                            Err(e) => describe_reqwest(&e),
                        },
                        401 if !renewed => {
                            // Expired or revoked token: sign in again, once.
                            tracing::info!(tenant = %s.name, "API answered 401, renewing the token");
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
                            throttled += 1;
                            if throttled > MAX_THROTTLED {
                                return Err(PollError::Throttled(throttled - 1));
                            }
                            let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                            tracing::warn!(tenant = %s.name, "throttled (429), waiting {wait:?} as Retry-After says");
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
/// "code: message", else the start of the body.
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
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Envelope>(&body) {
        Ok(e) => format!("{}: {}", e.error.code, e.error.message),
        Err(_) => String::from_utf8_lossy(&body)
            .chars()
            .take(200)
            .filter(|c| !c.is_control())
            .collect(),
    }
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

/// Retry-After in seconds or as an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v.trim()).ok()?;
    (when.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

/// Capped exponential backoff with "equal jitter": a random delay in [d/2, d] where
/// d = min(base * 2^(attempt-1), max), so many tenants failing together do not retry in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let half = d / 2;
    half + d.mul_f64(rand::random::<f64>() * 0.5)
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

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
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
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..40 {
            let d = backoff(base, max, attempt);
            let cap = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }
}
