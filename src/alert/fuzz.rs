//! The alert decoder fuzzed with proptest at scale (issue 9, Tests): arbitrary bytes, arbitrary
//! JSON, and — what reaches deepest — the real alerts of `tests/data/` of both APIs with values
//! swapped for hostile ones (another JSON type, huge strings, control characters, lone surrogate
//! escapes, deep nesting, numbers out of range, timestamps malformed or extreme), fields removed
//! and fields added. Whatever it is given, the decoder answers `Ok` or a clear `Err`: no panic, no
//! hang (a case that runs longer than [`TIMEOUT_MS`] fails, and proptest's fork kills one that
//! never ends).
//!
//! The strategies are shared with the encoder and format-file properties (`format::fuzz`).
//! `PROPTEST_CASES=100000 cargo test --release --lib fuzz` runs more cases than the defaults here.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use super::Alert;
use crate::input::{self, Decoded, Limits};

/// One case that takes longer than this (in a debug build) is a hang.
pub(crate) const TIMEOUT_MS: u32 = 20_000;

/// `cases` unless `PROPTEST_CASES` says otherwise, and the hang timeout.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c.timeout = TIMEOUT_MS;
    c
}

/// The fixtures, read once.
pub(crate) struct Fixtures {
    /// Each alert object of every fixture file (pages and NDJSON split into alerts).
    pub alerts: Vec<Value>,
    /// Each fixture file as it is.
    pub files: Vec<Vec<u8>>,
    /// Every object key found in them, and a few odd ones.
    pub keys: Vec<String>,
}

pub(crate) fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("tests/data")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "ndjson"))
            .collect();
        paths.sort();
        let mut alerts = Vec::new();
        let mut files = Vec::new();
        for path in paths {
            let bytes = std::fs::read(&path).expect("fixture");
            let text = std::str::from_utf8(&bytes).expect("fixtures are UTF-8");
            let docs: Vec<Value> = match serde_json::from_str(text) {
                Ok(doc) => vec![doc],
                // NDJSON; its broken lines are left out.
                Err(_) => text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect(),
            };
            for doc in docs {
                match doc {
                    Value::Array(items) => {
                        alerts.extend(items.into_iter().filter(Value::is_object))
                    }
                    Value::Object(mut o) => match o.remove("value") {
                        Some(Value::Array(items)) => {
                            alerts.extend(items.into_iter().filter(Value::is_object))
                        }
                        Some(v) => {
                            o.insert("value".into(), v);
                            alerts.push(Value::Object(o));
                        }
                        None => alerts.push(Value::Object(o)),
                    },
                    _ => {}
                }
            }
            files.push(bytes);
        }
        let mut keys = Vec::new();
        for a in &alerts {
            collect_keys(a, &mut keys);
        }
        for odd in [
            "",
            "value",
            "evidence",
            "@odata.type",
            "\u{0}",
            "id\u{0}",
            "ID",
            "Id",
        ] {
            keys.push(odd.to_string());
        }
        keys.sort();
        keys.dedup();
        assert!(alerts.len() >= 15, "{} fixture alerts", alerts.len());
        Fixtures {
            alerts,
            files,
            keys,
        }
    })
}

fn collect_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                collect_keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_keys(v, out)),
        _ => {}
    }
}

// ---- hostile JSON --------------------------------------------------------------------------

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Strings that have meant trouble somewhere: numbers in disguise, addresses, names to split,
/// the syntax characters of CEF, LEEF and syslog, controls, separators, case folds that change
/// length, enum members and evidence kinds.
pub(crate) const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "\t",
    "null",
    "true",
    "0",
    "-0",
    "+12",
    "007",
    " 12 ",
    "12.0",
    "12.5",
    "1e3",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "9007199254740993",
    "0x1F",
    "١٢٣",
    "NaN",
    "inf",
    "::1",
    "1.2.3.4",
    "256.256.256.256",
    "fe80::1%eth0",
    "host.",
    ".host",
    "a..b",
    ".",
    "host.example.com",
    "|",
    "=",
    "\\",
    "^",
    "\\|",
    "\\=",
    "a b=c",
    "k=v",
    "CEF:0|a|b|c|d|e|5|x=y",
    "LEEF:2.0|a|b|c|d|^|x=y",
    "<13>1 2026-01-01T00:00:00Z h a - - - forged",
    "x\ny",
    "x\r\ny",
    "\r",
    "\n",
    "\u{0}",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "\u{2028}",
    "\u{2029}",
    "\u{feff}",
    "\u{202e}",
    "\u{fffd}",
    "\u{ff3e}",
    "…",
    "😀",
    "日本語",
    "İ",
    "ß",
    "ǅ",
    "ﬃ",
    "High",
    "HIGH",
    "informational",
    "UnSpecified",
    "Other",
    "WindowsDefenderAv",
    "MTP",
    "A",
    "a",
    "true",
    "#microsoft.graph.security.deviceEvidence",
    "#microsoft.graph.security.processEvidence",
    "#microsoft.graph.security.fileEvidence",
    "#microsoft.graph.security.userEvidence",
    "#microsoft.graph.security.ipEvidence",
    "#microsoft.graph.security.urlEvidence",
    "#microsoft.graph.security.registryKeyEvidence",
    "#microsoft.graph.security.registryValueEvidence",
    "#microsoft.graph.security.mailboxEvidence",
    "#microsoft.graph.security.cloudApplicationEvidence",
    "#microsoft.graph.security.",
    "#",
    "File",
    "Process",
    "Machine",
    "User",
    "Ip",
    "Url",
    "Registry",
    "MailBox",
];

/// JSON texts that are not strings: numbers at and past every limit, empty and odd containers,
/// strings with escapes (lone surrogates, controls), and invalid JSON the decoder must refuse.
pub(crate) const RAW_JSON: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1",
    "-1",
    "0.0",
    "-0.0",
    "0.5",
    "1e400",
    "-1e400",
    "1e-400",
    "1.7976931348623157e308",
    "4.9e-324",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.0E+2",
    "{}",
    "[]",
    "[null]",
    "[{}]",
    "[[]]",
    "[1,\"a\",null,{}]",
    "{\"\":null}",
    "{\"id\":{}}",
    "{\"value\":[]}",
    "\"\\ud800\"",
    "\"\\udfff\"",
    "\"\\ud800\\u0041\"",
    "\"\\ud800\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"abc\\ud83d\"",
    "\"\\ud83d\\ude00\"",
    "\"\\uD800x\"",
    "\"\\ud800\\\"\"",
    "\"\\\\ud800\"",
    "\"\\\\\\ud800\"",
    "[\"\\ud800\",{\"a\":\"\\udc00\"}]",
    "\"\\u0000\"",
    "\"\\u0000\\u0001\\u001f\\u007f\\u0085\\u009b\"",
    "\"\\u2028\\u2029\"",
    "\"\\r\\n\\t\\b\\f\"",
    "\"\\/\"",
    // Not JSON: the decoder refuses these with an error.
    "NaN",
    "Infinity",
    "-",
    "01",
    "1.",
    ".5",
    "\"\t\"",
    "\"\u{1}\"",
    "'x'",
    "\"\\x41\"",
    "\"\\u12\"",
    "\"\\ud8\"",
    "\"\\",
    "\"unterminated",
    "[1,]",
    "{\"a\"}",
    "{\"a\":1,}",
    "tru",
    "",
    ",",
    "]",
    "}",
];

/// Timestamps as the APIs send them would never: impossible dates, leap seconds, the ends of
/// chrono's range and past them, odd offsets, too many fraction digits, other forms.
pub(crate) const ODD_TIMES: &[&str] = &[
    "2020-02-30T00:00:00Z",
    "2019-02-29T00:00:00Z",
    "2016-12-31T23:59:60Z",
    "2016-12-31T23:59:60.999999999Z",
    "2020-07-20T10:53:61Z",
    "2020-07-20T24:00:00Z",
    "2020-07-20T10:60:00Z",
    "+262142-12-31T23:59:59.999999999Z",
    "+262143-12-31T23:59:59.999999999Z",
    "+262144-01-01T00:00:00Z",
    "-262143-01-01T00:00:00Z",
    "-262144-01-01T00:00:00Z",
    "-262145-01-01T00:00:00Z",
    "9999-12-31T23:59:59.9999999Z",
    "9999-12-31T23:59:59-23:59",
    "10000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0000-01-01T00:00:00+23:59",
    "-0001-12-31T23:59:59Z",
    "1969-12-31T23:59:59.9999999Z",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00+23:59",
    "1970-01-01T00:00:00-24:00",
    "2020-07-20T10:53:50.1234567890Z",
    "2020-07-20T10:53:50.12345678901234567890Z",
    "2020-07-20T10:53:50.Z",
    "2020-07-20T10:53:50,5Z",
    "2020-07-20T10:53:50ZZ",
    "2020-07-20T10:53:50+0200",
    "2020-07-20T10:53:50 +02:00",
    "2020-07-20T10:53:50.5",
    "2020-07-20 10:53:50",
    "2020-07-20t10:53:50z",
    "2020-07-20",
    "10:53:50",
    "2020-W30-1",
    "20200720T105350Z",
    "T",
    "Z",
    "２０２０-07-20T10:53:50Z",
    "2020-07-20T10:53:50\u{e9}Z",
    "2020-07-20T10:53:50.1234567Z\u{0}",
    " 2020-07-20T10:53:50Z ",
    "0001-01-01T00:00:00Z",
    "yesterday",
];

/// Any JSON value, of any type, with odd strings and numbers among the leaves.
pub(crate) fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        select(ODD_STRINGS).prop_map(Value::from),
        select(ODD_TIMES).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec(
                (
                    prop_oneof![select(&fixtures().keys[..]), any::<String>(),],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Timestamp-like text: the odd ones, and random near-misses of RFC 3339.
fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ODD_TIMES).prop_map(quoted),
        "[+-]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(|s| quoted(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| Value::from(f).to_string()),
    ]
}

/// A JSON string of `n` bytes or so made of one piece (text, a syntax character, an escape).
fn huge_string() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        "a",
        "é",
        "日",
        "😀",
        "|",
        "=",
        "\\\\",
        "\\n",
        "\\r\\n",
        "^",
        " ",
        "\\u0000",
        "\\t",
        "\\ud83d\\ude00",
        "\\ud800",
        "\\\"",
        "a b=",
        "\\u2028",
    ];
    let size = prop_oneof![
        12 => select(&[0usize, 1, 15, 16, 17, 31, 63, 255, 256, 511, 512, 513, 1022, 1023, 1024, 1025, 2000, 4095, 4096, 8192][..]),
        2 => select(&[65_536usize, 100_000][..]),
        1 => Just(300_000usize),
    ];
    (select(PIECES), size).prop_map(|(piece, n)| {
        let mut s = String::with_capacity(n + 8);
        s.push('"');
        while s.len() < n {
            s.push_str(piece);
        }
        s.push('"');
        s
    })
}

/// Arrays or objects nested `n` deep, around the decoder's limit of 128 and far past it.
fn deep_nesting() -> impl Strategy<Value = String> {
    let depth = select(&[2usize, 64, 126, 127, 128, 129, 130, 1000, 100_000][..]);
    (depth, any::<bool>()).prop_map(|(n, arrays)| {
        if arrays {
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        } else {
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
        }
    })
}

/// A JSON text to put where a value was: any type, hostile, or not JSON at all.
pub(crate) fn fragment() -> BoxedStrategy<String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        3 => select(ODD_STRINGS).prop_map(quoted),
        3 => select(RAW_JSON).prop_map(String::from),
        3 => timestamp(),
        1 => huge_string(),
        1 => deep_nesting(),
        // Unescaped text between quotes: raw controls and quotes make it invalid JSON.
        1 => any::<String>().prop_map(|s| format!("\"{s}\"")),
    ]
    .boxed()
}

// ---- structure-aware mutations ---------------------------------------------------------------

/// One change to an alert's JSON tree. Indices pick a node (or an object) in document order,
/// modulo their number.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// The value of any node (the whole alert included) becomes the text.
    Replace(usize, String),
    /// A member of an object is removed.
    Remove(usize, usize),
    /// A member (often one the object already has: a duplicate) is added to an object.
    Insert(usize, String, String),
    /// A member of the alert itself is set to the text (added if it has none).
    Set(String, String),
}

pub(crate) fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<usize>(), fragment()).prop_map(|(n, f)| Edit::Replace(n, f)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(n, k)| Edit::Remove(n, k)),
        2 => (
            any::<usize>(),
            prop_oneof![9 => select(&fixtures().keys[..]), 1 => any::<String>()],
            fragment()
        )
            .prop_map(|(n, k, f)| Edit::Insert(n, k, f)),
        4 => (select(&fixtures().keys[..]), fragment()).prop_map(|(k, f)| Edit::Set(k, f)),
    ]
}

/// JSON pointers of every node, in document order, and whether it is an object.
fn pointers(v: &Value, at: &mut String, out: &mut Vec<(String, bool)>) {
    out.push((at.clone(), v.is_object()));
    let len = at.len();
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                pointers(v, at, out);
                at.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                at.push('/');
                at.push_str(&i.to_string());
                pointers(v, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// `alert` with `edits` applied, as JSON text (pretty, with line breaks, or compact). Fragments
/// go in as text, so they can be what a `serde_json::Value` cannot hold: invalid JSON, lone
/// surrogates, numbers out of range, nesting past any limit.
pub(crate) fn mutate(alert: &Value, edits: &[Edit], pretty: bool) -> String {
    let mut v = alert.clone();
    let mut texts: Vec<(String, String)> = Vec::new();
    for (i, e) in edits.iter().enumerate() {
        let mut all = Vec::new();
        pointers(&v, &mut String::new(), &mut all);
        let objects: Vec<&String> = all.iter().filter(|(_, o)| *o).map(|(p, _)| p).collect();
        let placeholder = format!("@@fuzz{i}@@");
        match e {
            Edit::Replace(n, text) => {
                let p = &all[n % all.len()].0;
                *v.pointer_mut(p).expect("pointer") = Value::from(placeholder.clone());
                texts.push((quoted(&placeholder), text.clone()));
            }
            // The whole alert replaced by a scalar has no object left to change.
            Edit::Remove(..) | Edit::Insert(..) | Edit::Set(..) if objects.is_empty() => {}
            Edit::Set(key, text) => {
                if let Value::Object(o) = &mut v {
                    o.insert(key.clone(), Value::from(placeholder.clone()));
                    texts.push((quoted(&placeholder), text.clone()));
                }
            }
            Edit::Remove(n, k) => {
                if let Some(Value::Object(o)) = v.pointer_mut(objects[n % objects.len()]) {
                    if let Some(key) = o.keys().nth(k % o.len().max(1)).cloned() {
                        o.remove(&key);
                    }
                }
            }
            Edit::Insert(n, key, text) => {
                let p = objects[n % objects.len()].clone();
                if let Some(Value::Object(o)) = v.pointer_mut(&p) {
                    let key_placeholder = format!("@@fuzzkey{i}@@");
                    o.insert(key_placeholder.clone(), Value::from(placeholder.clone()));
                    texts.push((quoted(&key_placeholder), quoted(key)));
                    texts.push((quoted(&placeholder), text.clone()));
                }
            }
        }
    }
    let mut out = if pretty {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    }
    .expect("a Value serializes");
    for (placeholder, text) in texts {
        // A later edit may have replaced or removed the node an earlier one placed.
        out = out.replacen(&placeholder, &text, 1);
    }
    out
}

/// A fixture alert of either API, mutated.
pub(crate) fn mutated_alert() -> impl Strategy<Value = String> {
    (
        0..fixtures().alerts.len(),
        proptest::collection::vec(edit(), 1..5),
        any::<bool>(),
    )
        .prop_map(|(i, edits, pretty)| mutate(&fixtures().alerts[i], &edits, pretty))
}

/// A fixture file with bytes changed, inserted or removed.
fn byte_mutated_file() -> impl Strategy<Value = Vec<u8>> {
    (
        0..fixtures().files.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..16),
    )
        .prop_map(|(i, edits)| {
            let mut b = fixtures().files[i].clone();
            for (at, byte, op) in edits {
                let at = at % (b.len() + 1);
                match op {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ if at < b.len() => {
                        b.remove(at);
                    }
                    _ => {}
                }
            }
            b
        })
}

// ---- the properties --------------------------------------------------------------------------

/// Decodes `text` as one alert and as an input file (which also replaces lone surrogates);
/// whatever decodes serializes (the JSON format writes it) and detaches from its text.
fn decodes_or_refuses(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = Alert::from_json(text) {
        prop_assert!(!e.to_string().is_empty());
    }
    decodes_as_input(text.as_bytes(), Limits::default())
}

fn decodes_as_input(bytes: &[u8], limits: Limits) -> Result<(), TestCaseError> {
    let mut result = Ok(());
    input::decode(bytes, limits, |d| match d {
        Decoded::Alert(_, a) => {
            if result.is_ok() {
                result = check_alert(*a);
            }
        }
        Decoded::Problem(p) => {
            if result.is_ok() && p.message.is_empty() {
                result = Err(TestCaseError::fail("a problem without a message"));
            }
        }
    });
    result
}

fn check_alert(a: Alert<'_>) -> Result<(), TestCaseError> {
    let json = serde_json::to_string(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(&json).is_ok(),
        "the alert serializes to invalid JSON: {json}"
    );
    let owned = a.into_owned();
    prop_assert_eq!(serde_json::to_string(&owned).ok(), Some(json));
    Ok(())
}

proptest! {
    #![proptest_config(config(3000))]

    /// Any bytes: as an input file, and as one alert when they are UTF-8.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decodes_as_input(&bytes, Limits::default())?;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = Alert::from_json(text);
        }
    }

}

proptest! {
    #![proptest_config(config(2000))]

    /// Any JSON value, and any object of the alerts' own keys with values of any type.
    #[test]
    fn arbitrary_json(
        v in json_value(),
        fields in proptest::collection::vec((select(&fixtures().keys[..]), json_value()), 0..8),
    ) {
        decodes_or_refuses(&v.to_string())?;
        let o = Value::Object(fields.into_iter().collect());
        decodes_or_refuses(&o.to_string())?;
    }

    /// The fixtures' alerts with hostile values, fields removed and fields added.
    #[test]
    fn mutated_fixture_alerts(text in mutated_alert()) {
        decodes_or_refuses(&text)?;
    }

}

proptest! {
    #![proptest_config(config(3000))]

    /// The fixture files with random bytes changed, under random size limits.
    #[test]
    fn byte_mutated_fixture_files(bytes in byte_mutated_file(), max in 0usize..20_000) {
        decodes_as_input(&bytes, Limits::default())?;
        decodes_as_input(&bytes, Limits { max_alert_bytes: max })?;
    }
}

/// The mutations are worth having only if many of the mutated alerts still decode (and go on to
/// the encoders): most edits hit a value the lenient model takes.
#[test]
fn most_mutated_alerts_still_decode() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = mutated_alert();
    let n = 400;
    let ok = (0..n)
        .filter(|_| {
            let text = strategy.new_tree(&mut runner).expect("tree").current();
            Alert::from_json(&text).is_ok()
        })
        .count();
    assert!(ok * 2 > n, "only {ok} of {n} mutated alerts decode");
}

/// Regression: raw JSON the model keeps (custom details, untyped evidence) that a `Value` cannot
/// hold (a lone surrogate escape, a number out of range, deep nesting) was kept with its line
/// breaks, and the JSON record that embeds it spanned several lines.
#[test]
fn raw_json_kept_is_one_line_without_lone_surrogates() {
    let deep = format!("{}\n{}", "[".repeat(200), "]".repeat(200));
    for raw in [
        "{\"a\": \"x\\ud800y\",\n \"b\": 1}",
        "{\"a\": \"\\udc00\"}",
        "{\"a\": 1e400,\n \"b\": [1,\n\t2], \"c\": \"\\\"\\\\ \\n\"}",
        &deep,
    ] {
        let json = format!(
            "{{\"id\":\"x\",\"title\":\"t\",\"customDetails\":{raw},\"evidence\":[{raw}]}}"
        );
        let alert = Alert::from_json(&json).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let kept = [
            alert
                .custom_details
                .as_deref()
                .expect("custom details")
                .get()
                .to_string(),
            serde_json::to_string(&alert.evidence).expect("serializes"),
        ];
        for k in kept {
            assert!(!k.contains(['\n', '\r', '\t']), "{raw}: {k}");
            assert!(!k.to_ascii_lowercase().contains("\\ud800"), "{raw}: {k}");
            assert!(!k.to_ascii_lowercase().contains("\\udc00"), "{raw}: {k}");
            serde_json::from_str::<serde::de::IgnoredAny>(&k)
                .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }
}
