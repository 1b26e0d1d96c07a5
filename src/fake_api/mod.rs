//! An in-process HTTPS fake of the Entra ID v2 token endpoint, Graph `security/alerts_v2` and
//! MDE `/api/alerts`, on 127.0.0.1 with a test CA made at start.
//!
//! It lets the real azure_identity path and the real poller run without an Azure account: the
//! tests script it (alerts added or updated at any time, 429s, 500s, expired tokens, dropped
//! connections) and `demo` serves bundled sample alerts from it ([`FakeApi::start_demo`]).
//! azure_identity refuses `http://` authorities, hence HTTPS (rust-stack.md §1.4 option 2).
//!
//! Behaviour copied from the real services, on purpose:
//! - tokens are opaque and map back to (tenant, API); a token for one API is refused by the other;
//! - Entra errors carry the real AADSTS codes and `error_codes` arrays (entra.rs);
//! - Graph returns `@odata.nextLink`; MDE never does (defender-api.md §1.4), and without an
//!   `$orderby` MDE's order is not time order, so a poller cannot rely on it;
//! - only the current version of an alert is ever returned: an update replaces it.
mod entra;
mod filter;
mod graph;
mod mde;
pub mod samples;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use crate::source::tenant::Api;

/// How a fake tenant's app proves itself.
#[derive(Clone, Debug)]
pub enum FakeCredential {
    /// Client secret.
    Secret(String),
    /// A certificate (PEM); assertions must be signed by its key and carry its `x5t`.
    Certificate(String),
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    /// Tenant from the token (API) or the path (token endpoint); `None` when unknown.
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    pub status: u16,
    /// The `Prefer` request header, if any.
    pub prefer: Option<String>,
}

/// One alert version the fake put into a 200 response.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Served {
    pub tenant: String,
    pub api: Api,
    pub id: String,
    pub last_update: DateTime<Utc>,
}

#[derive(Default)]
struct Faults {
    /// Next N API requests answer 429 with this Retry-After (seconds).
    throttle: u32,
    retry_after: u64,
    /// API requests answer 500 until then.
    fail_until: Option<Instant>,
    /// After this many more API requests, every token issued so far counts as expired.
    expire_tokens_after: Option<u32>,
    /// Next N API requests get a 200 whose body breaks off: the connection is closed mid-response.
    drop_connections: u32,
    /// Next N API requests get this status and body as `text/html` (a proxy's or gateway's
    /// error page rather than the API's JSON envelope).
    error_pages: u32,
    error_page: (u16, String),
    /// Next N API requests are answered only after this delay.
    slow: u32,
    slow_by: Duration,
    /// Unkind servers (issue 8): pages hold at most this many alerts whatever `$top` says.
    page_cap: Option<usize>,
    /// Graph: `$orderby` is ignored (the service's own order, here by id).
    ignore_orderby: bool,
    /// `$skip` (MDE) and `$skiptoken` (Graph) are ignored: the first page again, with the same
    /// nextLink.
    ignore_skip: bool,
}

/// An alert's lastUpdate and its current JSON.
type Stored = (DateTime<Utc>, Arc<Value>);
/// An alert a list request matched: lastUpdate, id, JSON.
type Matched = (DateTime<Utc>, String, Arc<Value>);

/// The body of a list answer, the alerts borrowed from the store rather than copied for each
/// page. The fields are in the order `json!` wrote them (sorted).
#[derive(serde::Serialize)]
struct ListBody<'a> {
    #[serde(rename = "@odata.context")]
    context: &'static str,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
    value: Vec<&'a Value>,
}

/// One API's alerts of a tenant, current versions only, indexed twice: by id (the services'
/// own order) and by (lastUpdate, id), so that a page of a time window in time order is a range
/// scan. Copying and sorting every match for each page made a run of 100,000 versions
/// quadratic.
#[derive(Default)]
struct AlertStore {
    by_id: BTreeMap<String, Stored>,
    by_time: BTreeMap<(DateTime<Utc>, String), Arc<Value>>,
}

impl AlertStore {
    /// Adds or replaces (by id) an alert; the version it replaces leaves both indexes.
    fn upsert(&mut self, id: String, last_update: DateTime<Utc>, alert: Arc<Value>) {
        if let Some((old, _)) = self.by_id.insert(id.clone(), (last_update, alert.clone())) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((last_update, id), alert);
    }
}

struct FakeTenant {
    client_id: String,
    credential: FakeCredential,
    secret_expired: bool,
    /// Per API: the current alerts. Their JSON is shared, so that a list request copies only
    /// the page it returns.
    alerts: HashMap<Api, AlertStore>,
    /// Per API: objects served as they are (no id, a bad time), matched as if at that time.
    raw: HashMap<Api, Vec<(DateTime<Utc>, Value)>>,
    faults: Faults,
    tokens_valid_after: Option<DateTime<Utc>>,
    /// `roles` claim of issued tokens; `None` gives the permission the API needs.
    roles: Option<Vec<String>>,
}

struct Issued {
    tenant: String,
    api: Api,
    issued: DateTime<Utc>,
    expires: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, FakeTenant>,
    tokens: HashMap<String, Issued>,
    requests: Vec<RequestRecord>,
    served: Vec<Served>,
    token_requests: HashMap<String, u32>,
}

struct Shared {
    inner: Mutex<Inner>,
    base_url: String,
    token_lifetime: Mutex<Duration>,
    /// Added before every answer (benchmarks: "1,000 tenants with 20 ms latency", issue 4).
    latency: Mutex<Duration>,
    /// The fake's clock minus the real one: the `Date` header of every answer (a machine whose
    /// clock is off sees Microsoft's clock differ from its own).
    clock_offset: Mutex<chrono::Duration>,
    /// Requests in their latency wait now, and the most there ever were at once.
    waiting: std::sync::atomic::AtomicUsize,
    most_waiting: std::sync::atomic::AtomicUsize,
}

impl Shared {
    async fn wait_latency(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let d = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        if !d.is_zero() {
            // Counted down on drop too: a client that gives up ends the handler mid-sleep.
            struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, SeqCst);
                }
            }
            let now = self.waiting.fetch_add(1, SeqCst) + 1;
            let _waiting = Waiting(&self.waiting);
            self.most_waiting.fetch_max(now, SeqCst);
            tokio::time::sleep(d).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    #[error("cannot make the fake's test certificates: {0}")]
    Certificate(String),
    #[error("cannot listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
}

impl FakeApi {
    /// Starts an empty fake on 127.0.0.1 and a free port. Its URL is `https://localhost:PORT`,
    /// served with a certificate from a CA made now ([`FakeApi::ca_pem`]).
    pub async fn start() -> Result<FakeApi, FakeApiError> {
        let (ca_pem, server_config) = make_tls()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(FakeApiError::Listen)?;
        let addr = listener.local_addr().map_err(FakeApiError::Listen)?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            base_url: format!("https://localhost:{}", addr.port()),
            token_lifetime: Mutex::new(Duration::from_secs(3599)),
            latency: Mutex::new(Duration::ZERO),
            clock_offset: Mutex::new(chrono::Duration::zero()),
            waiting: Default::default(),
            most_waiting: Default::default(),
        });
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra::token))
            .route("/v1.0/security/alerts_v2", get(graph::list))
            .route("/api/alerts", get(mde::list))
            .layer(axum::middleware::map_response_with_state(
                shared.clone(),
                date_header,
            ))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let tls = TlsListener::spawn(listener, TlsAcceptor::from(server_config), stop.clone());
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(tls, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(FakeApi {
            shared,
            addr,
            ca_pem,
            stop,
        })
    }

    /// `https://localhost:PORT`: the authority host and the API base URL.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&self.shared.base_url).expect("the fake's own URL parses")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the fake's certificate; clients trust it as an extra CA.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes [`FakeApi::ca_pem`] to `dir/fake-api-ca.pem` and returns the path, for
    /// `HttpSettings::extra_ca_file`.
    pub fn write_ca_file(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("fake-api-ca.pem");
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// Registers a tenant whose app `client_id` signs in with `credential`.
    pub fn add_tenant(&self, tenant_id: &str, client_id: &str, credential: FakeCredential) {
        self.shared.lock().tenants.insert(
            tenant_id.to_string(),
            FakeTenant {
                client_id: client_id.to_string(),
                credential,
                secret_expired: false,
                alerts: HashMap::new(),
                raw: HashMap::new(),
                faults: Faults::default(),
                tokens_valid_after: None,
                roles: None,
            },
        );
    }

    /// The `roles` claim of tokens issued from now on (default: `SecurityAlert.Read.All` for
    /// Graph, `Alert.Read.All` for MDE), e.g. empty to model a consent without the permission.
    pub fn set_roles(&self, tenant_id: &str, roles: &[&str]) {
        self.with_tenant(tenant_id, |t| {
            t.roles = Some(roles.iter().map(|r| r.to_string()).collect())
        });
    }

    /// From now on the tenant's secret is reported expired (AADSTS7000222).
    pub fn expire_secret(&self, tenant_id: &str) {
        self.with_tenant(tenant_id, |t| t.secret_expired = true);
    }

    /// Lifetime of tokens issued from now on (default 3,599 s, as Entra's `expires_in`).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self
            .shared
            .token_lifetime
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = lifetime;
    }

    /// Every answer (token and API) is delayed by `latency`, as a far-away service would be.
    pub fn set_latency(&self, latency: Duration) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Adds or replaces (by `id`) an alert. Its lastUpdate is read from `lastUpdateDateTime`
    /// (Graph) or `lastUpdateTime` (MDE); it can be in the past ("late" alert).
    ///
    /// Panics when the JSON lacks those fields: a test bug, not an input.
    pub fn upsert_alert(&self, tenant_id: &str, api: Api, alert: Value) {
        let id = alert["id"].as_str().expect("alert has an id").to_string();
        let field = match api {
            Api::Graph => "lastUpdateDateTime",
            Api::Mde => "lastUpdateTime",
        };
        let lu = alert[field]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .expect("alert has a lastUpdate time")
            .with_timezone(&Utc);
        self.with_tenant(tenant_id, |t| {
            t.alerts
                .entry(api)
                .or_default()
                .upsert(id, lu, Arc::new(alert));
        });
    }

    /// The current JSON of an alert.
    pub fn alert(&self, tenant_id: &str, api: Api, id: &str) -> Option<Value> {
        let inner = self.shared.lock();
        inner
            .tenants
            .get(tenant_id)?
            .alerts
            .get(&api)?
            .by_id
            .get(id)
            .map(|(_, v)| Value::clone(v))
    }

    /// The next `n` API requests of the tenant answer 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, tenant_id: &str, n: u32, retry_after_secs: u64) {
        self.with_tenant(tenant_id, |t| {
            t.faults.throttle = n;
            t.faults.retry_after = retry_after_secs;
        });
    }

    /// The tenant's API requests answer 500 for `duration` from now.
    pub fn fail_for(&self, tenant_id: &str, duration: Duration) {
        self.with_tenant(tenant_id, |t| {
            t.faults.fail_until = Some(Instant::now() + duration)
        });
    }

    /// After `n` more API requests of the tenant, all tokens issued so far count as expired
    /// (401), as when a token runs out in the middle of paging.
    pub fn expire_tokens_after(&self, tenant_id: &str, n: u32) {
        self.with_tenant(tenant_id, |t| t.faults.expire_tokens_after = Some(n));
    }

    /// The next `n` API requests of the tenant get a response that breaks off mid-body.
    pub fn drop_connections(&self, tenant_id: &str, n: u32) {
        self.with_tenant(tenant_id, |t| t.faults.drop_connections = n);
    }

    /// The next `n` API requests of the tenant get `status` with `body` as `text/html`: what a
    /// proxy or an Azure front door answers in the API's place, of any size.
    pub fn error_page_next(&self, tenant_id: &str, n: u32, status: u16, body: String) {
        self.with_tenant(tenant_id, |t| {
            t.faults.error_pages = n;
            t.faults.error_page = (status, body);
        });
    }

    /// The next `n` API requests of the tenant are answered after `delay` (a slow or hung API;
    /// the client's timeout decides).
    pub fn slow_next(&self, tenant_id: &str, n: u32, delay: Duration) {
        self.with_tenant(tenant_id, |t| {
            t.faults.slow = n;
            t.faults.slow_by = delay;
        });
    }

    /// Pages of the tenant hold at most `cap` alerts, whatever `$top` asks (a server that caps
    /// pages below `$top` without saying so).
    pub fn cap_pages(&self, tenant_id: &str, cap: usize) {
        self.with_tenant(tenant_id, |t| t.faults.page_cap = Some(cap.max(1)));
    }

    /// Graph ignores `$orderby` for the tenant (alerts_v2 does not document it).
    pub fn ignore_orderby(&self, tenant_id: &str) {
        self.with_tenant(tenant_id, |t| t.faults.ignore_orderby = true);
    }

    /// The tenant's list endpoints ignore `$skip` / `$skiptoken`: every page is the first one.
    pub fn ignore_skip(&self, tenant_id: &str) {
        self.with_tenant(tenant_id, |t| t.faults.ignore_skip = true);
    }

    /// Serves `object` as it is (it may lack an id or a readable time) to list requests whose
    /// time filter includes `at`.
    pub fn add_raw_object(&self, tenant_id: &str, api: Api, at: DateTime<Utc>, object: Value) {
        self.with_tenant(tenant_id, |t| {
            t.raw.entry(api).or_default().push((at, object));
        });
    }

    /// The fake's clock runs `offset` from the real one: its `Date` headers say so, as the
    /// real service would to a machine whose clock is off by `-offset`.
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        *self
            .shared
            .clock_offset
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = offset;
    }

    /// The fake's clock (see [`FakeApi::set_clock_offset`]).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
            + *self
                .shared
                .clock_offset
                .lock()
                .unwrap_or_else(|p| p.into_inner())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Every alert version put into a 200 response so far, in order.
    pub fn served(&self) -> Vec<Served> {
        self.shared.lock().served.clone()
    }

    /// The most requests (token and API) that were in the fake at once, counted while
    /// [`FakeApi::set_latency`] holds them; 0 without latency.
    pub fn most_concurrent_requests(&self) -> usize {
        self.shared
            .most_waiting
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Token requests answered with a token, per tenant.
    pub fn tokens_issued(&self, tenant_id: &str) -> u32 {
        self.shared
            .lock()
            .token_requests
            .get(tenant_id)
            .copied()
            .unwrap_or(0)
    }

    fn with_tenant(&self, tenant_id: &str, f: impl FnOnce(&mut FakeTenant)) {
        let mut inner = self.shared.lock();
        match inner.tenants.get_mut(tenant_id) {
            Some(t) => f(t),
            None => panic!("fake tenant {tenant_id} was never added"),
        }
    }
}

/// Axum's `Listener` over TLS. Handshakes run in their own tasks so one slow client cannot hold
/// up the others.
struct TlsListener {
    rx: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor, stop: CancellationToken) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop stopped: wait for the graceful shutdown to end serve().
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// A CA and a `localhost`/127.0.0.1 leaf signed by it (a self-signed CA used as the server
/// certificate is refused by webpki, rust-stack.md §1.4 option 2).
fn make_tls() -> Result<(String, Arc<rustls::ServerConfig>), FakeApiError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: &dyn std::fmt::Display| FakeApiError::Certificate(e.to_string());
    let ca_key = KeyPair::generate().map_err(|e| err(&e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "defender-bridge fake API test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(|e| err(&e))?;
    let leaf_key = KeyPair::generate().map_err(|e| err(&e))?;
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| err(&e))?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(|e| err(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .map_err(|e| err(&e))?;
    Ok((ca.pem(), Arc::new(config)))
}

// ---- shared by the handlers ----------------------------------------------------------------

/// Outcome of checking an API request's bearer token and the tenant's scripted faults.
enum Gate {
    /// Serve the tenant's data after the delay; the index of the request's record, to fix its
    /// status later.
    Serve(String, usize, Option<Duration>),
    Respond(axum::response::Response),
}

fn json_response(status: u16, body: impl serde::Serialize) -> axum::response::Response {
    let mut resp = axum::response::IntoResponse::into_response(axum::Json(body));
    *resp.status_mut() = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

/// `{"error":{"code","message"}}` as Graph and MDE send it (defender-api.md §1.5).
fn api_error(status: u16, code: &str, message: &str) -> axum::response::Response {
    json_response(
        status,
        serde_json::json!({"error": {"code": code, "message": message,
            "target": uuid::Uuid::new_v4().to_string()}}),
    )
}

/// What both list endpoints do first: the configured latency, the gate (token, faults), then
/// `$filter` and `$top`. `Err` is the response to send instead.
async fn list_request(
    shared: &Shared,
    api: Api,
    headers: &axum::http::HeaderMap,
    path: &str,
    query: &[(String, String)],
    fields: &[&str],
    (top_default, top_max): (usize, usize),
) -> Result<(String, usize, filter::Filter, usize), axum::response::Response> {
    shared.wait_latency().await;
    let (tenant, record) = match gate(shared, api, headers, path, query) {
        Gate::Serve(t, r, delay) => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            (t, r)
        }
        Gate::Respond(resp) => return Err(resp),
    };
    let filter = filter::Filter::parse(param(query, "$filter").unwrap_or(""), fields)
        .map_err(|e| bad_request(shared, record, &e))?;
    let top = top(query, top_default, top_max).map_err(|e| bad_request(shared, record, &e))?;
    Ok((tenant, record, filter, top))
}

/// Records the request and applies token checks and faults, in the order a real service would
/// meet them: token first, then throttling, then server errors.
fn gate(
    shared: &Shared,
    api: Api,
    headers: &axum::http::HeaderMap,
    path: &str,
    query: &[(String, String)],
) -> Gate {
    let mut inner = shared.lock();
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let now = Utc::now();
    let issued = inner
        .tokens
        .get(&token)
        .map(|t| (t.tenant.clone(), t.api, t.issued, t.expires));
    let prefer = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let record = |inner: &mut Inner, tenant: Option<String>, status: u16| {
        inner.requests.push(RequestRecord {
            at: Instant::now(),
            tenant,
            method: "GET".into(),
            path: path.to_string(),
            query: query.to_vec(),
            status,
            prefer: prefer.clone(),
        });
    };
    let Some((tenant_id, token_api, issued_at, expires)) = issued else {
        record(&mut inner, None, 401);
        return Gate::Respond(api_error(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ));
    };
    let Some(tenant) = inner.tenants.get_mut(&tenant_id) else {
        record(&mut inner, Some(tenant_id), 401);
        return Gate::Respond(api_error(401, "Unauthorized", "Unknown tenant"));
    };
    if let Some(n) = tenant.faults.expire_tokens_after {
        if n == 0 {
            tenant.tokens_valid_after = Some(now);
            tenant.faults.expire_tokens_after = None;
        } else {
            tenant.faults.expire_tokens_after = Some(n - 1);
        }
    }
    let revoked = tenant.tokens_valid_after.is_some_and(|t| issued_at <= t);
    if token_api != api || expires <= now || revoked {
        record(&mut inner, Some(tenant_id), 401);
        let msg = if token_api != api {
            "Access token validation failure. Invalid audience."
        } else {
            "Access token has expired or is not yet valid."
        };
        return Gate::Respond(api_error(401, "InvalidAuthenticationToken", msg));
    }
    if tenant.faults.throttle > 0 {
        tenant.faults.throttle -= 1;
        let retry_after = tenant.faults.retry_after;
        record(&mut inner, Some(tenant_id), 429);
        let mut resp = api_error(
            429,
            "TooManyRequests",
            "Too many requests. Retry after the time in the Retry-After header.",
        );
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(retry_after),
        );
        return Gate::Respond(resp);
    }
    if tenant.faults.fail_until.is_some_and(|t| Instant::now() < t) {
        record(&mut inner, Some(tenant_id), 500);
        return Gate::Respond(api_error(
            500,
            "InternalServerError",
            "An unexpected error occurred. Retry the operation.",
        ));
    }
    if tenant.faults.error_pages > 0 {
        tenant.faults.error_pages -= 1;
        let (status, body) = tenant.faults.error_page.clone();
        record(&mut inner, Some(tenant_id), status);
        let mut resp = axum::response::Response::new(axum::body::Body::from(body));
        *resp.status_mut() = axum::http::StatusCode::from_u16(status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/html"),
        );
        return Gate::Respond(resp);
    }
    if tenant.faults.drop_connections > 0 {
        tenant.faults.drop_connections -= 1;
        record(&mut inner, Some(tenant_id), 200);
        let body = axum::body::Body::new(BrokenBody(false));
        return Gate::Respond(axum::response::Response::new(body));
    }
    let delay = if tenant.faults.slow > 0 {
        tenant.faults.slow -= 1;
        Some(tenant.faults.slow_by)
    } else {
        None
    };
    record(&mut inner, Some(tenant_id.clone()), 200);
    Gate::Serve(tenant_id, inner.requests.len() - 1, delay)
}

/// A 400 for a query the API would refuse, fixing the request's recorded status.
fn bad_request(shared: &Shared, record: usize, message: &str) -> axum::response::Response {
    if let Some(r) = shared.lock().requests.get_mut(record) {
        r.status = 400;
    }
    api_error(400, "BadRequest", message)
}

/// Decoded query pairs of a raw query string.
fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A non-negative integer query parameter (`$skip`, `$skiptoken`), 0 when absent.
// The error is the response to send: returned once per bad request, its size does not matter.
#[allow(clippy::result_large_err)]
fn offset(
    shared: &Shared,
    record: usize,
    query: &[(String, String)],
    name: &str,
) -> Result<usize, axum::response::Response> {
    match param(query, name).map(str::parse::<usize>) {
        None => Ok(0),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(bad_request(shared, record, &format!("Invalid {name}"))),
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `$top`: absent gives `default`, above `max` is a 400 (as at the real APIs).
fn top(query: &[(String, String)], default: usize, max: usize) -> Result<usize, String> {
    match param(query, "$top") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "Invalid $top value '{v}': must be between 1 and {max}"
            )),
        },
    }
}

/// A body that sends the start of a JSON page, then fails: hyper aborts the connection, and the
/// client sees the response break off as with a reset.
struct BrokenBody(bool);

impl hyper::body::Body for BrokenBody {
    type Data = hyper::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "scripted connection drop",
            ))));
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
            hyper::body::Bytes::from_static(b"{\"value\":[{\"id\":\"da"),
        ))))
    }
}

/// `Date` on every answer, from the fake's clock (RFC 9110 §6.6.1, IMF-fixdate).
async fn date_header(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    let offset = *shared
        .clock_offset
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let date = (Utc::now() + offset)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = axum::http::HeaderValue::from_str(&date) {
        resp.headers_mut().insert(axum::http::header::DATE, v);
    }
    resp
}

/// The order a list is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// The service's own order; here, by id.
    Id,
    /// By (lastUpdate, id), ascending.
    TimeAsc,
    /// By (lastUpdate, id), descending.
    TimeDesc,
}

impl Order {
    /// True when `a` (lastUpdate, id) is served before `b`.
    fn before(self, a: (DateTime<Utc>, &str), b: (DateTime<Utc>, &str)) -> bool {
        match self {
            Order::Id => a.1 < b.1,
            Order::TimeAsc => a < b,
            Order::TimeDesc => a > b,
        }
    }
}

/// One page of a list: the matches after the first `offset`, at most `top` of them, and
/// whether more match after it.
struct Page {
    alerts: Vec<Matched>,
    more: bool,
}

/// The faults of `tenant` that change how a list is served.
fn serve_faults(shared: &Shared, tenant_id: &str) -> ServeFaults {
    let inner = shared.lock();
    let Some(tenant) = inner.tenants.get(tenant_id) else {
        return ServeFaults::default();
    };
    ServeFaults {
        page_cap: tenant.faults.page_cap,
        ignore_orderby: tenant.faults.ignore_orderby,
        ignore_skip: tenant.faults.ignore_skip,
    }
}

/// A page of the alerts of `tenant` for `api` matching `filter`, and of the raw objects whose
/// time matches, in `order` (on a tie of the order's key the alert comes before the raw object).
///
/// Only the page is copied. In time order the alerts come from a range scan of the time index,
/// bounded by the filter's time range, and the scan stops one match after the page; in id order
/// every alert is checked, in the id index's order, until then.
fn query_page(
    shared: &Shared,
    tenant_id: &str,
    api: Api,
    filter: &filter::Filter,
    order: Order,
    (offset, top): (usize, usize),
) -> Page {
    use std::ops::Bound;
    let inner = shared.lock();
    let Some(tenant) = inner.tenants.get(tenant_id) else {
        return Page {
            alerts: Vec::new(),
            more: false,
        };
    };
    let field = match api {
        Api::Graph => "lastUpdateDateTime",
        Api::Mde => "lastUpdateTime",
    };
    let mut raw: Vec<Matched> = Vec::new();
    for (i, (at, v)) in tenant.raw.get(&api).into_iter().flatten().enumerate() {
        let mut probe = v.clone();
        if let Some(o) = probe.as_object_mut() {
            o.insert(field.into(), Value::String(at.to_rfc3339()));
        }
        if filter.matches(&probe) {
            raw.push((*at, format!("~raw{i:04}"), Arc::new(v.clone())));
        }
    }
    raw.sort_by(|a, b| match order {
        Order::Id => a.1.cmp(&b.1),
        Order::TimeAsc => (a.0, &a.1).cmp(&(b.0, &b.1)),
        Order::TimeDesc => (b.0, &b.1).cmp(&(a.0, &a.1)),
    });
    let empty = AlertStore::default();
    let store = tenant.alerts.get(&api).unwrap_or(&empty);
    type Item<'a> = (DateTime<Utc>, &'a str, &'a Arc<Value>);
    let alerts: Box<dyn Iterator<Item = Item<'_>>> = match order {
        Order::Id => Box::new(
            store
                .by_id
                .iter()
                .map(|(id, (lu, v))| (*lu, id.as_str(), v)),
        ),
        Order::TimeAsc | Order::TimeDesc => match filter.time_range(field) {
            // BTreeMap::range panics on a start after its end; nothing matches then.
            (Some(from), Some(until)) if from > until => Box::new(std::iter::empty()),
            (from, until) => {
                // `(t, "")` is the smallest key at instant t: from it (included) to
                // `(until, "")` (excluded) is every key in [from, until).
                let lower = from.map_or(Bound::Unbounded, |t| Bound::Included((t, String::new())));
                let upper = until.map_or(Bound::Unbounded, |t| Bound::Excluded((t, String::new())));
                let range = store
                    .by_time
                    .range((lower, upper))
                    .map(|((lu, id), v)| (*lu, id.as_str(), v));
                if order == Order::TimeAsc {
                    Box::new(range)
                } else {
                    Box::new(range.rev())
                }
            }
        },
    };
    let mut alerts = alerts
        .filter(|(lu, _, v)| filter.matches_at(v, Some((field, *lu))))
        .peekable();
    let mut raw = raw
        .iter()
        .map(|(at, id, v)| (*at, id.as_str(), v))
        .peekable();
    let mut merged = std::iter::from_fn(move || match (alerts.peek(), raw.peek()) {
        (Some(a), Some(r)) if order.before((r.0, r.1), (a.0, a.1)) => raw.next(),
        (Some(_), _) => alerts.next(),
        (None, _) => raw.next(),
    });
    let page: Vec<Matched> = merged
        .by_ref()
        .skip(offset)
        .take(top)
        .map(|(lu, id, v)| (lu, id.to_string(), v.clone()))
        .collect();
    Page {
        more: merged.next().is_some(),
        alerts: page,
    }
}

/// The faults that change how a list is served.
#[derive(Clone, Copy, Debug, Default)]
struct ServeFaults {
    page_cap: Option<usize>,
    ignore_orderby: bool,
    ignore_skip: bool,
}

fn record_served(shared: &Shared, tenant_id: &str, api: Api, page: &[Matched]) {
    let mut inner = shared.lock();
    for (lu, id, _) in page.iter().filter(|(_, id, _)| !id.starts_with("~raw")) {
        inner.served.push(Served {
            tenant: tenant_id.to_string(),
            api,
            id: id.clone(),
            last_update: *lu,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The tenant's alerts and raw objects matching `filter` as the fake served them before it
    /// had a time index: everything copied, then sorted.
    fn copy_and_sort(
        tenant: &FakeTenant,
        api: Api,
        filter: &filter::Filter,
        order: Order,
        (offset, top): (usize, usize),
    ) -> (Vec<(DateTime<Utc>, String)>, bool) {
        let field = match api {
            Api::Graph => "lastUpdateDateTime",
            Api::Mde => "lastUpdateTime",
        };
        let mut out: Vec<Matched> = tenant
            .alerts
            .get(&api)
            .into_iter()
            .flat_map(|s| s.by_id.iter())
            .filter(|(_, (lu, v))| filter.matches_at(v, Some((field, *lu))))
            .map(|(id, (lu, v))| (*lu, id.clone(), v.clone()))
            .collect();
        for (i, (at, v)) in tenant.raw.get(&api).into_iter().flatten().enumerate() {
            let mut probe = v.clone();
            if let Some(o) = probe.as_object_mut() {
                o.insert(field.into(), Value::String(at.to_rfc3339()));
            }
            if filter.matches(&probe) {
                out.push((*at, format!("~raw{i:04}"), Arc::new(v.clone())));
            }
        }
        match order {
            Order::Id => out.sort_by(|a, b| a.1.cmp(&b.1)),
            Order::TimeAsc => out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1))),
            Order::TimeDesc => out.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1))),
        }
        let total = out.len();
        let page = out
            .into_iter()
            .skip(offset)
            .take(top)
            .map(|(lu, id, _)| (lu, id))
            .collect();
        (page, offset + top < total)
    }

    /// Pages from the time index are the pages the copy-and-sort fake served, for time windows
    /// with every operator, other terms, `or` groups, empty windows, ties of lastUpdate, updated
    /// alerts and raw objects.
    #[test]
    fn indexed_pages_are_the_copied_and_sorted_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        // Few instants, so that many alerts share one.
        let at = |s: i64| base + chrono::Duration::seconds(s);
        let mut tenant = FakeTenant {
            client_id: String::new(),
            credential: FakeCredential::Secret(String::new()),
            secret_expired: false,
            alerts: HashMap::new(),
            raw: HashMap::new(),
            faults: Faults::default(),
            tokens_valid_after: None,
            roles: None,
        };
        let severities = ["high", "medium", "low"];
        for n in 0..400 {
            // Ids repeat: later versions replace earlier ones, often at another time.
            let id = format!(
                "{}-{:03}",
                ["da", "zz", "~q"][n % 3],
                rng.random_range(0..150)
            );
            let lu = at(rng.random_range(0..40));
            let alert = serde_json::json!({
                "id": id,
                "lastUpdateDateTime": lu.to_rfc3339(),
                "severity": severities[n % 3],
            });
            tenant
                .alerts
                .entry(Api::Graph)
                .or_default()
                .upsert(id, lu, Arc::new(alert));
        }
        let store = &tenant.alerts[&Api::Graph];
        assert_eq!(store.by_id.len(), store.by_time.len());
        for _ in 0..6 {
            let object = serde_json::json!({"title": "no id", "severity": "high"});
            tenant
                .raw
                .entry(Api::Graph)
                .or_default()
                .push((at(rng.random_range(0..40)), object));
        }
        let shared = Shared {
            inner: Mutex::new(Inner::default()),
            base_url: String::new(),
            token_lifetime: Mutex::new(Duration::ZERO),
            latency: Mutex::new(Duration::ZERO),
            clock_offset: Mutex::new(chrono::Duration::zero()),
            waiting: Default::default(),
            most_waiting: Default::default(),
        };
        shared.lock().tenants.insert("t".into(), tenant);
        let field = "lastUpdateDateTime";
        let time = |s: i64| at(s).to_rfc3339();
        let mut filters = vec![String::new()];
        for _ in 0..60 {
            let (a, b) = (rng.random_range(-2..42), rng.random_range(-2..42));
            let ops = ["ge", "gt", "le", "lt", "eq"];
            let mut f = format!("{field} {} {}", ops[rng.random_range(0..5)], time(a));
            if rng.random_bool(0.7) {
                f.push_str(&format!(
                    " and {field} {} {}",
                    ops[rng.random_range(0..5)],
                    time(b)
                ));
            }
            match rng.random_range(0..4) {
                0 => f.push_str(" and (severity eq 'high' or severity eq 'low')"),
                1 => f.push_str(&format!(
                    " and ({field} lt {} or {field} gt {})",
                    time(a),
                    time(b)
                )),
                _ => {}
            }
            filters.push(f);
        }
        let fields = ["lastUpdateDateTime", "severity"];
        let mut pages = 0;
        for text in &filters {
            let filter = filter::Filter::parse(text, &fields).expect("parses");
            for order in [Order::Id, Order::TimeAsc, Order::TimeDesc] {
                for (offset, top) in [(0, 1), (0, 7), (3, 5), (10, 1000), (0, 1000), (500, 3)] {
                    let page = query_page(&shared, "t", Api::Graph, &filter, order, (offset, top));
                    let got: Vec<_> = page
                        .alerts
                        .iter()
                        .map(|(lu, id, _)| (*lu, id.clone()))
                        .collect();
                    let got = (got, page.more);
                    let inner = shared.lock();
                    let want = copy_and_sort(
                        &inner.tenants["t"],
                        Api::Graph,
                        &filter,
                        order,
                        (offset, top),
                    );
                    assert_eq!(got, want, "{text} {order:?} skip {offset} top {top}");
                    pages += usize::from(!got.0.is_empty());
                }
            }
        }
        assert!(pages > 500, "only {pages} pages were not empty");
    }
}
