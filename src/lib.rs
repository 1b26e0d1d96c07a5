//! defender-bridge: Microsoft Defender alerts to SIEMs over syslog.
pub mod alert;
pub mod fake_api;
pub mod format;
pub mod source;
