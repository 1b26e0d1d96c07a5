//! defender-bridge: Microsoft Defender for Endpoint alerts of one or many tenants, as CEF, LEEF or
//! JSON records over syslog, for the SIEM that a SOC or an MSSP already runs.
//!
//! The flow (DESIGN.md): a source polls the alert APIs → [`alert::Alert`] → a format
//! ([`format::Formatter`], from `formats/*.toml`) → record bytes → a sink (UDP, TCP, TLS).

pub mod alert;
pub mod backoff;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod dead_letter;
pub mod delivery;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
#[cfg(feature = "demo")]
pub mod fake_api;
pub mod format;
pub mod http_body;
pub mod input;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod pool;
pub mod queue;
pub mod shard;
pub mod sink;
pub mod source;
pub mod state;
pub mod systemd;
pub mod tenants;
pub mod workers;
