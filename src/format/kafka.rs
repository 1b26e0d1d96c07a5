//! A Kafka message around a record: the record as the value, `tenantId:alertId` as the key (so
//! that one alert's versions land in one partition and keep their order there), headers for
//! the tenant, its id, the severity and the alert's lastUpdate, and the lastUpdate as the
//! message timestamp (issue 12 §2).
//!
//! The writer's queue carries bytes, so the output packs these parts into one buffer
//! ([`KafkaEnvelope::wrap`]) and the Kafka writer unpacks them ([`unpack`]). The packing is
//! internal to this process (never stored, never sent): length-prefixed parts,
//! `u32 key | u8 headers × (u8 name, u32 value) | i64 timestamp ms | value`.

use chrono::SecondsFormat;

use super::Context;
use crate::alert::Alert;

/// Bytes the envelope adds around a record at most (key, headers, lengths; names and ids are
/// far shorter than this, and longer ones are cut).
pub const ENVELOPE_ROOM: usize = 2048;
/// Longest key or header value kept (ids and names are far shorter; a hostile one is cut).
const MAX_PART: usize = 512;

/// Makes Kafka messages of records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KafkaEnvelope;

/// One message's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMessage<'a> {
    pub key: &'a [u8],
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Milliseconds since the epoch; `None`: the broker's time (the alert has no valid time).
    pub timestamp_ms: Option<i64>,
    pub value: &'a [u8],
}

impl KafkaEnvelope {
    /// Appends the packed message of `record` (a record of `alert`) to `out`.
    pub fn wrap(&self, alert: &Alert<'_>, ctx: &Context<'_>, record: &[u8], out: &mut Vec<u8>) {
        let tenant_id = alert.tenant_id.as_deref().or(ctx.tenant_name).unwrap_or("");
        let key = format!("{}:{}", cut(tenant_id), cut(&alert.id));
        put(out, key.as_bytes());
        // Dates before 1970 (the "no date" 0001-01-01 some APIs send) are absent, as in the
        // CEF and LEEF formats (issue 12 §3).
        let valid = |t: &crate::alert::Timestamp| t.valid().copied().filter(|t| t.timestamp() >= 0);
        let time = alert
            .last_update()
            .and_then(valid)
            .or_else(|| alert.created_date_time.as_ref().and_then(valid));
        let last_update = alert
            .last_update()
            .and_then(valid)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(4);
        if let Some(t) = ctx.tenant_name {
            headers.push(("tenant", t));
        }
        if let Some(t) = alert.tenant_id.as_deref() {
            headers.push(("tenantId", t));
        }
        headers.push(("severity", alert.severity.as_str()));
        if let Some(t) = &last_update {
            headers.push(("lastUpdate", t));
        }
        out.push(headers.len() as u8);
        for (name, value) in headers {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            put(out, cut(value).as_bytes());
        }
        out.extend_from_slice(&time.map_or(-1, |t| t.timestamp_millis()).to_be_bytes());
        out.extend_from_slice(record);
    }
}

/// A key or header value cut to [`MAX_PART`] bytes at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_PART {
        return s;
    }
    let mut end = MAX_PART;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The parts of a message packed by [`KafkaEnvelope::wrap`]; `None` if `msg` is not one.
pub fn unpack(msg: &[u8]) -> Option<KafkaMessage<'_>> {
    let mut rest = msg;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let len = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let key_len = len(take(4)?);
    let key = take(key_len)?;
    let count = take(1)?[0];
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name_len = usize::from(take(1)?[0]);
        let name = std::str::from_utf8(take(name_len)?).ok()?;
        let value_len = len(take(4)?);
        headers.push((name, take(value_len)?));
    }
    let t = take(8)?;
    let ms = i64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    Some(KafkaMessage {
        key,
        headers,
        timestamp_ms: (ms >= 0).then_some(ms),
        value: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(json: &str, tenant: Option<&str>, record: &[u8]) -> Vec<u8> {
        let a = Alert::from_json(json).unwrap();
        let ctx = Context {
            tenant_name: tenant,
            hostname: None,
        };
        let mut out = Vec::new();
        KafkaEnvelope.wrap(&a, &ctx, record, &mut out);
        out
    }

    #[test]
    fn a_message_has_the_key_headers_time_and_record() {
        for (json, tenant, key, headers, ms) in [
            (
                r#"{"id":"da1","tenantId":"t1","severity":"high","lastUpdateDateTime":"2026-12-01T10:00:00.1234567Z"}"#,
                Some("contoso"),
                "t1:da1",
                vec![
                    ("tenant", "contoso"),
                    ("tenantId", "t1"),
                    ("severity", "high"),
                    ("lastUpdate", "2026-12-01T10:00:00.123456700Z"),
                ],
                Some(1_796_119_200_123),
            ),
            // No tenant id in the alert (MDE): the tenant's name keys it; no valid time: the
            // broker's.
            (
                r#"{"id":"da2","severity":"low","lastUpdateDateTime":"0001-01-01T00:00:00Z"}"#,
                Some("fabrikam"),
                "fabrikam:da2",
                vec![("tenant", "fabrikam"), ("severity", "low")],
                None,
            ),
            (
                r#"{"id":"da3","title":"t"}"#,
                None,
                ":da3",
                vec![("severity", "unknown")],
                None,
            ),
        ] {
            let packed = pack(json, tenant, b"{\"id\":1}");
            let m = unpack(&packed).unwrap();
            assert_eq!(m.key, key.as_bytes(), "{json}");
            let got: Vec<(&str, &str)> = m
                .headers
                .iter()
                .map(|(k, v)| (*k, std::str::from_utf8(v).unwrap()))
                .collect();
            assert_eq!(got, headers, "{json}");
            assert_eq!(m.timestamp_ms, ms, "{json}");
            assert_eq!(m.value, b"{\"id\":1}");
        }
    }

    #[test]
    fn hostile_ids_are_cut_and_anything_else_is_not_a_message() {
        let id = "é".repeat(600);
        let packed = pack(&format!(r#"{{"id":"{id}","title":"t"}}"#), None, b"r");
        let m = unpack(&packed).unwrap();
        let key = std::str::from_utf8(m.key).unwrap();
        assert!(key.len() <= MAX_PART + 1 && key.starts_with(":é"), "{key}");
        assert!(packed.len() < ENVELOPE_ROOM);
        for bad in [&b""[..], b"\xff\xff\xff\xff", b"\0\0\0\x01k\x05"] {
            assert_eq!(unpack(bad), None);
        }
    }
}
