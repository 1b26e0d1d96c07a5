//! defender-bridge: Microsoft Defender alerts to SIEMs over syslog.
pub mod alert;
pub mod format;
pub mod fake_api;
pub mod source;
