//! Format mappers: an [`Alert`] becomes one record (or one per evidence item) for one SIEM.
//!
//! The format file (`formats/*.toml`, compiled into a [`mapping::Plan`] once) says what goes
//! where; the encoders ([`cef`], [`leef`], [`json`]) apply their syntax's escaping and length
//! rules; [`syslog`] writes the header that goes in front. Format and framing are kept apart:
//! framing is the transport's business (`sink`).

pub mod cef;
#[cfg(test)]
mod edges;
#[cfg(test)]
mod fuzz;
pub mod hec;
pub mod json;
pub mod kafka;
pub mod leef;
pub mod mapping;
pub mod path;
pub mod stamp;
pub mod syslog;
pub mod text;

use std::borrow::Cow;

use chrono::Utc;

use crate::alert::Alert;
use mapping::{Check, Field};
pub use mapping::{Context, FormatError, Plan, Syntax};
pub use syslog::{HeaderKind, SyslogHeader};

/// The built-in formats: name and file, compiled into the binary.
pub static BUILTIN: &[(&str, &str)] = &[
    ("arcsight", include_str!("../../formats/arcsight.toml")),
    ("sentinel", include_str!("../../formats/sentinel.toml")),
    ("splunk", include_str!("../../formats/splunk.toml")),
    ("qradar", include_str!("../../formats/qradar.toml")),
    ("json", include_str!("../../formats/json.toml")),
];

/// A value is never cut below this many characters to make a record fit.
const MIN_KEEP_CHARS: usize = 16;

/// Why a record could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("the record is {size} bytes even after cutting every value that may be cut; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// What encoding one record did besides writing it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Values cut short, to their key's maximum length or to make the record fit.
    pub truncated: u32,
}

/// A loaded format: its name and compiled plan.
#[derive(Debug, Clone)]
pub struct Formatter {
    name: String,
    plan: Plan,
}

impl Formatter {
    /// A built-in format by name, or a format file by path.
    pub fn load(name_or_path: &str) -> Result<Formatter, FormatError> {
        if let Some((name, src)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Formatter::from_toml(name, src);
        }
        let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        let src = std::fs::read_to_string(name_or_path).map_err(|e| FormatError {
            origin: name_or_path.to_string(),
            line: None,
            message: if looks_like_path {
                format!("cannot read the format file: {e}")
            } else {
                format!(
                    "no built-in format of that name ({}) and no such file: {e}",
                    BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        })?;
        Formatter::from_toml(name_or_path, &src)
    }

    /// Compiles a format file's text; `origin` names it in errors.
    pub fn from_toml(origin: &str, src: &str) -> Result<Formatter, FormatError> {
        let plan = mapping::compile(origin, src)?;
        let name = std::path::Path::new(origin)
            .file_stem()
            .map_or_else(|| origin.to_string(), |s| s.to_string_lossy().into_owned());
        Ok(Formatter { name, plan })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// How many records an alert makes: one, or one per evidence item (at least one, so an
    /// alert without evidence is never dropped).
    pub fn record_count(&self, alert: &Alert) -> usize {
        if self.plan.per_evidence {
            alert.evidence.len().max(1)
        } else {
            1
        }
    }

    /// The RFC 3164 TAG this format's records take: none for CEF and LEEF (formats.md rule 11).
    pub fn syslog_tag(&self) -> Option<&'static str> {
        match self.plan.syntax {
            Syntax::Json => Some("defender-bridge"),
            _ => None,
        }
    }

    /// Whether its records are JSON (a HEC event takes them as objects, others as strings).
    pub fn is_json(&self) -> bool {
        matches!(self.plan.syntax, Syntax::Json)
    }

    /// Appends record `index` (see [`record_count`](Self::record_count)) of `alert` to `out`.
    /// With `limit`, values are cut, least important and longest first, until the record fits
    /// in `limit` bytes; a record that cannot fit leaves `out` as it was.
    pub fn encode(
        &self,
        alert: &Alert,
        ctx: &Context<'_>,
        index: usize,
        limit: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<Encoded, EncodeError> {
        let current = if self.plan.per_evidence {
            alert.evidence.get(index)
        } else {
            None
        };
        if matches!(self.plan.syntax, Syntax::Json) && self.plan.fields.is_empty() {
            return encode_whole_alert(alert, ctx, limit, out);
        }
        let mut stats = Encoded::default();
        let mut rec = self.evaluate(alert, ctx, current, &mut stats);
        let start = out.len();
        loop {
            self.write(&rec, out);
            let size = out.len() - start;
            match limit {
                Some(limit) if size > limit => {
                    out.truncate(start);
                    if !self.shrink(&mut rec, size - limit) {
                        return Err(EncodeError::TooLarge { size, limit });
                    }
                    stats.truncated += 1;
                }
                _ => return Ok(stats),
            }
        }
    }

    /// Every value of one record, cleaned and cut to its key's length.
    fn evaluate<'a>(
        &'a self,
        alert: &'a Alert,
        ctx: &Context<'a>,
        current: Option<&'a crate::alert::Evidence>,
        stats: &mut Encoded,
    ) -> Record<'a> {
        let (header_max, fallback): (&[usize], &[&str]) = match &self.plan.syntax {
            Syntax::Cef(_) => (
                &cef::HEADER_MAX_LEN,
                &[
                    "Unknown",
                    "Unknown",
                    "0",
                    "unknown",
                    "Defender alert",
                    "Unknown",
                ],
            ),
            Syntax::Leef(_) => (
                &leef::HEADER_MAX_LEN,
                &["Unknown", "Unknown", "0", "unknown"],
            ),
            Syntax::Json => (&[], &[]),
        };
        // Six fields at most (CEF): an array, not one more allocation per record.
        let mut header: [Cow<'a, str>; 6] = Default::default();
        for (i, v) in self.plan.header.iter().enumerate() {
            let mut value = v
                .eval(alert, ctx, current, &|_| true)
                .unwrap_or(Cow::Borrowed(fallback[i]));
            if let Some(&max) = header_max.get(i) {
                if text::truncate_chars(&mut value, max) {
                    stats.truncated += 1;
                }
            }
            // CEF severity: 0-10 or a word, else Unknown (formats.md §1.3).
            if i == 5 && !cef::valid_severity(&value) {
                value = Cow::Borrowed("Unknown");
            }
            header[i] = value;
        }
        let mut items = Vec::with_capacity(self.plan.fields.len().min(ITEMS_ROOM));
        for (i, f) in self.plan.fields.iter().enumerate() {
            let Some(mut value) = f.value.eval(alert, ctx, current, &|v| f.check.passes(v)) else {
                continue;
            };
            if let Some(max) = f.max_chars {
                if text::truncate_chars(&mut value, max) {
                    stats.truncated += 1;
                }
            }
            items.push(Item { field: i, value });
        }
        Record { header, items }
    }

    fn write(&self, rec: &Record<'_>, out: &mut Vec<u8>) {
        let fields = &self.plan.fields;
        let pairs = rec.items.iter().flat_map(|it| {
            let f: &Field = &fields[it.field];
            let label = f.label.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
            label
                .into_iter()
                .chain(std::iter::once((f.key.as_str(), &*it.value)))
        });
        match &self.plan.syntax {
            Syntax::Cef(pipes) => {
                let h: [&str; 6] = std::array::from_fn(|i| &*rec.header[i]);
                cef::write_record(out, &h, *pipes, pairs);
            }
            Syntax::Leef(dialect) => {
                let h: [&str; 4] = std::array::from_fn(|i| &*rec.header[i]);
                leef::write_record(out, dialect, &h, pairs);
            }
            Syntax::Json => json::write_object(
                out,
                rec.items.iter().map(|it| {
                    let f = &fields[it.field];
                    (f.key.as_str(), &*it.value, f.check == Check::Integer)
                }),
            ),
        }
    }

    /// Cuts the least important, longest value that can still give up bytes. Returns false
    /// when no value can.
    fn shrink(&self, rec: &mut Record<'_>, excess: usize) -> bool {
        let escaped_len = |c: char| -> usize {
            match &self.plan.syntax {
                Syntax::Cef(_) => cef::ext_escaped_len(c),
                Syntax::Leef(d) => d.escaped_len(c),
                Syntax::Json => json::escaped_len(c),
            }
        };
        let fields = &self.plan.fields;
        let mut candidates: Vec<(u8, usize, &mut Item<'_>)> = rec
            .items
            .iter_mut()
            .filter(|it| {
                fields[it.field].check == Check::Any
                    && it.value.chars().nth(MIN_KEEP_CHARS).is_some()
            })
            .map(|it| {
                let len: usize = it.value.chars().map(escaped_len).sum();
                (fields[it.field].importance, len, it)
            })
            .collect();
        candidates.sort_by_key(|(importance, len, _)| (*importance, std::cmp::Reverse(*len)));
        for (_, len, item) in candidates {
            let floor: usize = item
                .value
                .chars()
                .take(MIN_KEEP_CHARS)
                .map(escaped_len)
                .sum::<usize>()
                + escaped_len(text::TRUNCATION_MARK);
            let target = len.saturating_sub(excess).max(floor);
            let mut cut = item.value.clone();
            if text::truncate_to_escaped_bytes(&mut cut, target, escaped_len)
                && cut.chars().map(escaped_len).sum::<usize>() < len
            {
                item.value = cut;
                return true;
            }
        }
        false
    }
}

/// Room for this many values of a record at first: 32 items of 32 bytes are 1,024 bytes, within
/// glibc's per-thread cache of small blocks (up to 1,032 bytes), which hands them out in a few
/// instructions; the 33 of `arcsight` (1,056 bytes) went to the general allocator (callgrind,
/// `profile_encode` of an MDE alert: 378 instructions more per record, of about 43,000). A
/// record of more values than this grows once.
const ITEMS_ROOM: usize = 32;

struct Record<'a> {
    header: [Cow<'a, str>; 6],
    items: Vec<Item<'a>>,
}

struct Item<'a> {
    field: usize,
    value: Cow<'a, str>,
}

fn encode_whole_alert(
    alert: &Alert,
    ctx: &Context<'_>,
    limit: Option<usize>,
    out: &mut Vec<u8>,
) -> Result<Encoded, EncodeError> {
    let start = out.len();
    json::write_alert(out, alert, ctx.tenant_name);
    let size = out.len() - start;
    let Some(limit) = limit.filter(|l| size > *l) else {
        return Ok(Encoded::default());
    };
    // Too big: cut the longest free texts of a copy until it fits.
    out.truncate(start);
    let mut copy = alert.clone();
    let mut stats = Encoded::default();
    let mut size = size;
    let escaped = |s: &str| s.chars().map(json::escaped_len).sum::<usize>();
    loop {
        let excess = size - limit;
        let mut cut_one = false;
        for text in json::cuttable_texts(&mut copy) {
            if text.chars().nth(MIN_KEEP_CHARS).is_none() {
                continue;
            }
            let len = escaped(text);
            let floor = text
                .chars()
                .take(MIN_KEEP_CHARS)
                .map(json::escaped_len)
                .sum::<usize>()
                + json::escaped_len(text::TRUNCATION_MARK);
            let mut value = Cow::Borrowed(text.as_ref());
            if text::truncate_to_escaped_bytes(
                &mut value,
                len.saturating_sub(excess).max(floor),
                json::escaped_len,
            ) && escaped(&value) < len
            {
                *text = Cow::Owned(value.into_owned());
                cut_one = true;
                break;
            }
        }
        if !cut_one {
            return Err(EncodeError::TooLarge { size, limit });
        }
        stats.truncated += 1;
        json::write_alert(out, &copy, ctx.tenant_name);
        size = out.len() - start;
        if size <= limit {
            return Ok(stats);
        }
        out.truncate(start);
    }
}

/// A [`Formatter`] with a syslog header and a size limit: whole syslog messages for one
/// destination.
#[derive(Debug, Clone)]
pub struct MessageEncoder {
    pub formatter: std::sync::Arc<Formatter>,
    pub header: SyslogHeader,
    /// Largest message, header included.
    pub max_message: Option<usize>,
}

impl MessageEncoder {
    /// Appends message `index` of `alert` (header and record) to `out`.
    pub fn encode(
        &self,
        alert: &Alert,
        ctx: &Context<'_>,
        index: usize,
        out: &mut Vec<u8>,
    ) -> Result<Encoded, EncodeError> {
        let start = out.len();
        let time = header_time(alert);
        self.header.write_as(
            out,
            ctx.hostname,
            syslog::syslog_severity(&alert.severity),
            time,
            self.formatter.syslog_tag(),
        );
        let header_len = out.len() - start;
        let limit = self.max_message.map(|m| m.saturating_sub(header_len));
        match self.formatter.encode(alert, ctx, index, limit, out) {
            Ok(e) => Ok(e),
            Err(EncodeError::TooLarge { size, .. }) => {
                out.truncate(start);
                Err(EncodeError::TooLarge {
                    size: size + header_len,
                    // The configured limit (there is one, or nothing is too large): when the
                    // header alone is longer, the record's limit plus the header is not it
                    // (`format::fuzz` checks it).
                    limit: self.max_message.unwrap_or(header_len),
                })
            }
        }
    }
}

/// The time a record's syslog header carries: the alert's lastUpdate, else its created time,
/// else now. A time outside 1970-9999 is a placeholder (`0001-01-01`, issue 12 §3) and passed
/// over like a missing one: QRadar and SC4S fall back to the header's time when a record has
/// none of its own (formats.md §1.6, §2.4), so the header must not carry year 1.
pub fn header_time(alert: &Alert) -> chrono::DateTime<Utc> {
    [alert.last_update(), alert.created_date_time.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|t| t.valid().copied())
        .find(mapping::is_calendar_time)
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alert_with(title: &str, description: &str, command_line: &str) -> Alert<'static> {
        let json = serde_json::json!({
            "id": "da-prop-1",
            "tenantId": "t-1",
            "title": title,
            "description": description,
            "severity": "high",
            "createdDateTime": "2026-01-02T03:04:05.678Z",
            "lastUpdateDateTime": "2026-01-02T03:05:00Z",
            "evidence": [{
                "@odata.type": "#microsoft.graph.security.processEvidence",
                "processCommandLine": command_line,
                "imageFile": {"fileName": "x.exe"}
            }]
        });
        Alert::from_json(&json.to_string()).unwrap().into_owned()
    }

    fn expected(v: &str, max: usize) -> Option<String> {
        let mut c = text::clean(v)?;
        text::truncate_chars(&mut c, max);
        Some(c.into_owned())
    }

    fn record(
        format: &str,
        alert: &Alert,
        limit: Option<usize>,
    ) -> Result<(String, Encoded), EncodeError> {
        let f = Formatter::load(format).unwrap();
        let mut out = Vec::new();
        let e = f.encode(
            alert,
            &Context {
                tenant_name: Some("acme"),
                hostname: None,
            },
            0,
            limit,
            &mut out,
        )?;
        Ok((String::from_utf8(out).unwrap(), e))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        // Whatever the alert's text holds, the CEF record decodes (with a parser written from the
        // standard) to exactly the cleaned, truncated values, under their own keys, with no
        // extra key, no extra header field and no second record.
        #[test]
        fn cef_values_cannot_forge(title in ".*", desc in ".*", cmd in ".*") {
            let alert = alert_with(&title, &desc, &cmd);
            for format in ["arcsight", "sentinel"] {
                let (text, _) = record(format, &alert, None).unwrap();
                prop_assert!(!text.contains(['\n', '\r']));
                let (header, pairs) = cef::parse::parse(&text).map_err(TestCaseError::fail)?;
                prop_assert_eq!(header.len(), 7);
                let want_name = expected(&title, 512).unwrap_or_else(|| "Microsoft Defender alert".into());
                prop_assert_eq!(&header[5], &want_name.replace(['\r', '\n'], " "));
                let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                prop_assert_eq!(get("msg"), expected(&desc, 1023));
                if format == "sentinel" {
                    prop_assert_eq!(get("MicrosoftDefenderCommandLine"), expected(&cmd, 1023));
                }
                let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                let n = keys.len();
                keys.sort();
                keys.dedup();
                prop_assert_eq!(keys.len(), n, "a key appears twice");
                let plan = Formatter::load(format).unwrap().plan;
                for k in keys {
                    prop_assert!(
                        plan.fields.iter().any(|f| f.key == k || f.label.as_ref().is_some_and(|(l, _)| l == k)),
                        "unexpected key {k}"
                    );
                }
            }
        }

        #[test]
        fn leef_values_cannot_forge(title in ".*", desc in ".*", cmd in ".*") {
            let alert = alert_with(&title, &desc, &cmd);
            let (text, _) = record("qradar", &alert, None).unwrap();
            let (header, pairs) = leef::parse::parse(&text).map_err(TestCaseError::fail)?;
            prop_assert_eq!(header.len(), 5);
            let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let leefed = |v: Option<String>| v.map(|v| v.replace('^', "\u{FF3E}").replace(['\r', '\n'], " "));
            prop_assert_eq!(get("title"), leefed(expected(&title, usize::MAX)));
            prop_assert_eq!(get("description"), leefed(expected(&desc, 2000)));
            prop_assert_eq!(get("commandLine"), leefed(expected(&cmd, usize::MAX)));
            let n = pairs.len();
            let mut keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), n);
        }

        #[test]
        fn json_values_round_trip(title in ".*", desc in ".*") {
            let alert = alert_with(&title, &desc, "c");
            let (text, _) = record("json", &alert, None).unwrap();
            prop_assert!(!text.contains(['\n', '\r']));
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(v["title"].as_str(), alert.title.as_deref());
            prop_assert_eq!(v["description"].as_str(), alert.description.as_deref());
        }

        // With a size limit every record fits, and the important keys survive whole.
        #[test]
        fn records_fit_the_limit(desc in ".{0,3000}", cmd in ".{0,3000}", limit in 700usize..3000) {
            let alert = alert_with("Suspicious process", &desc, &cmd);
            for format in ["arcsight", "sentinel", "splunk", "qradar", "json"] {
                match record(format, &alert, Some(limit)) {
                    Ok((text, _)) => {
                        prop_assert!(text.len() <= limit, "{format}: {} > {limit}", text.len());
                        prop_assert!(text.contains("da-prop-1"), "{format}: the id was cut");
                    }
                    Err(EncodeError::TooLarge { .. }) => prop_assert!(false, "{format}: could not fit {limit}"),
                }
            }
        }
    }

    #[test]
    fn least_important_longest_value_is_cut_first() {
        let desc = "d".repeat(900);
        let cmd = "c".repeat(900);
        let alert = alert_with("t", &desc, &cmd);
        let (full, e) = record("sentinel", &alert, None).unwrap();
        assert_eq!(e.truncated, 0);
        // Description has importance 2, the command line 3: 400 bytes come off the description.
        let (cut, e) = record("sentinel", &alert, Some(full.len() - 400)).unwrap();
        assert_eq!(cut.len(), full.len() - 400);
        assert_eq!(e.truncated, 1);
        let (_, pairs) = cef::parse::parse(&cut).unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("msg"), format!("{}…", "d".repeat(497)));
        assert_eq!(get("MicrosoftDefenderCommandLine"), cmd);
        // Asking for more than the description can give (it keeps 16 characters) cuts the
        // command line too.
        let (cut, e) = record("sentinel", &alert, Some(full.len() - 1200)).unwrap();
        assert!(cut.len() <= full.len() - 1200);
        assert_eq!(e.truncated, 2);
        let (_, pairs) = cef::parse::parse(&cut).unwrap();
        let msg = pairs.iter().find(|(k, _)| k == "msg").unwrap();
        assert_eq!(msg.1, format!("{}…", "d".repeat(16)));
    }

    #[test]
    fn too_large_leaves_output_untouched() {
        let alert = alert_with("t", "desc", "cmd");
        let f = Formatter::load("arcsight").unwrap();
        let mut out = b"previous".to_vec();
        let err = f
            .encode(&alert, &Context::default(), 0, Some(100), &mut out)
            .unwrap_err();
        assert!(matches!(err, EncodeError::TooLarge { limit: 100, .. }));
        assert_eq!(out, b"previous");
    }

    #[test]
    fn per_evidence_records() {
        let src = r#"
syntax = "json"
records = "evidence"

[[field]]
key = "alert"
path = "id"

[[field]]
key = "kind"
path = "evidence.type"

[[field]]
key = "sha1"
path = "file.sha1"
evidence = "current"
"#;
        let f = Formatter::from_toml("per-evidence.toml", src).unwrap();
        let json = r##"{"id":"a","title":"t","lastUpdateDateTime":"2026-01-01T00:00:00Z","evidence":[
            {"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":{"sha1":"s1"}},
            {"@odata.type":"#microsoft.graph.security.ipEvidence","ipAddress":"10.0.0.1"}]}"##;
        let alert = Alert::from_json(json).unwrap();
        assert_eq!(f.record_count(&alert), 2);
        let mut records = Vec::new();
        for i in 0..2 {
            let mut out = Vec::new();
            f.encode(&alert, &Context::default(), i, None, &mut out)
                .unwrap();
            records.push(String::from_utf8(out).unwrap());
        }
        assert_eq!(
            records,
            [
                r#"{"alert":"a","kind":"file","sha1":"s1"}"#,
                r#"{"alert":"a","kind":"ip"}"#
            ]
        );
        let none = Alert::from_json(r#"{"id":"b","title":"t"}"#).unwrap();
        assert_eq!(
            f.record_count(&none),
            1,
            "an alert without evidence still makes a record"
        );
    }
}
