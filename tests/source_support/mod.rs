//! Shared set-up of the source tests: the HTTPS fake, an HTTPS client trusting its CA, tenants
//! registered on both sides, and a receiver that records and accepts every batch.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use defender_bridge::fake_api::{FakeApi, FakeCredential};
use defender_bridge::source::{
    build_http_client, AlertBatch, Api, Credential, HttpSettings, PageSink, Poller, Refused,
    SecretString, TenantSettings,
};

/// A received alert version: (tenant id, alert id, lastUpdate).
pub type Version = (String, String, DateTime<Utc>);

pub struct Harness {
    pub fake: FakeApi,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn new() -> Harness {
        let fake = FakeApi::start().await.expect("fake API starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = fake.write_ca_file(dir.path()).expect("CA file");
        let http = build_http_client(&HttpSettings {
            extra_ca_file: Some(ca),
            request_timeout: Duration::from_secs(10),
            ..HttpSettings::default()
        })
        .expect("HTTPS client");
        Harness { fake, dir, http }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Registers `tenant_id` with a secret at the fake and returns its settings: short poll
    /// interval, overlap and backoff so the tests run quickly.
    pub fn tenant(&self, name: &str, tenant_id: &str, api: Api) -> TenantSettings {
        let secret = format!("s3cret-{tenant_id}");
        let client_id = "11111111-2222-3333-4444-555555555555";
        self.fake
            .add_tenant(tenant_id, client_id, FakeCredential::Secret(secret.clone()));
        self.settings(
            name,
            tenant_id,
            api,
            Credential::Secret(SecretString::new(secret)),
        )
    }

    pub fn settings(
        &self,
        name: &str,
        tenant_id: &str,
        api: Api,
        credential: Credential,
    ) -> TenantSettings {
        let mut s = TenantSettings::new(
            name,
            tenant_id,
            "11111111-2222-3333-4444-555555555555",
            credential,
        );
        s.api = api;
        s.authority_host = Some(self.fake.base_url());
        s.api_base_url = Some(self.fake.base_url());
        s.poll_interval = Duration::from_millis(100);
        s.overlap = Duration::from_secs(120);
        s.initial_lookback = Duration::from_secs(3600);
        s.page_size = Some(10);
        s.backoff_base = Duration::from_millis(20);
        s.backoff_max = Duration::from_millis(200);
        // The documented limits (100/min for MDE) would make these tests slow; the rate
        // limiter has its own test (source_faults.rs).
        s.rate_limits = Some(vec![(100_000, Duration::from_secs(60))]);
        s
    }

    /// The list requests the fake answered (any status), with their queries.
    pub fn list_requests(&self) -> Vec<defender_bridge::fake_api::RequestRecord> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/alerts" || r.path == "/v1.0/security/alerts_v2")
            .collect()
    }

    pub fn poller(&self, settings: TenantSettings) -> Poller {
        Poller::connect(settings, self.http.clone(), &self.state_dir()).expect("poller")
    }
}

/// A page sink that records what [`Received`] keeps.
#[derive(Clone)]
pub struct Recorder {
    received: Received,
    /// Accept only this many pages.
    accept: Option<usize>,
    hold: bool,
    accepted: Arc<Mutex<usize>>,
}

impl PageSink for Recorder {
    async fn accept(&self, batch: AlertBatch) -> Result<(), Refused> {
        let go_on = {
            let mut n = self.accepted.lock().expect("lock");
            let go_on = self.accept.is_none_or(|max| *n < max);
            if go_on {
                *n += 1;
            }
            go_on
        };
        if !go_on {
            if self.hold {
                std::future::pending::<()>().await;
            }
            return Err(Refused::Again);
        }
        self.received
            .1
            .lock()
            .expect("lock")
            .extend(batch.rejected.iter().map(|r| r.reason.clone()));
        let mut s = self.received.0.lock().expect("lock");
        for a in &batch.alerts {
            // The raw JSON is the alert as served: its id and time agree.
            let v: serde_json::Value =
                serde_json::from_str(a.json.get()).expect("raw alert is JSON");
            assert_eq!(v["id"], a.id.as_str());
            s.push((batch.tenant_id.clone(), a.id.clone(), a.last_update));
        }
        Ok(())
    }
}

/// A page sink that calls `F` with each page, then accepts it.
pub struct OnPage<F>(pub F);

impl<F: Fn(&AlertBatch) + Send + Sync> PageSink for OnPage<F> {
    async fn accept(&self, batch: AlertBatch) -> Result<(), Refused> {
        (self.0)(&batch);
        Ok(())
    }
}

/// Records every delivered alert version (and the reason of every rejected alert object) and
/// accepts the batch.
#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<Version>>>, pub Arc<Mutex<Vec<String>>>);

impl Received {
    /// A page sink that records and accepts every page.
    pub fn channel(&self) -> Recorder {
        Recorder {
            received: self.clone(),
            accept: None,
            hold: false,
            accepted: Arc::new(Mutex::new(0)),
        }
    }

    /// Like [`Received::channel`] for the first `n` pages; later pages are neither recorded
    /// nor accepted: with `hold`, their acceptance is kept pending forever (the process
    /// "hangs" before accepting), otherwise they are refused.
    pub fn channel_accepting(&self, n: usize, hold: bool) -> Recorder {
        Recorder {
            received: self.clone(),
            accept: Some(n),
            hold,
            accepted: Arc::new(Mutex::new(0)),
        }
    }

    pub fn all(&self) -> Vec<Version> {
        self.0.lock().expect("lock").clone()
    }

    pub fn of(&self, tenant: &str) -> Vec<Version> {
        self.all().into_iter().filter(|v| v.0 == tenant).collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// The reasons of the rejected alert objects handed over so far.
    pub fn rejected(&self) -> Vec<String> {
        self.1.lock().expect("lock").clone()
    }
}

/// Asserts no version was received twice and the set equals `expected`.
pub fn assert_exactly(received: &[Version], expected: &BTreeSet<Version>) {
    let set: BTreeSet<Version> = received.iter().cloned().collect();
    assert_eq!(
        set.len(),
        received.len(),
        "duplicates received: {received:#?}"
    );
    let missing: Vec<_> = expected.difference(&set).collect();
    let extra: Vec<_> = set.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nextra {extra:#?}"
    );
}

/// Waits (up to a generous hang guard, not a speed target) until `cond` holds.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `now - secs` seconds, in whole milliseconds (the fake keeps 100 ns precision).
pub fn ago(secs: f64) -> DateTime<Utc> {
    use chrono::SubsecRound;
    (Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64)).trunc_subsecs(3)
}
