//! The Splunk HTTP Event Collector event object around a record (docs.splunk.com "Format
//! events for HTTP Event Collector"): `time` (the alert's lastUpdate, epoch seconds with
//! milliseconds), `host`, `source`, `sourcetype`, `index`, indexed `fields` for tenant and
//! severity, and the record as `event`: a JSON format's record as an object, any other (CEF,
//! LEEF) as a string.

use chrono::{DateTime, Utc};

use super::Context;
use crate::alert::Alert;

/// The sourcetype the Splunk Add-on for Microsoft Security's users know.
pub const DEFAULT_SOURCETYPE: &str = "ms:defender:alert";
pub const DEFAULT_SOURCE: &str = "defender-bridge";

/// A destination's HEC settings for its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HecEnvelope {
    pub source: String,
    pub sourcetype: String,
    pub index: Option<String>,
    /// `host` unless the tenant has its own (`syslog_hostname`).
    pub host: String,
}

impl HecEnvelope {
    /// Appends the event object of `record` (a record of `alert`) to `out`.
    pub fn wrap(
        &self,
        alert: &Alert<'_>,
        ctx: &Context<'_>,
        record: &[u8],
        record_is_json: bool,
        out: &mut Vec<u8>,
    ) {
        out.push(b'{');
        let time = alert
            .last_update()
            .or(alert.created_date_time.as_ref())
            .and_then(|t| t.valid().copied());
        if let Some(t) = time.filter(|t| t.timestamp() >= 0) {
            out.extend_from_slice(b"\"time\":");
            out.extend_from_slice(epoch(t).as_bytes());
            out.push(b',');
        }
        let string = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            // Serialising a str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
            out.push(b',');
        };
        string(out, "host", ctx.hostname.unwrap_or(&self.host));
        string(out, "source", &self.source);
        string(out, "sourcetype", &self.sourcetype);
        if let Some(i) = &self.index {
            string(out, "index", i);
        }
        out.extend_from_slice(b"\"fields\":{");
        let mut fields = Vec::new();
        if let Some(t) = ctx.tenant_name {
            fields.push(("tenant", t));
        }
        if let Some(t) = alert.tenant_id.as_deref() {
            fields.push(("tenantId", t));
        }
        fields.push(("severity", alert.severity.as_str()));
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, k);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, v);
        }
        out.extend_from_slice(b"},\"event\":");
        if record_is_json && serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok() {
            out.extend_from_slice(record);
        } else {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(record));
        }
        out.push(b'}');
    }
}

/// Epoch seconds with milliseconds, as HEC's `time` takes them ("1426279439.123").
fn epoch(t: DateTime<Utc>) -> String {
    format!("{}.{:03}", t.timestamp(), t.timestamp_subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HecEnvelope {
        HecEnvelope {
            source: DEFAULT_SOURCE.into(),
            sourcetype: DEFAULT_SOURCETYPE.into(),
            index: Some("security".into()),
            host: "collector".into(),
        }
    }

    #[test]
    fn an_event_object_carries_time_host_fields_and_the_record() {
        let a = Alert::from_json(r#"{"id":"da1","tenantId":"t1","severity":"high","lastUpdateDateTime":"2026-12-01T10:00:00.1234567Z"}"#).unwrap();
        let ctx = Context {
            tenant_name: Some("contoso"),
            hostname: None,
        };
        for (record, json, want) in [
            (&br#"{"id":"da1"}"#[..], true, r#"{"id":"da1"}"#),
            (
                b"CEF:0|Microsoft|x|y\"z",
                false,
                r#""CEF:0|Microsoft|x|y\"z""#,
            ),
            // A JSON format's record that is not JSON (cannot happen; still valid HEC).
            (b"{broken", true, r#""{broken""#),
        ] {
            let mut out = Vec::new();
            env().wrap(&a, &ctx, record, json, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!(
                    r#"{{"time":1796119200.123,"host":"collector","source":"defender-bridge","sourcetype":"ms:defender:alert","index":"security","fields":{{"tenant":"contoso","tenantId":"t1","severity":"high"}},"event":{want}}}"#
                )
            );
        }
        // A tenant's own host name, and no time before 1970 (HEC then uses its receipt time).
        let old = Alert::from_json(
            r#"{"id":"da2","severity":"low","lastUpdateDateTime":"0001-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        let ctx = Context {
            tenant_name: Some("fabrikam"),
            hostname: Some("fabrikam-host"),
        };
        env().wrap(&old, &ctx, b"{}", true, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("time").is_none(), "{v}");
        assert_eq!(v["host"], "fabrikam-host");
        assert_eq!(v["fields"]["severity"], "low");
    }
}
