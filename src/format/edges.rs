//! Records at the edges (issue 12 §3), checked with the spec parsers (`cef::parse`,
//! `leef::parse`, serde_json) rather than against golden bytes: alerts whose times are
//! `0001-01-01`, `1970-01-01`, `9999-12-31` or either side of the 13-digit epoch
//! (`tests/data/edge-times.ndjson`) go through every built-in format, and each time key of each
//! record is either absent or a time its receivers read right, and the very time the alert has.
//!
//! What "read right" means is written here from formats.md, not taken from the plan: a CEF
//! timestamp key (§1.8 type TimeStamp) holds milliseconds since 1970 in 13 digits (rule 6; SC4S
//! reads shorter ones as seconds, §1.6) or an Appendix A date (`MMM dd yyyy HH:mm:ss[.SSS] zzz`,
//! §1.6) of a year 1970-9999; a LEEF `devTime` sent without `devTimeFormat` is a 10- or 13-digit
//! epoch (§2.4).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::cef::{self, KeyType};
use super::leef;
use super::mapping::Syntax;
use super::{Context, Formatter, BUILTIN};
use crate::alert::{Alert, DecodeError, Timestamp};

const SAMPLE: &str = include_str!("../../tests/data/edge-times.ndjson");

fn alerts() -> Vec<(&'static str, Alert<'static>)> {
    let mut out = Vec::new();
    for line in SAMPLE.lines() {
        match Alert::from_json(line) {
            Ok(a) => out.push((line, a)),
            // The object whose every field but its id is null (README "Which objects are alerts").
            Err(DecodeError::NotAnAlert(_)) => {
                assert!(line.contains(r#""title": null"#), "{line}");
            }
            Err(e) => panic!("{e}: {line}"),
        }
    }
    assert_eq!(out.len(), 6);
    out
}

/// A time as a CEF or LEEF receiver reads it, or why it cannot: an epoch of `digits` digits
/// (ms when 13, s when 10), or an Appendix A date. `Err` for anything else.
fn read_time(v: &str, epoch_widths: &[usize]) -> Result<DateTime<Utc>, String> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return match v.len() {
            n if !epoch_widths.contains(&n) => Err(format!("a {n}-digit epoch")),
            13 => Ok(DateTime::from_timestamp_millis(v.parse().unwrap()).unwrap()),
            10 => Ok(DateTime::from_timestamp(v.parse().unwrap(), 0).unwrap()),
            n => Err(format!("a {n}-digit epoch")),
        };
    }
    let body = v.strip_suffix(" UTC").ok_or("no UTC zone")?;
    let t = NaiveDateTime::parse_from_str(body, "%b %d %Y %H:%M:%S%.3f")
        .or_else(|_| NaiveDateTime::parse_from_str(body, "%b %d %Y %H:%M:%S"))
        .map_err(|e| format!("not an Appendix A date: {e}"))?
        .and_utc();
    // `yyyy` has four digits, and CEF counts from 1970.
    if body.split(' ').nth(2).is_none_or(|y| y.len() != 4) || t.timestamp() < 0 {
        return Err("a year outside 1970-9999".into());
    }
    Ok(t)
}

/// The alert time each built-in record's time key carries.
fn source<'a>(alert: &'a Alert, key: &str) -> Option<&'a Timestamp> {
    match key {
        "rt" | "devTime" => alert.created_date_time.as_ref(),
        "start" => alert.first_activity_date_time.as_ref(),
        "end" => alert.last_activity_date_time.as_ref(),
        "deviceCustomDate1" | "lastUpdateTime" => alert.last_update_date_time.as_ref(),
        _ => None,
    }
}

/// Whether a time can be written at all in the form a key takes: any 13-digit epoch, or (for
/// the date form) any year 1970-9999.
fn writable(t: &DateTime<Utc>, date_form: bool) -> bool {
    let ms = t.timestamp_millis();
    if date_form {
        (0..=253_402_300_799_999).contains(&ms)
    } else {
        (1_000_000_000_000..=9_999_999_999_999).contains(&ms)
    }
}

#[test]
fn edge_times_parse_back_with_the_spec_parsers() {
    let alerts = alerts();
    for (name, src) in BUILTIN {
        let f = Formatter::from_toml(name, src).unwrap();
        // Which time keys take the Appendix A date form (the format files' comments say why).
        let date_form = |key: &str| match *name {
            "splunk" => true,
            "sentinel" => key == "deviceCustomDate1",
            _ => false,
        };
        for (line, alert) in &alerts {
            let mut out = Vec::new();
            f.encode(alert, &Context::default(), 0, None, &mut out)
                .unwrap();
            let record = String::from_utf8(out).unwrap();
            let (pairs, time_keys): (Vec<(String, String)>, Vec<&str>) = match &f.plan().syntax {
                Syntax::Cef(_) => {
                    let (_, pairs) = cef::parse::parse(&record).unwrap();
                    let keys = f
                        .plan()
                        .fields
                        .iter()
                        .map(|x| x.key.as_str())
                        .filter(|k| cef::lookup(k).is_some_and(|i| i.kind == KeyType::Time))
                        .collect();
                    (pairs, keys)
                }
                Syntax::Leef(_) => {
                    let (_, pairs) = leef::parse::parse(&record).unwrap();
                    assert!(pairs.iter().all(|(k, _)| k != "devTimeFormat"), "{record}");
                    (pairs, vec!["devTime", "lastUpdateTime"])
                }
                Syntax::Json => {
                    json_keeps_the_text(line, &record);
                    continue;
                }
            };
            assert_eq!(time_keys.len(), if *name == "qradar" { 2 } else { 4 });
            for key in time_keys {
                let want = source(alert, key)
                    .and_then(Timestamp::valid)
                    .unwrap_or_else(|| panic!("{name}: {key} has no source time"));
                let got = pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                let widths: &[usize] = if key == "devTime" { &[10, 13] } else { &[13] };
                match got {
                    Some(v) => {
                        let t = read_time(v, widths)
                            .unwrap_or_else(|e| panic!("{name} {key}={v}: {e}\n{record}"));
                        // The same instant, to the precision of the form.
                        let precision = if v.contains(':') && !v.contains('.') {
                            1000
                        } else {
                            1
                        };
                        assert_eq!(
                            t.timestamp_millis() / precision,
                            want.timestamp_millis() / precision,
                            "{name} {key}={v} for {want}"
                        );
                    }
                    None => assert!(
                        !writable(want, date_form(key)),
                        "{name}: {key} left out for {want}, which it can carry\n{record}"
                    ),
                }
            }
        }
    }
}

/// The JSON format keeps every time the alert has as the API sent it.
fn json_keeps_the_text(input: &str, record: &str) {
    let i: serde_json::Value = serde_json::from_str(input).unwrap();
    let o: serde_json::Value = serde_json::from_str(record).unwrap();
    for (from, to) in [
        ("createdDateTime", "createdDateTime"),
        ("lastUpdateDateTime", "lastUpdateDateTime"),
        ("firstActivityDateTime", "firstActivityDateTime"),
        ("lastActivityDateTime", "lastActivityDateTime"),
        ("alertCreationTime", "createdDateTime"),
        ("lastUpdateTime", "lastUpdateDateTime"),
        ("firstEventTime", "firstActivityDateTime"),
        ("lastEventTime", "lastActivityDateTime"),
        ("resolvedTime", "resolvedDateTime"),
    ] {
        if let Some(t) = i[from].as_str() {
            assert_eq!(o[to].as_str(), Some(t), "{to} in {record}");
        }
    }
}

/// The reader above refuses what the receivers misread, so a pass means something.
#[test]
fn the_reader_refuses_edge_forms() {
    for bad in [
        "-62135596800000",
        "0",
        "946684799000",
        "253402300799999",
        "Jan 01 0001 00:00:00 UTC",
        "Dec 31 1969 23:59:59.999 UTC",
        "2026-01-02T03:04:05Z",
    ] {
        assert!(read_time(bad, &[13]).is_err(), "{bad}");
    }
    assert!(read_time("1767323045", &[13]).is_err());
    assert!(read_time("1767323045", &[10, 13]).is_ok());
    assert!(read_time("Jan 01 1970 00:00:00.000 UTC", &[13]).is_ok());
}

/// The syslog header passes over a placeholder time for the next one, and then for now: QRadar
/// takes the header's time when `devTime` is absent (formats.md §2.4).
#[test]
fn the_syslog_header_passes_over_edge_times() {
    use super::{header_time, HeaderKind, SyslogHeader};
    let at = |json: &str| header_time(&Alert::from_json(json).unwrap());
    let real = "2026-11-22T07:01:02.030Z";
    for (json, want) in [
        (
            r#"{"id":"a","lastUpdateDateTime":"0001-01-01T00:00:00Z","createdDateTime":"2026-11-22T07:01:02.03Z"}"#,
            Some(real),
        ),
        (
            r#"{"id":"a","lastUpdateDateTime":"2026-11-22T07:01:02.03Z","createdDateTime":"0001-01-01T00:00:00Z"}"#,
            Some(real),
        ),
        (
            r#"{"id":"a","lastUpdateDateTime":"1970-01-01T00:00:00Z"}"#,
            Some("1970-01-01T00:00:00.000Z"),
        ),
        (
            r#"{"id":"a","lastUpdateDateTime":"9999-12-31T23:59:59.9999999Z"}"#,
            Some("9999-12-31T23:59:59.999Z"),
        ),
        (
            r#"{"id":"a","lastUpdateDateTime":"0001-01-01T00:00:00Z"}"#,
            None,
        ),
        (
            r#"{"id":"a","lastUpdateDateTime":"1969-12-31T23:59:59Z","createdDateTime":"0001-01-01T00:00:00Z"}"#,
            None,
        ),
    ] {
        let t = at(json);
        match want {
            Some(w) => assert_eq!(
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                w,
                "{json}"
            ),
            None => assert!((Utc::now() - t).num_seconds().abs() < 60, "{json}: {t}"),
        }
    }
    // And the RFC 5424 header of a QRadar record of the alert created 0001-01-01 says 2026.
    let (_, alert) = &alerts()[3];
    let enc = super::MessageEncoder {
        formatter: std::sync::Arc::new(Formatter::load("qradar").unwrap()),
        header: SyslogHeader::new(HeaderKind::Rfc5424, 20, "c", "defender-bridge")
            .with_clock(super::syslog::Clock::Utc),
        max_message: None,
    };
    let mut out = Vec::new();
    enc.encode(alert, &Context::default(), 0, &mut out).unwrap();
    let msg = String::from_utf8(out).unwrap();
    assert!(
        msg.starts_with("<164>1 2026-11-22T07:01:02.030000Z c defender-bridge - - - LEEF:2.0|"),
        "{msg}"
    );
    assert!(!msg.contains("devTime="), "{msg}");
}
