//! The Defender source: Entra ID sign-in, alert polling per tenant, checkpoints.
//!
//! One [`defender::Poller`] per tenant, each with its own [`auth::EntraTokenProvider`],
//! [`ratelimit::RateLimiter`] and [`checkpoint::Checkpoint`] file, so one tenant's failures never
//! delay another (peers.md §6 "Tenant isolation failures", §7.4).
pub mod auth;
pub mod checkpoint;
pub mod defender;
pub mod http;
pub mod ratelimit;
pub mod tenant;

pub use auth::{AuthError, EntraTokenProvider, TokenProvider};
pub use checkpoint::Checkpoint;
pub use defender::{AlertBatch, Delivery, PollError, Poller, RawAlert};
pub use http::{build_http_client, HttpError, HttpSettings};
pub use tenant::{
    Api, Cloud, Credential, Filters, SecretString, Severity, TenantSettings, UpdatePolicy,
};
