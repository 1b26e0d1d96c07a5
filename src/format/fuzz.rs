//! Every encoder and the format-file loader fuzzed with proptest at scale (issue 9, Tests).
//!
//! Encoders: the fixtures' alerts, mutated (`alert::fuzz`) and decoded as input files are, go
//! through every built-in format and a few more format files (flat JSON with numbers, LEEF 1.0,
//! LEEF 2.0 with a non-ASCII delimiter, CEF per evidence item), behind every syslog header, with
//! and without a size limit. Each message respects the limit or is refused as too large, holds
//! no raw CR or LF, and parses back with the spec parsers (`cef::parse`, `leef::parse`,
//! serde_json) into the format's own keys, each once.
//!
//! Loader: arbitrary text, TOML-like lines, the built-in files with bytes, lines or TOML values
//! changed: each is a format or a clear error naming a line of the file, and a format the
//! loader accepts encodes alerts by the same rules.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use super::*;
use crate::alert::fuzz::{config, fixtures, mutated_alert, ODD_STRINGS};
use crate::input::{self, Decoded, Limits};

/// Format files for what the built-in ones leave out.
const EXTRA: &[(&str, &str)] = &[
    (
        "flat-json",
        r#"syntax = "json"
[[field]]
key = "id"
path = "id"
[[field]]
key = "incident"
path = "incidentId"
convert = "int"
[[field]]
key = "investigation"
path = "investigationId"
convert = "int"
[[field]]
key = "created"
path = "createdDateTime"
convert = "epoch_s"
[[field]]
key = "updated"
path = "lastUpdateDateTime"
convert = "rfc3339"
[[field]]
key = "commandLines"
path = "process.processCommandLine"
evidence = "all"
join = "\n"
[[field]]
key = "description"
path = "description"
importance = 1
[[field]]
key = "tenant"
path = "tenant.name"
"#,
    ),
    (
        "leef1",
        r#"syntax = "leef"
[leef]
version = "1.0"
[header]
vendor = { value = "V|endor" }
product = { path = "productName", default = "P" }
version = { path = "detectorId", default = "1" }
event_id = { path = "title", default = "e" }
[[field]]
key = "devTime"
path = "createdDateTime"
convert = "epoch_ms"
[[field]]
key = "usrName"
path = "user.accountName"
[[field]]
key = "src"
path = "ip.ipAddress"
evidence = "all"
[[field]]
key = "title"
custom = true
path = "title"
[[field]]
key = "description"
custom = true
path = "description"
importance = 1
"#,
    ),
    (
        "leef-non-ascii",
        r#"syntax = "leef"
[leef]
version = "2.0"
delimiter = "¦"
delimiter_substitute = "<->"
[header]
vendor = { value = "V" }
product = { value = "P" }
version = { value = "1" }
event_id = { path = "category", default = "e" }
[tables.sev]
high = 9
"*" = 1
[[field]]
key = "sev"
path = "severity"
table = "sev"
[[field]]
key = "identHostName"
path = "device.hostName"
convert = "upper"
[[field]]
key = "domain"
path = "device.deviceDnsName"
convert = "domain"
[[field]]
key = "title"
custom = true
path = "title"
convert = "lower"
[[field]]
key = "cmd"
custom = true
path = "process.processCommandLine"
evidence = "all"
join = "¦"
"#,
    ),
    (
        "cef-per-evidence",
        r#"syntax = "cef"
records = "evidence"
[header]
vendor = { value = "V" }
product = { value = "P" }
version = { value = "1" }
class_id = { path = "evidence.type" }
name = { path = "title" }
severity = { path = "severity", table = "sev" }
[tables.sev]
high = 10
"*" = 0
[[field]]
key = "rt"
path = "evidence.createdDateTime"
convert = "cef_date"
[[field]]
key = "cs1"
label = "Verdict = \\ | x"
path = "evidence.verdict"
[[field]]
key = "fname"
path = "file.fileName"
evidence = "current"
[[field]]
key = "dst"
path = "ip.ipAddress"
evidence = "current"
[[field]]
key = "cnt"
path = "evidenceCount"
[[field]]
key = "request"
path = "url.url"
evidence = "all"
join = " "
[[field]]
key = "msg"
path = "description"
importance = 1
"#,
    ),
];

fn formatters() -> &'static [Formatter] {
    static F: OnceLock<Vec<Formatter>> = OnceLock::new();
    F.get_or_init(|| {
        BUILTIN
            .iter()
            .chain(EXTRA)
            .map(|(name, src)| Formatter::from_toml(name, src).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    })
}

/// The fixture alerts as decoded, for the loader's accepted formats to encode.
fn fixture_alerts() -> &'static [Alert<'static>] {
    static A: OnceLock<Vec<Alert<'static>>> = OnceLock::new();
    A.get_or_init(|| {
        let mut out = Vec::new();
        for file in &fixtures().files {
            input::decode(file, Limits::default(), |d| {
                if let Decoded::Alert(_, a) = d {
                    out.push(a.into_owned());
                }
            });
        }
        out
    })
}

/// How one case encodes: the header, the limit and the context.
#[derive(Debug, Clone)]
struct Setup {
    kind: HeaderKind,
    clock: syslog::Clock,
    max_message: Option<usize>,
    tenant_name: Option<String>,
    hostname: Option<String>,
}

fn setup() -> impl Strategy<Value = Setup> {
    let text = || {
        prop_oneof![
            2 => Just(None),
            1 => select(ODD_STRINGS).prop_map(|s| Some(s.to_string())),
            1 => any::<String>().prop_map(Some),
        ]
    };
    (
        select(&[HeaderKind::None, HeaderKind::Rfc5424, HeaderKind::Rfc3164][..]),
        select(&[syslog::Clock::Utc, syslog::Clock::Local][..]),
        prop_oneof![
            2 => Just(None),
            1 => (0usize..200).prop_map(Some),
            3 => (200usize..4096).prop_map(Some),
            1 => select(&[480usize, 1024, 2048, 8192, 65_536][..]).prop_map(Some),
        ],
        text(),
        text(),
    )
        .prop_map(|(kind, clock, max_message, tenant_name, hostname)| Setup {
            kind,
            clock,
            max_message,
            tenant_name,
            hostname,
        })
}

/// Checks every record `f` makes of `alert`.
fn check_alert(f: &Formatter, alert: &Alert, s: &Setup) -> Result<(), TestCaseError> {
    let enc = MessageEncoder {
        formatter: Arc::new(f.clone()),
        header: SyslogHeader::new(s.kind, 13, "collector-01.example", "defender-bridge")
            .with_clock(s.clock),
        max_message: s.max_message,
    };
    let ctx = Context {
        tenant_name: s.tenant_name.as_deref(),
        hostname: s.hostname.as_deref(),
    };
    let n = f.record_count(alert);
    prop_assert!(n >= 1);
    for i in 0..n.min(12) {
        check_record(f, &enc, alert, &ctx, i)?;
    }
    Ok(())
}

fn check_record(
    f: &Formatter,
    enc: &MessageEncoder,
    alert: &Alert,
    ctx: &Context<'_>,
    index: usize,
) -> Result<(), TestCaseError> {
    // What the buffer held before is left alone, whatever happens.
    let mut out = b"earlier record\n".to_vec();
    let before = out.len();
    match enc.encode(alert, ctx, index, &mut out) {
        Ok(_) => {}
        Err(EncodeError::TooLarge { size, limit }) => {
            prop_assert_eq!(
                Some(limit),
                enc.max_message,
                "without a limit nothing is too large"
            );
            prop_assert!(size > limit);
            prop_assert_eq!(out.len(), before);
            return Ok(());
        }
    }
    prop_assert_eq!(&out[..before], b"earlier record\n");
    let msg = &out[before..];
    if let Some(max) = enc.max_message {
        prop_assert!(msg.len() <= max, "{} bytes, limit {max}", msg.len());
    }
    prop_assert!(
        !msg.contains(&b'\n') && !msg.contains(&b'\r'),
        "a raw line break: {:?}",
        String::from_utf8_lossy(msg)
    );
    let text = std::str::from_utf8(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;

    // The header is written again to learn its length: the time may be "now" (an alert without
    // a valid time), but years 0-9999 have fixed widths. The record starts right after it.
    let time = header_time(alert);
    let mut header = Vec::new();
    enc.header.write_as(
        &mut header,
        ctx.hostname,
        syslog::syslog_severity(&alert.severity),
        time,
        f.syslog_tag(),
    );
    prop_assert!(text.len() >= header.len() && text.as_bytes()[..header.len()].is_ascii());
    check_body(f.plan(), &text[header.len()..])
}

/// The record parses back, with the spec parsers, into the plan's keys, each at most once.
fn check_body(plan: &Plan, body: &str) -> Result<(), TestCaseError> {
    let keys: Vec<&str> = plan
        .fields
        .iter()
        .flat_map(|f| std::iter::once(f.key.as_str()).chain(f.label.as_ref().map(|l| l.0.as_str())))
        .collect();
    let pairs = match &plan.syntax {
        Syntax::Cef(pipes) => {
            let (header, pairs) =
                cef::parse::parse(body).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
            // `CEF:0` and 6 more fields: 7 unescaped pipes before the extension.
            prop_assert_eq!(header.len(), 7);
            prop_assert_eq!(&header[0], "0");
            prop_assert!(cef::valid_severity(&header[6]), "severity {:?}", header[6]);
            if *pipes == cef::HeaderPipes::Replace {
                prop_assert!(header.iter().all(|h| !h.contains('|')));
            }
            pairs
        }
        Syntax::Leef(d) => {
            let (header, pairs) = leef::parse::parse(body)
                .map_err(|e| TestCaseError::fail(format!("{e}: {body:?}")))?;
            prop_assert_eq!(header.len(), if d.version == 1 { 4 } else { 5 });
            for (k, v) in &pairs {
                prop_assert!(!v.contains(d.delimiter), "{k}={v:?}");
            }
            pairs
        }
        Syntax::Json => {
            prop_assert!(body.starts_with('{') && body.ends_with('}'), "{body}");
            // Raw JSON kept from the alert may nest deeper than a `Value` may, or hold a number
            // out of its range: valid JSON all the same. Anything else a `Value` refuses (a lone
            // surrogate escape) a strict receiver refuses too.
            if let Err(e) = serde_json::from_str::<Value>(body) {
                let e = e.to_string();
                prop_assert!(
                    e.contains("recursion limit exceeded") || e.contains("number out of range"),
                    "{e}: {body}"
                );
                prop_assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok(),
                    "invalid JSON: {body}"
                );
            }
            if !plan.fields.is_empty() {
                let v: serde_json::Map<String, Value> = serde_json::from_str(body)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
                for (k, v) in &v {
                    let f = plan.fields.iter().find(|f| f.key == *k);
                    prop_assert!(f.is_some(), "key {k:?} is not the format's");
                    if f.is_some_and(|f| f.check == Check::Integer) {
                        // Or text, when `max_length` cut it.
                        let cut = v
                            .as_str()
                            .is_some_and(|s| s.ends_with(text::TRUNCATION_MARK));
                        prop_assert!(v.is_i64() || cut, "{k}: {v}");
                    } else {
                        prop_assert!(v.is_string(), "{k}: {v}");
                    }
                }
            }
            return Ok(());
        }
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in &pairs {
        prop_assert!(
            keys.contains(&k.as_str()),
            "key {k:?} is not the format's: {body:?}"
        );
        prop_assert!(!seen.contains(&k.as_str()), "key {k:?} twice: {body:?}");
        seen.push(k);
    }
    Ok(())
}

// ---- format files --------------------------------------------------------------------------

/// Strings for format-file values: every string of the built-in files (paths, keys, converts,
/// tables…), odd LEEF delimiters, and the alert fuzzer's odd strings.
fn format_strings() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        fn walk(v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::String(s) => out.push(s.clone()),
                toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                toml::Value::Table(t) => t.iter().for_each(|(k, v)| {
                    out.push(k.clone());
                    walk(v, out)
                }),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (_, src) in BUILTIN.iter().chain(EXTRA) {
            walk(&toml::Value::Table(src.parse().expect("TOML")), &mut out);
        }
        for s in [
            "x00",
            "x09",
            "x20",
            "x7F",
            "xD800",
            "xDFFF",
            "xFFFF",
            "x10FFFF",
            "0x",
            "x",
            "0x5E",
            "xZZ",
            "^^",
            "¦",
            "€",
            "😀",
            "\u{85}",
            "\u{2028}",
            "evidence",
            "alert",
            "current",
            "all",
            "first",
            "escape",
            "replace",
            "1.0",
            "2.0",
            "3.0",
            "epoch_ms",
            "epoch_s",
            "cef_date",
            "cef_date_ms",
            "rfc3339",
            "int",
            "bool01",
            "lower",
            "upper",
            "host",
            "domain",
            "evidence.type",
            "evidence.verdict",
            "evidence.createdDateTime",
            "evidenceCount",
            "tenant.name",
            "process.image.fileName",
            "device.hostName",
            "mailbox.user.accountName",
            "registry.registryValue",
            "cs1",
            "cs6",
            "cs7",
            "cs1Label",
            "flexString1",
            "flexDate1",
            "cn1",
            "c6a1",
            "deviceCustomDate1",
            "rt",
            "src",
            "sev",
            "devTime",
            "custom",
            "MyKey",
            "*",
        ] {
            out.push(s.to_string());
        }
        out.extend(ODD_STRINGS.iter().map(|s| s.to_string()));
        out.sort();
        out.dedup();
        out
    })
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        6 => select(format_strings()).prop_map(toml::Value::String),
        1 => any::<String>().prop_map(toml::Value::String),
        2 => prop_oneof![
            select(&[0i64, 1, -1, 2, 5, 10, 11, 128, 255, 256, 512, 1023, 1024, 5000, i64::MAX, i64::MIN][..]),
            any::<i64>(),
        ]
        .prop_map(toml::Value::Integer),
        1 => prop_oneof![
            select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5, -0.0, 8.0][..]),
            any::<f64>(),
        ]
        .prop_map(toml::Value::Float),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        1 => select(&["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "1979-05-27T07:32:00.999999-07:00"][..])
            .prop_map(|d| toml::Value::Datetime(d.parse().expect("datetime"))),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::vec((select(format_strings()), inner), 0..4)
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Key(usize),
    Index(usize),
}

fn toml_paths(v: &toml::Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(at.clone());
    match v {
        toml::Value::Table(t) => {
            for (i, v) in t.values().enumerate() {
                at.push(Seg::Key(i));
                toml_paths(v, at, out);
                at.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                at.push(Seg::Index(i));
                toml_paths(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn toml_get<'v>(mut v: &'v toml::Value, path: &[Seg]) -> &'v toml::Value {
    for seg in path {
        v = match (seg, v) {
            (Seg::Key(i), toml::Value::Table(t)) => t.values().nth(*i).expect("key"),
            (Seg::Index(i), toml::Value::Array(a)) => &a[*i],
            _ => unreachable!("paths follow the tree"),
        };
    }
    v
}

fn toml_at<'v>(mut v: &'v mut toml::Value, path: &[Seg]) -> &'v mut toml::Value {
    for seg in path {
        v = match (seg, v) {
            (Seg::Key(i), toml::Value::Table(t)) => t.iter_mut().nth(*i).expect("key").1,
            (Seg::Index(i), toml::Value::Array(a)) => &mut a[*i],
            _ => unreachable!("paths follow the tree"),
        };
    }
    v
}

#[derive(Debug, Clone)]
enum TomlEdit {
    /// A string, integer or boolean becomes another of its type (most such files still load, so
    /// the encoders meet odd but valid formats).
    Swap(usize, String, i64),
    Replace(usize, toml::Value),
    Remove(usize, usize),
    Insert(usize, String, toml::Value),
}

fn toml_edit() -> impl Strategy<Value = TomlEdit> {
    let int = prop_oneof![
        select(
            &[
                0i64,
                1,
                -1,
                2,
                5,
                10,
                11,
                16,
                17,
                128,
                255,
                1023,
                1024,
                i64::MAX,
                i64::MIN
            ][..]
        ),
        any::<i64>(),
    ];
    prop_oneof![
        6 => (any::<usize>(), select(format_strings()), int)
            .prop_map(|(n, s, i)| TomlEdit::Swap(n, s, i)),
        4 => (any::<usize>(), toml_value()).prop_map(|(n, v)| TomlEdit::Replace(n, v)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(n, k)| TomlEdit::Remove(n, k)),
        2 => (any::<usize>(), select(format_strings()), toml_value())
            .prop_map(|(n, k, v)| TomlEdit::Insert(n, k, v)),
    ]
}

/// A format file's TOML tree with `edits` applied, as text; `None` when the tree cannot be
/// written as TOML.
fn mutate_toml(file: usize, edits: &[TomlEdit]) -> Option<String> {
    static PARSED: OnceLock<Vec<toml::Value>> = OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        BUILTIN
            .iter()
            .chain(EXTRA)
            .map(|(_, src)| toml::Value::Table(src.parse().expect("TOML")))
            .collect()
    });
    let mut v = parsed[file].clone();
    for e in edits {
        let mut all = Vec::new();
        toml_paths(&v, &mut Vec::new(), &mut all);
        let tables: Vec<Vec<Seg>> = all
            .iter()
            .filter(|p| toml_get(&v, p).is_table())
            .cloned()
            .collect();
        match e {
            TomlEdit::Swap(n, text, int) => {
                let leaf = toml_at(&mut v, &all[n % all.len()]);
                match leaf {
                    toml::Value::String(s) => *s = text.clone(),
                    toml::Value::Integer(i) => *i = *int,
                    toml::Value::Boolean(b) => *b = !*b,
                    _ => {}
                }
            }
            // The root stays a table: a TOML file is one.
            TomlEdit::Replace(_, _) if all.len() < 2 => {}
            TomlEdit::Replace(n, new) => {
                let p = &all[1 + n % (all.len() - 1)];
                *toml_at(&mut v, p) = new.clone();
            }
            TomlEdit::Remove(n, k) => {
                let p = tables[n % tables.len()].clone();
                if let toml::Value::Table(t) = toml_at(&mut v, &p) {
                    if let Some(key) = t.keys().nth(k % t.len().max(1)).cloned() {
                        t.remove(&key);
                    }
                }
            }
            TomlEdit::Insert(n, key, new) => {
                let p = tables[n % tables.len()].clone();
                if let toml::Value::Table(t) = toml_at(&mut v, &p) {
                    t.insert(key.clone(), new.clone());
                }
            }
        }
    }
    toml::to_string(&v).ok()
}

/// A built-in (or extra) format file with TOML values changed.
fn mutated_format_file() -> impl Strategy<Value = String> {
    let files = BUILTIN.len() + EXTRA.len();
    (0..files, proptest::collection::vec(toml_edit(), 1..4))
        .prop_filter_map("not writable as TOML", |(i, edits)| mutate_toml(i, &edits))
}

/// A built-in (or extra) format file with lines removed, repeated or swapped, or bytes changed.
fn text_mutated_format_file() -> impl Strategy<Value = String> {
    let files = BUILTIN.len() + EXTRA.len();
    (
        0..files,
        proptest::collection::vec((0..5u8, any::<usize>(), any::<usize>(), any::<u8>()), 1..6),
    )
        .prop_map(|(i, edits)| {
            let (_, src) = BUILTIN.iter().chain(EXTRA).nth(i).expect("file");
            let mut lines: Vec<String> = src.lines().map(String::from).collect();
            let mut bytes: Option<Vec<u8>> = None;
            for (op, a, b, byte) in edits {
                let n = lines.len().max(1);
                match op {
                    0 if !lines.is_empty() => {
                        lines.remove(a % n);
                    }
                    1 if !lines.is_empty() => {
                        let l = lines[a % n].clone();
                        lines.insert(b % n, l);
                    }
                    2 if !lines.is_empty() => lines.swap(a % n, b % n),
                    _ => {
                        let mut v = bytes
                            .take()
                            .unwrap_or_else(|| lines.join("\n").into_bytes());
                        let at = a % (v.len() + 1);
                        if op == 3 && at < v.len() {
                            v[at] = byte;
                        } else {
                            v.insert(at, byte);
                        }
                        lines = String::from_utf8_lossy(&v)
                            .lines()
                            .map(String::from)
                            .collect();
                        bytes = Some(v);
                    }
                }
            }
            match bytes {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None => lines.join("\n"),
            }
        })
}

/// TOML-like text from the format files' own words.
fn toml_like_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        select(&["[[field]]", "[header]", "[leef]", "[cef]", "[tables.sev]", "[tables]", "[[header]]", "[field]", "", "#", "]]"][..])
            .prop_map(String::from),
        (select(format_strings()), toml_value()).prop_map(|(k, v)| {
            let mut t = toml::Table::new();
            t.insert(k, v);
            toml::to_string(&t).unwrap_or_default().trim_end().to_string()
        }),
        "[a-z_]{1,12} = (\"[^\"\n]{0,12}\"|[0-9-]{1,5}|true|\\{ [a-z]+ = \"[a-z.]{0,12}\" \\}|\\[\"[a-z.]{0,8}\"\\])",
    ];
    (
        select(&["cef", "leef", "json", "xml"][..]),
        proptest::collection::vec(line, 0..24),
    )
        .prop_map(|(syntax, lines)| format!("syntax = \"{syntax}\"\n{}", lines.join("\n")))
}

/// Loading `src` gives a format or an error naming the file and, if any, a line of it. A format
/// it gives encodes fixture alerts by the rules every format keeps.
fn loads_or_refuses(src: &str, alerts: &[usize]) -> Result<(), TestCaseError> {
    match Formatter::from_toml("fuzz.toml", src) {
        Err(e) => {
            prop_assert_eq!(&e.origin, "fuzz.toml");
            prop_assert!(!e.message.is_empty());
            if let Some(line) = e.line {
                prop_assert!(
                    line >= 1 && line <= src.lines().count() + 1,
                    "line {line}: {e}"
                );
            }
            Ok(())
        }
        Ok(f) => {
            let s = Setup {
                kind: HeaderKind::Rfc5424,
                clock: syslog::Clock::Utc,
                max_message: Some(2048),
                tenant_name: Some("Contoso | A=B".into()),
                hostname: None,
            };
            let all = fixture_alerts();
            for &i in alerts {
                check_alert(&f, &all[i % all.len()], &s)?;
                check_alert(
                    &f,
                    &all[i % all.len()],
                    &Setup {
                        max_message: None,
                        ..s.clone()
                    },
                )?;
            }
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Mutated fixture alerts through every format, behind the configured header and limit.
    #[test]
    fn every_encoder_over_mutated_alerts(text in mutated_alert(), s in setup()) {
        let mut alerts = Vec::new();
        input::decode(text.as_bytes(), Limits::default(), |d| {
            if let Decoded::Alert(_, a) = d {
                alerts.push(a.into_owned());
            }
        });
        for alert in alerts.iter().take(3) {
            for f in formatters() {
                check_alert(f, alert, &s)?;
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Lines of format-file words, in any order.
    #[test]
    fn toml_like_format_text(src in toml_like_text(), alert in any::<usize>()) {
        loads_or_refuses(&src, &[alert])?;
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any text at all.
    #[test]
    fn arbitrary_format_text(src in any::<String>()) {
        loads_or_refuses(&src, &[0])?;
    }

    /// The format files with TOML values of any type put in, taken out and replaced.
    #[test]
    fn mutated_format_files(src in mutated_format_file(), a in any::<usize>(), b in any::<usize>()) {
        loads_or_refuses(&src, &[a, b])?;
    }

    /// Any LEEF 2.0 delimiter and substitute: refused, or the records split into exactly their
    /// attributes whatever the values hold.
    #[test]
    fn leef_delimiters(
        delimiter in prop_oneof![
            any::<char>().prop_map(String::from),
            select(&[" ", "x20", "x09", "x00", "x7C", "x3D", "xA0", "xFF3E", "x10FFFF", "0x5e", "x", "", "^^", "\u{85}", "\u{2028}", "\u{fffd}"][..])
                .prop_map(String::from),
            "(0x|x)[0-9a-fA-F]{1,5}",
        ],
        substitute in proptest::option::of(prop_oneof![
            select(&["", " ", "_", "\u{a0}", "^", "<->", "\t", "=", "|"][..]).prop_map(String::from),
            any::<String>(),
        ]),
        title in prop_oneof![
            select(ODD_STRINGS).prop_map(String::from),
            any::<String>(),
            "[ ^=|\t\u{a0}\u{fffd}\u{85}a-c]{0,12}",
        ],
    ) {
        let Ok(f) = Formatter::from_toml("leef.toml", &leef_with(&delimiter, substitute.as_deref())) else {
            return Ok(());
        };
        let json = serde_json::json!({"id": "a", "severity": "high", "title": title}).to_string();
        let alert = Alert::from_json(&json).expect("decodes");
        let mut out = Vec::new();
        f.encode(&alert, &Context::default(), 0, None, &mut out).expect("encodes");
        let record = String::from_utf8(out).expect("UTF-8");
        prop_assert!(!record.contains(['\r', '\n']));
        let (_, pairs) = leef::parse::parse(&record).map_err(|e| TestCaseError::fail(format!("{e}: {record:?}")))?;
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let want: &[&str] = if text::clean(&title).is_some() { &["t", "u"] } else { &["u"] };
        prop_assert_eq!(keys, want, "{:?}", record);
    }

    /// The format files with lines and bytes changed.
    #[test]
    fn text_mutated_format_files(src in text_mutated_format_file(), a in any::<usize>()) {
        loads_or_refuses(&src, &[a])?;
    }
}

/// Regression: an integer field's value that Rust reads as an integer but JSON does not (`+12`,
/// `007`) was written as is, and the record was not JSON.
#[test]
fn json_integers_are_json_numbers() {
    let flat = &formatters()[BUILTIN.len()];
    for incident in ["+12", "007", "-0", "12.0", "-9223372036854775808", "+0"] {
        let json = serde_json::json!({"id": "a", "title": "t", "incidentId": incident}).to_string();
        let alert = Alert::from_json(&json).expect("decodes");
        let mut out = Vec::new();
        flat.encode(&alert, &Context::default(), 0, None, &mut out)
            .expect("encodes");
        let record: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{incident}: {e}: {}", String::from_utf8_lossy(&out)));
        assert!(record["incident"].is_i64(), "{incident}: {record}");
    }
    let cut = Formatter::from_toml(
        "cut.toml",
        "syntax = \"json\"\n[[field]]\nkey = \"n\"\npath = \"incidentId\"\nconvert = \"int\"\nmax_length = 2\n",
    )
    .expect("compiles");
    let alert = Alert::from_json(r#"{"id":"a","title":"t","incidentId":12345}"#).expect("decodes");
    let mut out = Vec::new();
    cut.encode(&alert, &Context::default(), 0, None, &mut out)
        .expect("encodes");
    assert_eq!(String::from_utf8(out).unwrap(), r#"{"n":"1…"}"#);
}

fn leef_with(delimiter: &str, substitute: Option<&str>) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        "syntax = \"leef\"\n[leef]\nversion = \"2.0\"\ndelimiter = {}\n{}[header]\nvendor = {{ value = \"V\" }}\nproduct = {{ value = \"P\" }}\nversion = {{ value = \"1\" }}\nevent_id = {{ value = \"e\" }}\n[[field]]\nkey = \"t\"\ncustom = true\npath = \"title\"\n[[field]]\nkey = \"u\"\ncustom = true\npath = \"id\"\n",
        quoted(delimiter),
        substitute.map_or(String::new(), |s| format!("delimiter_substitute = {}\n", quoted(s))),
    )
}

/// Regression: a space as the LEEF delimiter kept a space as its substitute, and line breaks
/// became spaces, so a value `x b=c` made an attribute `b` of its own.
#[test]
fn leef_space_delimiter_does_not_split_values() {
    for d in [" ", "x20"] {
        let f = Formatter::from_toml("space.toml", &leef_with(d, None)).expect("compiles");
        // A line break became a space too.
        for (title, want) in [("x b=c", "x\u{A0}b=c"), ("x\nb=c", "x\u{A0}b=c")] {
            let json = serde_json::json!({"id": "a", "title": title}).to_string();
            let alert = Alert::from_json(&json).expect("decodes");
            let mut out = Vec::new();
            f.encode(&alert, &Context::default(), 0, None, &mut out)
                .expect("encodes");
            let record = String::from_utf8(out).unwrap();
            let (_, pairs) = leef::parse::parse(&record).expect("parses");
            assert_eq!(pairs, [("t".into(), want.into()), ("u".into(), "a".into())]);
        }
    }
}

/// Mutated format files are worth encoding with only if some still load: the loader refuses most
/// (it is strict), and the rest are odd but valid formats.
#[test]
fn some_mutated_format_files_still_load() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for s in [
        mutated_format_file().boxed(),
        text_mutated_format_file().boxed(),
    ] {
        let n = 200;
        let ok = (0..n)
            .filter(|_| {
                let src = s.new_tree(&mut runner).expect("tree").current();
                Formatter::from_toml("fuzz.toml", &src).is_ok()
            })
            .count();
        assert!(ok * 20 > n, "only {ok} of {n} mutated format files load");
    }
}

/// Regression: a message refused as too large named the header's length as the limit when the
/// header alone was longer than the configured limit.
#[test]
fn too_large_names_the_configured_limit() {
    let enc = MessageEncoder {
        formatter: Arc::new(Formatter::load("arcsight").expect("built in")),
        header: SyslogHeader::new(HeaderKind::Rfc5424, 13, "collector-01.example", "d-b"),
        max_message: Some(10),
    };
    let alert = crate::output::test_alert();
    let mut out = Vec::new();
    match enc.encode(&alert, &Context::default(), 0, &mut out) {
        Err(EncodeError::TooLarge { size, limit }) => {
            assert_eq!(limit, 10);
            assert!(size > 10);
        }
        Ok(_) => panic!("fits in 10 bytes"),
    }
    assert!(out.is_empty());
}
