//! The Defender source: Entra ID sign-in, alert polling per tenant, checkpoints.
//!
//! One [`defender::Poller`] per tenant, each with its own [`auth::EntraTokenProvider`],
//! [`ratelimit::RateLimiter`] and [`checkpoint::Checkpoint`] file, so one tenant's failures never
//! delay another (peers.md §6 "Tenant isolation failures", §7.4).
//!
//! ```no_run
//! use std::path::Path;
//! use defender_bridge::source::{
//!     build_http_client, AlertBatch, Credential, HttpSettings, PageSink, Poller, Refused,
//!     SecretString, TenantSettings,
//! };
//!
//! /// Prints each page; accepting it lets the tenant's checkpoint move past its alerts.
//! struct Print;
//! impl PageSink for Print {
//!     async fn accept(&self, batch: AlertBatch) -> Result<(), Refused> {
//!         for alert in &batch.alerts {
//!             println!("{} {} {} {}", batch.tenant_name, alert.id, alert.last_update, alert.json.get());
//!         }
//!         Ok(())
//!     }
//! }
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let http = build_http_client(&HttpSettings::default())?;
//! let settings = TenantSettings::new(
//!     "contoso",
//!     "3adb963c-8e61-48e8-a06d-6dbb0dacea39",
//!     "11111111-2222-3333-4444-555555555555",
//!     Credential::Secret(SecretString::new(std::env::var("CONTOSO_SECRET")?)),
//! );
//! let poller = Poller::connect(settings, http, Path::new("/var/lib/defender-bridge"))?;
//! poller.run(Print, tokio_util::sync::CancellationToken::new()).await;
//! # Ok(())
//! # }
//! ```
pub mod auth;
pub mod checkpoint;
pub mod defender;
pub mod http;
pub mod ratelimit;
pub mod tenant;

pub use auth::{AuthError, EntraTokenProvider, TokenProvider};
pub use checkpoint::Checkpoint;
pub use defender::{AlertBatch, PageSink, PollError, Poller, RawAlert, Refused, RejectedAlert};
pub use http::{build_http_client, HttpError, HttpSettings};
pub use tenant::{
    Api, Cloud, Credential, Filters, SecretString, Severity, TenantSettings, UpdatePolicy,
};
