//! Runtime settings of one tenant, as the validated config hands them to the source.
//!
//! Plain data: the TOML layer (src/config.rs) fills it in; nothing here parses files.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

/// A secret held in memory. It has no `Display`, and `Debug` prints `***`, so it cannot end up
/// in a log line, an error or `--help` by accident (GUIDE: secrets never appear in logs).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Box<str>);

impl SecretString {
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(secret.into().into_boxed_str())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        SecretString::new(s)
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString::new(s)
    }
}

/// How the app proves who it is to Entra ID (rust-stack.md §1.5).
#[derive(Clone, Debug)]
pub enum Credential {
    /// A client secret (`client_secret` form field).
    Secret(SecretString),
    /// A certificate and its private key as PEM. `key` may be `None` when `cert` holds both.
    CertificatePem { cert: PathBuf, key: Option<PathBuf> },
    /// A PKCS#12 (.pfx/.p12) file holding the key and its certificate.
    CertificatePfx {
        path: PathBuf,
        password: Option<SecretString>,
    },
}

pub use crate::alert::Api;

/// The national cloud a tenant lives in (defender-api.md §1.1 and §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cloud {
    #[default]
    Commercial,
    Gcc,
    GccHigh,
    Dod,
}

impl Cloud {
    /// Entra ID sign-in host. GCC signs in on the commercial host; GCC High and DoD on `.us`
    /// (defender-api.md §1.1, `DD defender-endpoint/gov.md`).
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
        }
    }

    /// API base URL for `api` (defender-api.md §1.1 for MDE, §3.1 "National clouds" for Graph).
    pub fn api_base(self, api: Api) -> &'static str {
        match (api, self) {
            (Api::Graph, Cloud::Commercial | Cloud::Gcc) => "https://graph.microsoft.com",
            (Api::Graph, Cloud::GccHigh) => "https://graph.microsoft.us",
            (Api::Graph, Cloud::Dod) => "https://dod-graph.microsoft.us",
            (Api::Mde, Cloud::Commercial) => "https://api.security.microsoft.com",
            (Api::Mde, Cloud::Gcc) => "https://api-gcc.securitycenter.microsoft.us",
            (Api::Mde, Cloud::GccHigh | Cloud::Dod) => {
                "https://api-gov.securitycenter.microsoft.us"
            }
        }
    }

    /// Token scope for `api`. Commercial MDE uses the documented App ID URI
    /// `https://api.securitycenter.microsoft.com` even on the newer `api.security.microsoft.com`
    /// host (defender-api.md §1.2); for gov clouds the API host is the audience (§1.2, inferred
    /// from community code, §6 "verify in a gov tenant").
    pub fn scope(self, api: Api) -> &'static str {
        match (api, self) {
            (Api::Graph, Cloud::Commercial | Cloud::Gcc) => "https://graph.microsoft.com/.default",
            (Api::Graph, Cloud::GccHigh) => "https://graph.microsoft.us/.default",
            (Api::Graph, Cloud::Dod) => "https://dod-graph.microsoft.us/.default",
            (Api::Mde, Cloud::Commercial) => "https://api.securitycenter.microsoft.com/.default",
            (Api::Mde, Cloud::Gcc) => "https://api-gcc.securitycenter.microsoft.us/.default",
            (Api::Mde, Cloud::GccHigh | Cloud::Dod) => {
                "https://api-gov.securitycenter.microsoft.us/.default"
            }
        }
    }
}

impl Cloud {
    /// The Microsoft Defender portal (defender-api.md §1.1, `DD gov.md`).
    pub fn portal(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://security.microsoft.com",
            Cloud::GccHigh => "https://security.microsoft.us",
            Cloud::Dod => "https://security.apps.mil",
        }
    }

    /// An alert's page in the portal, tenant-specific (`?tid=`) as MSSP analysts need it
    /// (defender-api.md §2.6, §4.3).
    pub fn alert_link(self, alert_id: &str, tenant_id: &str) -> String {
        format!("{}/alerts/{alert_id}?tid={tenant_id}", self.portal())
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cloud::Commercial => "commercial",
            Cloud::Gcc => "gcc",
            Cloud::GccHigh => "gcc-high",
            Cloud::Dod => "dod",
        })
    }
}

pub use crate::alert::Severity;

/// Server-side filters, pushed into `$filter` (defender-api.md §1.4, §3.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only alerts of this severity or higher.
    pub min_severity: Option<Severity>,
    /// Graph only: `serviceSource` values to keep, e.g. `microsoftDefenderForEndpoint`.
    /// Empty keeps all. (MDE alerts all come from Defender for Endpoint.)
    pub service_sources: Vec<String>,
}

/// Which versions of an alert are forwarded (peers.md §7.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpdatePolicy {
    /// Every version (every distinct lastUpdate time) of every alert.
    #[default]
    All,
    /// Only the first version seen of each alert id.
    First,
    /// The first version, then only versions whose status, classification or determination
    /// changed.
    Status,
}

/// Everything the source needs to poll one tenant.
#[derive(Clone, Debug)]
pub struct TenantSettings {
    /// The configured name, used in logs, errors and records.
    pub name: String,
    /// Entra tenant id (GUID or verified domain).
    pub tenant_id: String,
    /// Application (client) id of the MSSP's multi-tenant app.
    pub client_id: String,
    pub credential: Credential,
    pub api: Api,
    pub cloud: Cloud,
    /// Overrides the cloud's sign-in host (must be https; the tests use https://localhost:PORT).
    pub authority_host: Option<Url>,
    /// Overrides the cloud's API base URL.
    pub api_base_url: Option<Url>,
    pub filters: Filters,
    /// Time from the start of one poll to the start of the next.
    pub poll_interval: Duration,
    /// How far back before the cursor each poll looks again, for alerts that become visible late
    /// (peers.md §6 "Missed alerts": they show up minutes after their lastUpdate time).
    pub overlap: Duration,
    /// On the very first run (no checkpoint), start at now minus this.
    pub initial_lookback: Duration,
    /// `$top`; `None` for the API's maximum, which is also its default here: Graph allows
    /// 1,000, MDE 10,000 (defender-api.md §1.4, §3.1). Large pages make a burst of alerts cost
    /// few requests under MDE's 100/min and 1,500/h.
    pub page_size: Option<u32>,
    pub update_policy: UpdatePolicy,
    /// How long per-alert policy state (`first`, `status`) is kept after an alert's last update.
    pub policy_retention: Duration,
    /// Requests allowed per period; `None` uses the API's documented limits
    /// (Graph 150/min, MDE 100/min and 1,500/h — defender-api.md §0).
    pub rate_limits: Option<Vec<(u32, Duration)>>,
    /// First delay after a 5xx, timeout or connection error; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Largest response body read for a page (issue 8 §11). A larger page is an error and the
    /// next request asks for half as many alerts.
    pub max_page_bytes: usize,
    /// When the client secret expires, if the operator wrote it down (`secret_expires`): Entra
    /// does not say until it has expired (AADSTS7000222).
    pub secret_expires: Option<DateTime<Utc>>,
}

impl TenantSettings {
    /// Settings with the documented defaults; the caller fills in the rest.
    pub fn new(
        name: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        credential: Credential,
    ) -> Self {
        TenantSettings {
            name: name.into(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            credential,
            api: Api::Graph,
            cloud: Cloud::Commercial,
            authority_host: None,
            api_base_url: None,
            filters: Filters::default(),
            poll_interval: Duration::from_secs(60),
            overlap: Duration::from_secs(10 * 60),
            initial_lookback: Duration::from_secs(24 * 3600),
            page_size: None,
            update_policy: UpdatePolicy::All,
            policy_retention: Duration::from_secs(30 * 24 * 3600),
            rate_limits: None,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(5 * 60),
            // 10,000 MDE alerts with evidence are some tens of MB.
            max_page_bytes: 256 * 1024 * 1024,
            secret_expires: None,
        }
    }

    /// Sign-in host: the override or the cloud's.
    pub fn authority_host(&self) -> String {
        match &self.authority_host {
            Some(url) => url.as_str().trim_end_matches('/').to_string(),
            None => self.cloud.authority_host().to_string(),
        }
    }

    /// API base URL without a trailing slash: the override or the cloud's.
    pub fn api_base(&self) -> String {
        match &self.api_base_url {
            Some(url) => url.as_str().trim_end_matches('/').to_string(),
            None => self.cloud.api_base(self.api).to_string(),
        }
    }

    pub fn scope(&self) -> &'static str {
        self.cloud.scope(self.api)
    }

    /// `$top` in effect: the configured size within the API's maximum.
    pub fn page_size(&self) -> u32 {
        let max = match self.api {
            Api::Graph => 1_000,
            Api::Mde => 10_000,
        };
        self.page_size.unwrap_or(max).clamp(1, max)
    }

    /// The limits the rate limiter keeps under.
    pub fn rate_limits(&self) -> Vec<(u32, Duration)> {
        match (&self.rate_limits, self.api) {
            (Some(limits), _) => limits.clone(),
            // defender-api.md §3.1: 150 requests per minute per app per tenant.
            (None, Api::Graph) => vec![(150, Duration::from_secs(60))],
            // defender-api.md §1.5: 100 calls per minute and 1,500 calls per hour.
            (None, Api::Mde) => vec![
                (100, Duration::from_secs(60)),
                (1500, Duration::from_secs(3600)),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let c = Credential::Secret(SecretString::new("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn cloud_endpoints_follow_the_gov_table() {
        assert_eq!(
            Cloud::Gcc.authority_host(),
            "https://login.microsoftonline.com"
        );
        assert_eq!(
            Cloud::Dod.api_base(Api::Graph),
            "https://dod-graph.microsoft.us"
        );
        assert_eq!(
            Cloud::GccHigh.api_base(Api::Mde),
            "https://api-gov.securitycenter.microsoft.us"
        );
        assert_eq!(
            Cloud::Gcc.scope(Api::Mde),
            "https://api-gcc.securitycenter.microsoft.us/.default"
        );
    }

    #[test]
    fn severity_and_above() {
        let v: Vec<_> = Severity::Medium.and_above().cloned().collect();
        assert_eq!(v, [Severity::Medium, Severity::High]);
        let names: Vec<_> = Severity::Low
            .and_above()
            .map(|s| s.api_name(Api::Mde))
            .collect();
        assert_eq!(names, ["Low", "Medium", "High"]);
        assert_eq!(Severity::Informational.and_above().count(), 4);
    }
}
