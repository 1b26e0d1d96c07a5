//! defender-bridge: Microsoft Defender alerts to SIEMs over syslog.
pub mod alert;
pub mod format;
pub mod sink;
