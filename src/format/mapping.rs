//! Format files (`formats/*.toml`) and the plan they compile into.
//!
//! A format file says how an alert becomes one record for one SIEM: the syntax, the header
//! fields, the extension keys and where each value comes from (paths into the alert model, with
//! fallbacks, a constant or a default), value tables, conversions, how lists join, and which
//! evidence items fill a key. It is checked when it is loaded (an unknown key, a bad path, a
//! missing label or a bad value table is an error with the file's line number) and compiled once
//! into a [`Plan`] that the hot path follows without parsing anything again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use toml::Spanned;

use super::cef::{self, HeaderPipes, KeyType};
use super::leef::{self, Dialect};
use super::path::{self, Path, Val};
use super::{stamp, text};
use crate::alert::{Alert, Evidence, Timestamp};

/// A format file that could not be loaded: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for FormatError {}

// ---- the file -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFormat {
    #[serde(default)]
    description: Option<String>,
    syntax: Spanned<String>,
    #[serde(default)]
    records: Option<Spanned<String>>,
    #[serde(default)]
    cef: Option<RawCef>,
    #[serde(default)]
    leef: Option<RawLeef>,
    #[serde(default)]
    header: BTreeMap<String, Spanned<RawField>>,
    #[serde(default)]
    tables: BTreeMap<String, Spanned<BTreeMap<String, TableValue>>>,
    #[serde(default)]
    field: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCef {
    header_pipes: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeef {
    version: Spanned<String>,
    #[serde(default)]
    delimiter: Option<Spanned<String>>,
    #[serde(default)]
    delimiter_substitute: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TableValue {
    Int(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    label: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    fallback: Vec<Spanned<String>>,
    #[serde(default)]
    value: Option<Spanned<String>>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    table: Option<Spanned<String>>,
    #[serde(default)]
    convert: Option<Spanned<String>>,
    #[serde(default)]
    join: Option<String>,
    #[serde(default)]
    evidence: Option<Spanned<String>>,
    #[serde(default)]
    max_length: Option<Spanned<i64>>,
    #[serde(default)]
    importance: Option<Spanned<i64>>,
    #[serde(default)]
    custom: bool,
}

// ---- the plan -----------------------------------------------------------------------------

/// The record syntax and its options.
#[derive(Debug, Clone)]
pub enum Syntax {
    Cef(HeaderPipes),
    Leef(Dialect),
    Json,
}

/// How a value is converted after it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    None,
    /// Milliseconds since the epoch, 13 digits (CEF rule 6, LEEF rule 9).
    EpochMs,
    /// Seconds since the epoch with milliseconds, `1697795589.883` (SC4S reads `%s.%f`).
    EpochS,
    /// `MMM dd yyyy HH:mm:ss UTC` (CEF Appendix A; SC4S `%b %d %Y %T UTC`).
    CefDate,
    /// `MMM dd yyyy HH:mm:ss.SSS UTC` (CEF Appendix A).
    CefDateMs,
    /// RFC 3339 in UTC.
    Rfc3339,
    /// An integer, or nothing.
    Int,
    /// `true`/`false` → `1`/`0` (Microsoft's ArcSight mapping does this, defender-api.md §2.3).
    Bool01,
    Lower,
    Upper,
    /// The host part of a DNS name.
    Host,
    /// The domain part of a DNS name.
    Domain,
}

impl Convert {
    fn parse(s: &str) -> Option<Convert> {
        Some(match s {
            "epoch_ms" => Convert::EpochMs,
            "epoch_s" => Convert::EpochS,
            "cef_date" => Convert::CefDate,
            "cef_date_ms" => Convert::CefDateMs,
            "rfc3339" => Convert::Rfc3339,
            "int" => Convert::Int,
            "bool01" => Convert::Bool01,
            "lower" => Convert::Lower,
            "upper" => Convert::Upper,
            "host" => Convert::Host,
            "domain" => Convert::Domain,
            _ => return None,
        })
    }

    fn is_time(self) -> bool {
        matches!(
            self,
            Convert::EpochMs
                | Convert::EpochS
                | Convert::CefDate
                | Convert::CefDateMs
                | Convert::Rfc3339
        )
    }
}

const CONVERTS: &str =
    "epoch_ms, epoch_s, cef_date, cef_date_ms, rfc3339, int, bool01, lower, upper, host, domain";

/// Which evidence items an evidence path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The first item of the kind that has the field.
    First,
    /// Every item of the kind, values de-duplicated and joined.
    All,
    /// The item the record is made for (per-evidence records only).
    Current,
}

/// A value table: case-insensitive lookup, `"*"` for everything else.
#[derive(Debug, Clone)]
pub struct Table {
    entries: Vec<(String, String)>,
    fallback: Option<String>,
}

impl Table {
    fn lookup<'a>(&'a self, v: &str) -> Option<&'a str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(v))
            .map(|(_, out)| out.as_str())
            .or(self.fallback.as_deref())
    }
}

/// Where one value comes from, compiled.
#[derive(Debug, Clone)]
pub struct Value {
    sources: Vec<Path>,
    constant: Option<String>,
    default: Option<String>,
    table: Option<Table>,
    convert: Convert,
    join: String,
    select: Select,
}

/// What a value must look like to be written under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Any,
    Integer,
    Float,
    Ip,
    /// CEF header severity: 0-10 or a word (formats.md §1.3).
    CefSeverity,
    /// LEEF `sev`: 1-10 (formats.md §2.3).
    LeefSeverity,
}

/// One extension key or attribute.
#[derive(Debug, Clone)]
pub struct Field {
    pub key: String,
    /// `(csNLabel, text)` for keys that need a label.
    pub label: Option<(String, String)>,
    pub value: Value,
    pub max_chars: Option<usize>,
    /// 1 (truncated first when a record must shrink) to 10 (last).
    pub importance: u8,
    pub check: Check,
}

/// A compiled format file.
#[derive(Debug, Clone)]
pub struct Plan {
    pub description: String,
    pub syntax: Syntax,
    pub per_evidence: bool,
    /// CEF: vendor, product, version, class id, name, severity; LEEF: vendor, product, version,
    /// event id; JSON: none.
    pub header: Vec<Value>,
    pub fields: Vec<Field>,
}

/// What an alert is encoded with besides the alert itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The tenant's configured name (`tenant.name`).
    pub tenant_name: Option<&'a str>,
    /// The syslog HOSTNAME to use instead of the destination's (a per-tenant hostname lets
    /// QRadar file each customer under its own log source).
    pub hostname: Option<&'a str>,
}

// ---- compiling ----------------------------------------------------------------------------

struct Compiler<'s> {
    origin: &'s str,
    src: &'s str,
}

impl Compiler<'_> {
    fn line(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, FormatError> {
        Err(FormatError {
            origin: self.origin.to_string(),
            line: Some(self.line(span.start)),
            message: message.into(),
        })
    }
}

const CEF_HEADER: [&str; 6] = [
    "vendor", "product", "version", "class_id", "name", "severity",
];
const LEEF_HEADER: [&str; 4] = ["vendor", "product", "version", "event_id"];

/// Parses and checks a format file, and compiles it.
pub fn compile(origin: &str, src: &str) -> Result<Plan, FormatError> {
    let raw: RawFormat = toml::from_str(src).map_err(|e| FormatError {
        origin: origin.to_string(),
        line: e
            .span()
            .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1),
        message: e.message().to_string(),
    })?;
    let c = Compiler { origin, src };

    let syntax = match raw.syntax.get_ref().as_str() {
        "cef" => {
            if raw.leef.is_some() {
                return c.err(raw.syntax.span(), "a [leef] section in a cef format");
            }
            let pipes = match &raw.cef {
                None => HeaderPipes::Escape,
                Some(cef) => match cef.header_pipes.get_ref().as_str() {
                    "escape" => HeaderPipes::Escape,
                    "replace" => HeaderPipes::Replace,
                    other => {
                        return c.err(
                            cef.header_pipes.span(),
                            format!("header_pipes is {other:?}: use \"escape\" or \"replace\""),
                        )
                    }
                },
            };
            Syntax::Cef(pipes)
        }
        "leef" => {
            if raw.cef.is_some() {
                return c.err(raw.syntax.span(), "a [cef] section in a leef format");
            }
            let Some(l) = &raw.leef else {
                return c.err(
                    raw.syntax.span(),
                    "a leef format needs a [leef] section with version",
                );
            };
            Syntax::Leef(leef_dialect(&c, l)?)
        }
        "json" => {
            if raw.cef.is_some() || raw.leef.is_some() {
                return c.err(
                    raw.syntax.span(),
                    "a [cef] or [leef] section in a json format",
                );
            }
            Syntax::Json
        }
        other => {
            return c.err(
                raw.syntax.span(),
                format!("syntax is {other:?}: use \"cef\", \"leef\" or \"json\""),
            )
        }
    };
    let per_evidence = match raw
        .records
        .as_ref()
        .map(|r| (r.get_ref().as_str(), r.span()))
    {
        None | Some(("alert", _)) => false,
        Some(("evidence", _)) => true,
        Some((other, span)) => {
            return c.err(
                span,
                format!("records is {other:?}: use \"alert\" or \"evidence\""),
            )
        }
    };

    // Value tables.
    let mut tables: BTreeMap<&str, (Table, bool, std::ops::Range<usize>)> = BTreeMap::new();
    for (name, t) in &raw.tables {
        let mut entries = Vec::new();
        let mut fallback = None;
        let mut all_int = true;
        if t.get_ref().is_empty() {
            return c.err(t.span(), format!("table {name:?} is empty"));
        }
        for (k, v) in t.get_ref() {
            let v = match v {
                TableValue::Int(i) => i.to_string(),
                TableValue::Text(s) => {
                    all_int = false;
                    s.clone()
                }
            };
            if k == "*" {
                fallback = Some(v);
            } else {
                entries.push((k.clone(), v));
            }
        }
        tables.insert(name, (Table { entries, fallback }, all_int, t.span()));
    }

    // Header.
    let header_names: &[&str] = match syntax {
        Syntax::Cef(_) => &CEF_HEADER,
        Syntax::Leef(_) => &LEEF_HEADER,
        Syntax::Json => &[],
    };
    for (name, f) in &raw.header {
        if !header_names.contains(&name.as_str()) {
            let allowed = if header_names.is_empty() {
                "a json format has no header".to_string()
            } else {
                format!("the header fields are {}", header_names.join(", "))
            };
            return c.err(
                f.span(),
                format!("unknown header field {name:?}: {allowed}"),
            );
        }
    }
    let mut header = Vec::new();
    for name in header_names {
        let Some(f) = raw.header.get(*name) else {
            return c.err(0..0, format!("[header] lacks {name:?}"));
        };
        let raw_field = f.get_ref();
        for (present, what) in [
            (raw_field.key.is_some(), "key"),
            (raw_field.label.is_some(), "label"),
            (raw_field.max_length.is_some(), "max_length"),
            (raw_field.importance.is_some(), "importance"),
            (raw_field.custom, "custom"),
        ] {
            if present {
                return c.err(f.span(), format!("header field {name:?} takes no {what}"));
            }
        }
        let value = compile_value(&c, f, &tables, per_evidence)?;
        if *name == "severity" {
            check_number_table(
                &c,
                f,
                &value,
                &tables,
                0,
                10,
                "CEF severity (formats.md §1.3)",
            )?;
        }
        header.push(value);
    }

    // Fields.
    let mut fields: Vec<Field> = Vec::new();
    for f in &raw.field {
        let rf = f.get_ref();
        let Some(key) = &rf.key else {
            return c.err(f.span(), "a [[field]] needs a key");
        };
        let key_name = key.get_ref().clone();
        if key_name.is_empty()
            || !key_name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return c.err(
                key.span(),
                format!("key {key_name:?} must be one word of letters and digits"),
            );
        }
        if fields.iter().any(|x| x.key == key_name)
            || fields
                .iter()
                .any(|x| x.label.as_ref().is_some_and(|(l, _)| *l == key_name))
        {
            return c.err(key.span(), format!("key {key_name:?} appears twice"));
        }
        let value = compile_value(&c, f, &tables, per_evidence)?;
        let (mut max_chars, check, label) = match &syntax {
            Syntax::Cef(_) => cef_key(&c, f, &key_name, &value)?,
            Syntax::Leef(_) => leef_key(&c, f, &key_name, &value, &tables)?,
            Syntax::Json => {
                if let Some(l) = &rf.label {
                    return c.err(l.span(), "labels are for CEF keys");
                }
                let check = if value.convert == Convert::Int {
                    Check::Integer
                } else {
                    Check::Any
                };
                (None, check, None)
            }
        };
        if let Some(label) = &label {
            if fields.iter().any(|x| x.key == label.0) {
                return c.err(key.span(), format!("key {:?} appears twice", label.0));
            }
        }
        if let Some(m) = &rf.max_length {
            let v = *m.get_ref();
            if v < 1 || max_chars.is_some_and(|spec| v as usize > spec) {
                return c.err(
                    m.span(),
                    format!(
                        "max_length {v} for {key_name:?} must be between 1 and {}",
                        max_chars.map_or("any size".to_string(), |s| s.to_string())
                    ),
                );
            }
            max_chars = Some(v as usize);
        }
        let importance = match &rf.importance {
            None => 5,
            Some(i) if (1..=10).contains(i.get_ref()) => *i.get_ref() as u8,
            Some(i) => return c.err(i.span(), "importance is 1 (cut first) to 10 (cut last)"),
        };
        fields.push(Field {
            key: key_name,
            label,
            value,
            max_chars,
            importance,
            check,
        });
    }
    let used: Vec<&str> = raw
        .header
        .values()
        .chain(raw.field.iter())
        .filter_map(|f| f.get_ref().table.as_ref().map(|t| t.get_ref().as_str()))
        .collect();
    for (name, (_, _, span)) in &tables {
        if !used.contains(name) {
            return c.err(span.clone(), format!("table {name:?} is never used"));
        }
    }
    Ok(Plan {
        description: raw.description.unwrap_or_default(),
        syntax,
        per_evidence,
        header,
        fields,
    })
}

fn leef_dialect(c: &Compiler, l: &RawLeef) -> Result<Dialect, FormatError> {
    let version = match l.version.get_ref().as_str() {
        "1.0" => 1,
        "2.0" => 2,
        other => {
            return c.err(
                l.version.span(),
                format!("LEEF version {other:?}: use \"1.0\" or \"2.0\""),
            )
        }
    };
    let delimiter = match (&l.delimiter, version) {
        (None, 1) => '\t',
        (None, _) => '^',
        (Some(d), 1) => return c.err(d.span(), "LEEF 1.0 is always tab-delimited"),
        (Some(d), _) => {
            let s = d.get_ref();
            let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix('x'));
            let ch = match hex {
                Some(h) if !h.is_empty() && h.len() <= 4 => {
                    u32::from_str_radix(h, 16).ok().and_then(char::from_u32)
                }
                _ if s.chars().count() == 1 => s.chars().next(),
                _ => None,
            };
            match ch {
                // `=`, `|`, CR and LF would break the syntax itself.
                Some(ch) if !matches!(ch, '=' | '|' | '\r' | '\n') && !ch.is_alphanumeric() => ch,
                _ => {
                    return c.err(
                        d.span(),
                        format!("delimiter {s:?}: one character (not a letter, digit, = or |) or xHH (formats.md §2.1)"),
                    )
                }
            }
        }
    };
    let substitute = match &l.delimiter_substitute {
        None if delimiter == '^' => "\u{FF3E}".to_string(),
        // Not a space for a space: `a b=c` would be two attributes (`format::fuzz`).
        // A no-break space looks the same, as ＾ does for ^.
        None if delimiter == ' ' => "\u{A0}".to_string(),
        None => " ".to_string(),
        Some(s) => {
            if s.get_ref().contains(delimiter) || s.get_ref().contains(['\r', '\n']) {
                return c.err(
                    s.span(),
                    "delimiter_substitute must not contain the delimiter, CR or LF",
                );
            }
            s.get_ref().clone()
        }
    };
    Ok(Dialect {
        version,
        delimiter,
        substitute,
    })
}

fn compile_value(
    c: &Compiler,
    f: &Spanned<RawField>,
    tables: &BTreeMap<&str, (Table, bool, std::ops::Range<usize>)>,
    per_evidence: bool,
) -> Result<Value, FormatError> {
    let rf = f.get_ref();
    let mut sources = Vec::new();
    let mut has_evidence_path = false;
    match (&rf.path, &rf.value) {
        (Some(_), Some(v)) => return c.err(v.span(), "give either path or value, not both"),
        (None, None) => return c.err(f.span(), "a field needs a path or a value"),
        (None, Some(v)) => {
            if !rf.fallback.is_empty() {
                return c.err(v.span(), "a constant value takes no fallback");
            }
        }
        (Some(p), None) => {
            for p in std::iter::once(p).chain(rf.fallback.iter()) {
                let path = path::compile(p.get_ref()).or_else(|m| c.err(p.span(), m))?;
                match path {
                    Path::Current(_) if !per_evidence => {
                        return c.err(p.span(), "`evidence.` paths need records = \"evidence\"")
                    }
                    Path::Evidence(..) => has_evidence_path = true,
                    _ => {}
                }
                sources.push(path);
            }
        }
    }
    let select = match rf
        .evidence
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("first", _)) => Select::First,
        Some(("all", _)) => Select::All,
        Some(("current", span)) => {
            if !per_evidence {
                return c.err(span, "evidence = \"current\" needs records = \"evidence\"");
            }
            Select::Current
        }
        Some((other, span)) => {
            return c.err(
                span,
                format!("evidence is {other:?}: use \"first\", \"all\" or \"current\""),
            )
        }
    };
    if let Some(e) = &rf.evidence {
        if !has_evidence_path {
            return c.err(
                e.span(),
                "evidence = … applies only to evidence paths (file.…, process.…)",
            );
        }
    }
    let convert = match &rf.convert {
        None => Convert::None,
        Some(s) => Convert::parse(s.get_ref()).map_or_else(
            || {
                c.err(
                    s.span(),
                    format!("convert is {:?}: use one of {CONVERTS}", s.get_ref()),
                )
            },
            Ok,
        )?,
    };
    let table = match &rf.table {
        None => None,
        Some(t) => match tables.get(t.get_ref().as_str()) {
            Some((table, _, _)) => Some(table.clone()),
            None => {
                return c.err(
                    t.span(),
                    format!("no table named {:?} in [tables]", t.get_ref()),
                )
            }
        },
    };
    Ok(Value {
        sources,
        constant: rf.value.as_ref().map(|v| v.get_ref().clone()),
        default: rf.default.clone(),
        table,
        convert,
        join: rf.join.clone().unwrap_or_else(|| ",".to_string()),
        select,
    })
}

/// A value that must be a number in `lo..=hi` (a severity): its table must map every value there
/// and have a `"*"` entry, or a constant must be in range.
fn check_number_table(
    c: &Compiler,
    f: &Spanned<RawField>,
    v: &Value,
    tables: &BTreeMap<&str, (Table, bool, std::ops::Range<usize>)>,
    lo: i64,
    hi: i64,
    what: &str,
) -> Result<(), FormatError> {
    let in_range = |s: &str| s.parse::<i64>().is_ok_and(|n| (lo..=hi).contains(&n));
    if let Some(k) = &v.constant {
        if !in_range(k) {
            return c.err(f.span(), format!("{what} must be {lo}-{hi}, not {k:?}"));
        }
        return Ok(());
    }
    let Some(t) = &v.table else {
        return c.err(
            f.span(),
            format!("{what} needs a table that maps the alert's values to {lo}-{hi}"),
        );
    };
    let span = f
        .get_ref()
        .table
        .as_ref()
        .and_then(|n| tables.get(n.get_ref().as_str()))
        .map(|(_, _, s)| s.clone())
        .unwrap_or(f.span());
    for (k, out) in t.entries.iter() {
        if !in_range(out) {
            return c.err(
                span,
                format!("table value for {k:?} is {out:?}; {what} must be {lo}-{hi}"),
            );
        }
    }
    match &t.fallback {
        Some(out) if in_range(out) => Ok(()),
        Some(out) => c.err(
            span,
            format!("table value for \"*\" is {out:?}; {what} must be {lo}-{hi}"),
        ),
        None => c.err(
            span,
            format!("a table for {what} needs a \"*\" entry for values it does not list"),
        ),
    }
}

type KeyPlan = (Option<usize>, Check, Option<(String, String)>);

fn cef_key(
    c: &Compiler,
    f: &Spanned<RawField>,
    key: &str,
    value: &Value,
) -> Result<KeyPlan, FormatError> {
    let rf = f.get_ref();
    let span = rf.key.as_ref().map_or(f.span(), |k| k.span());
    if reserved_cef_key(key) {
        return c.err(
            span,
            format!("{key:?} is set by ArcSight or is a label; producers must not send it (formats.md §1.9); use label = \"…\" on the field"),
        );
    }
    let label = match (cef::label_max_len(key), &rf.label) {
        (Some(max), Some(l)) => {
            let text = l.get_ref().trim();
            if text.is_empty() || text.chars().count() > max {
                return c.err(
                    l.span(),
                    format!("the label of {key:?} must be 1-{max} characters"),
                );
            }
            Some((format!("{key}Label"), text.to_string()))
        }
        (Some(_), None) => {
            return c.err(
                span,
                format!(
                "{key:?} needs a label = \"…\" (formats.md §1.5: every custom field has a label)"
            ),
            )
        }
        (None, Some(l)) => return c.err(l.span(), format!("{key:?} takes no label")),
        (None, None) => None,
    };
    let (max, check) = match cef::lookup(key) {
        Some(info) => {
            let check = match info.kind {
                KeyType::Number => Check::Integer,
                KeyType::Float => Check::Float,
                KeyType::Ip => Check::Ip,
                KeyType::Time => {
                    if !matches!(value.convert, Convert::EpochMs | Convert::CefDate | Convert::CefDateMs)
                        && value.constant.is_none()
                    {
                        return c.err(
                            span,
                            format!("{key:?} is a CEF timestamp: add convert = \"epoch_ms\", \"cef_date\" or \"cef_date_ms\" (formats.md §1.6)"),
                        );
                    }
                    Check::Any
                }
                KeyType::String | KeyType::Mac => Check::Any,
            };
            (info.max_len, check)
        }
        None if rf.custom => (Some(1023), Check::Any),
        None => {
            return c.err(
                span,
                format!("{key:?} is not a key of the CEF dictionary (formats.md §1.8); a vendor key needs custom = true"),
            )
        }
    };
    if rf.custom && cef::lookup(key).is_some() {
        return c.err(span, format!("{key:?} is a dictionary key, not custom"));
    }
    Ok((max, check, label))
}

/// Keys a producer never writes itself: ArcSight's consumer keys, and labels (written from a
/// field's `label`).
fn reserved_cef_key(key: &str) -> bool {
    cef::CONSUMER_ONLY.contains(&key) || key.ends_with("Label")
}

fn leef_key(
    c: &Compiler,
    f: &Spanned<RawField>,
    key: &str,
    value: &Value,
    tables: &BTreeMap<&str, (Table, bool, std::ops::Range<usize>)>,
) -> Result<KeyPlan, FormatError> {
    let rf = f.get_ref();
    let span = rf.key.as_ref().map_or(f.span(), |k| k.span());
    if let Some(l) = &rf.label {
        return c.err(l.span(), "labels are for CEF keys");
    }
    let predefined = leef::PREDEFINED.iter().find(|(k, _)| *k == key);
    match (predefined, rf.custom) {
        (Some(_), true) => return c.err(span, format!("{key:?} is a predefined LEEF attribute, not custom")),
        (None, false) => {
            return c.err(
                span,
                format!("{key:?} is not a predefined LEEF attribute (formats.md §2.3); a custom property needs custom = true"),
            )
        }
        _ => {}
    }
    let check = match key {
        "sev" => {
            check_number_table(c, f, value, tables, 1, 10, "LEEF sev (formats.md §2.3)")?;
            Check::LeefSeverity
        }
        "src" | "dst" | "identSrc" | "srcPreNAT" | "dstPreNAT" | "srcPostNAT" | "dstPostNAT"
        | "vSrc" => Check::Ip,
        "srcPort" | "dstPort" | "srcBytes" | "dstBytes" | "srcPackets" | "dstPackets"
        | "totalPackets" => Check::Integer,
        _ => Check::Any,
    };
    if key == "devTime" && !matches!(value.convert, Convert::EpochMs) {
        return c.err(span, "devTime needs convert = \"epoch_ms\" (formats.md §2.4: a 13-digit epoch needs no devTimeFormat)");
    }
    Ok((predefined.and_then(|(_, m)| *m), check, None))
}

// ---- evaluating ---------------------------------------------------------------------------

impl Value {
    /// The value for one record, cleaned (formats.md rule 4), or `None` when there is none.
    /// A value that `accept` refuses (an IP field's value that is not an address) is passed
    /// over for the next evidence item, fallback or default.
    pub fn eval<'a>(
        &'a self,
        alert: &'a Alert,
        ctx: &Context<'a>,
        current: Option<&'a Evidence>,
        accept: &dyn Fn(&str) -> bool,
    ) -> Option<Cow<'a, str>> {
        if let Some(k) = &self.constant {
            return text::clean(k).filter(|v| accept(v));
        }
        for path in &self.sources {
            if let (Path::Evidence(kind, g), Select::First) = (path, self.select) {
                for e in alert.evidence_of(*kind) {
                    if let Some(v) = self.finish(g(e), accept) {
                        return Some(v);
                    }
                }
                continue;
            }
            if let Some(v) = self.finish(self.read(*path, alert, ctx, current), accept) {
                return Some(v);
            }
        }
        self.default
            .as_deref()
            .and_then(text::clean)
            .filter(|v| accept(v))
    }

    fn finish<'a>(&'a self, v: Val<'a>, accept: &dyn Fn(&str) -> bool) -> Option<Cow<'a, str>> {
        if v.is_none() {
            return None;
        }
        let cleaned = clean_cow(self.convert_val(v)?)?;
        accept(&cleaned).then_some(cleaned)
    }

    fn read<'a>(
        &self,
        path: Path,
        alert: &'a Alert,
        ctx: &Context<'a>,
        current: Option<&'a Evidence>,
    ) -> Val<'a> {
        match path {
            Path::Alert(g) => g(alert),
            Path::TenantName => ctx.tenant_name.map_or(Val::None, Val::Str),
            Path::Current(g) => current.map_or(Val::None, g),
            Path::Evidence(kind, g) => match self.select {
                Select::Current => current.filter(|e| e.kind() == kind).map_or(Val::None, g),
                // Handled item by item in `eval`.
                Select::First => alert.evidence_of(kind).next().map_or(Val::None, g),
                Select::All => {
                    let mut out: Vec<String> = Vec::new();
                    for v in alert.evidence_of(kind).map(g) {
                        let items: Vec<String> = match v {
                            Val::None => continue,
                            Val::Str(s) => vec![s.to_string()],
                            Val::Owned(s) => vec![s],
                            Val::Time(t) => vec![t.to_rfc3339()],
                            Val::List(l) => l.into_iter().map(str::to_string).collect(),
                        };
                        for i in items {
                            if !out.contains(&i) {
                                out.push(i);
                            }
                        }
                    }
                    if out.is_empty() {
                        Val::None
                    } else {
                        Val::Owned(out.join(&self.join))
                    }
                }
            },
        }
    }

    fn convert_val<'a>(&'a self, v: Val<'a>) -> Option<Cow<'a, str>> {
        match v {
            Val::None => None,
            Val::Str(s) => self.convert_str(Cow::Borrowed(s)),
            Val::Owned(s) => self.convert_str(Cow::Owned(s)),
            Val::Time(t) => match t {
                Timestamp::Valid(dt) => convert_time(dt, self.convert).map(Cow::Owned),
                // A timestamp the API sent as text that is not a time: as text where text is
                // fine, nowhere a time is required.
                Timestamp::Invalid(s) => {
                    if self.convert.is_time() {
                        None
                    } else {
                        self.convert_str(Cow::Borrowed(s))
                    }
                }
            },
            Val::List(items) => {
                // Joined as they come, into one allocation for the usual list (a table or a
                // conversion may make a part longer).
                let room = items.iter().map(|i| i.len() + self.join.len()).sum();
                let mut joined: Option<String> = None;
                for part in items
                    .into_iter()
                    .filter_map(|i| self.convert_str(Cow::Borrowed(i)))
                {
                    match &mut joined {
                        None => {
                            let mut s = String::with_capacity(room);
                            s.push_str(&part);
                            joined = Some(s);
                        }
                        Some(s) => {
                            s.push_str(&self.join);
                            s.push_str(&part);
                        }
                    }
                }
                joined.map(Cow::Owned)
            }
        }
    }

    fn convert_str<'a>(&'a self, s: Cow<'a, str>) -> Option<Cow<'a, str>> {
        let s = match &self.table {
            Some(t) => match t.lookup(&s) {
                Some(mapped) => Cow::Borrowed(mapped),
                None => s,
            },
            None => s,
        };
        match self.convert {
            Convert::None => Some(s),
            c if c.is_time() => match Timestamp::parse(&s) {
                Timestamp::Valid(dt) => convert_time(&dt, c).map(Cow::Owned),
                Timestamp::Invalid(_) => None,
            },
            Convert::Int => {
                let t = s.trim();
                if t.parse::<i64>().is_ok() {
                    Some(s)
                } else {
                    // `12.0` is an integer too; `12.5` is not.
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| Cow::Owned((f as i64).to_string()))
                }
            }
            Convert::Bool01 => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(Cow::Borrowed("1")),
                "false" | "0" | "no" => Some(Cow::Borrowed("0")),
                _ => None,
            },
            Convert::Lower => Some(Cow::Owned(s.to_lowercase())),
            Convert::Upper => Some(Cow::Owned(s.to_uppercase())),
            Convert::Host => {
                // An IP address has no host part to split off.
                if s.parse::<IpAddr>().is_ok() {
                    return Some(s);
                }
                match s.split_once('.') {
                    Some((h, _)) => Some(Cow::Owned(h.to_string())),
                    None => Some(s),
                }
            }
            Convert::Domain => {
                if s.parse::<IpAddr>().is_ok() {
                    return None;
                }
                s.split_once('.').map(|(_, d)| Cow::Owned(d.to_string()))
            }
            _ => Some(s),
        }
    }
}

fn clean_cow(v: Cow<'_, str>) -> Option<Cow<'_, str>> {
    match v {
        Cow::Borrowed(b) => text::clean(b),
        Cow::Owned(o) => {
            // Most values need no cleaning: keep the String instead of copying it.
            let cleaned = match text::clean(&o)? {
                Cow::Borrowed(c) if c.len() == o.len() => None,
                c => Some(c.into_owned()),
            };
            Some(Cow::Owned(cleaned.unwrap_or(o)))
        }
    }
}

// ---- times at the edges (issue 12 §3) -------------------------------------------------------
//
// Some Microsoft APIs send `0001-01-01T00:00:00Z` (.NET's DateTime.MinValue) for "no date", and
// now and then `1970-01-01T00:00:00Z` (the Unix zero) or `9999-12-31T23:59:59.9999999Z`
// (DateTime.MaxValue). Written as they are, they break the receivers: `rt=-62135596800000`,
// `devTime=0`, a 15-digit epoch. The rule, kept here and nowhere else (every time key of every
// format file goes through `convert_time`), is: a time that a conversion cannot write in a form
// its receivers read right is absent. The key is left out (its fallback or default applies), as
// for a time that is not a time at all. The JSON format writes the alert's own text: it keeps
// every time as sent.
//
// * `epoch_ms` and `epoch_s` write only a full-width epoch, 13 digits of milliseconds or 10 of
//   seconds: 2001-09-09T01:46:40Z ..= 2286-11-20T17:46:39.999Z.
//   - QRadar reads a 10- or 13-digit `devTime` as an epoch; any other `devTime` needs a
//     `devTimeFormat` (formats.md §2.4, rule 9), so `devTime=0`, a 12-digit 1999 or a 15-digit
//     9999 is misread. A `devTimeFormat` pattern (`MMM dd yyyy HH:mm:ss.SSS z`) could carry
//     such a time, but only as a second attribute that some records have and others lack, and
//     SC4S's LEEF path ignores `devTimeFormat` and reads only its fixed list of forms (§2.4).
//     Without `devTime`, QRadar takes the syslog header's time (§2.4: devTime only takes
//     precedence over it), which is always right for what it is.
//   - A CEF epoch is milliseconds since 1970 in 13 digits (formats.md rule 6, §1.6). SC4S ignores
//     a value that starts with 12 digits but reads a shorter one with `%s`, as *seconds* (§1.6):
//     `rt=86400000` (1970-01-02) would become 1972. A negative epoch is no CEF time at all.
//   Defender for Endpoint dates from 2016: an alert time before 2001 or after 2286 is a
//   placeholder, not the time of anything, so nothing real is left out.
// * `cef_date` and `cef_date_ms` (`MMM dd yyyy HH:mm:ss[.SSS] UTC`, formats.md §1.6) write years
//   1970-9999: CEF times count from 1970 (§1.6, Appendix A), and `yyyy` has four digits.
// * `rfc3339` writes every time: years 0000-9999 are valid RFC 3339 (the JSON form).

/// 13-digit epoch milliseconds: 10^12 ..= 10^13 - 1 (2001-09-09T01:46:40Z ..= 2286-11-20T17:46:39.999Z).
const EPOCH_MS: std::ops::RangeInclusive<i64> = 1_000_000_000_000..=9_999_999_999_999;
/// 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z in epoch milliseconds.
const CEF_DATE_MS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// Whether `dt` lies in 1970-9999, the years the CEF date form (and a syslog header time worth
/// trusting) can carry.
pub fn is_calendar_time(dt: &DateTime<Utc>) -> bool {
    CEF_DATE_MS.contains(&dt.timestamp_millis())
}

/// `dt` in the form `c` names, or `None` when that form cannot carry it (see above).
fn convert_time(dt: &DateTime<Utc>, c: Convert) -> Option<String> {
    let ms = dt.timestamp_millis();
    Some(match c {
        Convert::EpochMs if EPOCH_MS.contains(&ms) => ms.to_string(),
        Convert::EpochS if EPOCH_MS.contains(&ms) => {
            format!("{}.{:03}", dt.timestamp(), dt.timestamp_subsec_millis())
        }
        Convert::CefDate if is_calendar_time(dt) => cef_date(dt, false),
        Convert::CefDateMs if is_calendar_time(dt) => cef_date(dt, true),
        Convert::EpochMs | Convert::EpochS | Convert::CefDate | Convert::CefDateMs => return None,
        _ => dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    })
}

/// `MMM dd yyyy HH:mm:ss[.SSS] UTC`, by hand when the year has four digits.
fn cef_date(dt: &DateTime<Utc>, millis: bool) -> String {
    let mut out = Vec::with_capacity(28);
    if stamp::cef_date(&mut out, dt, millis) {
        out.extend_from_slice(b" UTC");
        return String::from_utf8(out).expect("month names and digits are ASCII");
    }
    let fmt = if millis {
        "%b %d %Y %H:%M:%S%.3f UTC"
    } else {
        "%b %d %Y %H:%M:%S UTC"
    };
    dt.format(fmt).to_string()
}

impl Check {
    /// Whether `v` may be written; a value of the wrong type is left out rather than sent to a
    /// typed SIEM column it would break.
    pub fn passes(self, v: &str) -> bool {
        match self {
            Check::Any => true,
            Check::Integer => v.parse::<i64>().is_ok(),
            Check::Float => v.parse::<f64>().is_ok_and(f64::is_finite),
            Check::Ip => v.parse::<IpAddr>().is_ok(),
            Check::CefSeverity => cef::valid_severity(v),
            Check::LeefSeverity => v.parse::<u8>().is_ok_and(|n| (1..=10).contains(&n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times at and around the edges of each conversion's window, and what each conversion
    /// writes for them (`None`: the key is absent).
    #[test]
    fn edge_times_per_conversion() {
        type Row = (
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // input, epoch_ms, epoch_s, cef_date, cef_date_ms, rfc3339
            ("0001-01-01T00:00:00Z", None, None, None, None, "0001-01-01T00:00:00Z"),
            ("1969-12-31T23:59:59.999Z", None, None, None, None, "1969-12-31T23:59:59.999Z"),
            ("1970-01-01T00:00:00Z", None, None,
                Some("Jan 01 1970 00:00:00 UTC"), Some("Jan 01 1970 00:00:00.000 UTC"), "1970-01-01T00:00:00Z"),
            ("1999-12-31T23:59:59Z", None, None,
                Some("Dec 31 1999 23:59:59 UTC"), Some("Dec 31 1999 23:59:59.000 UTC"), "1999-12-31T23:59:59Z"),
            ("2001-09-09T01:46:39.999Z", None, None,
                Some("Sep 09 2001 01:46:39 UTC"), Some("Sep 09 2001 01:46:39.999 UTC"), "2001-09-09T01:46:39.999Z"),
            ("2001-09-09T01:46:40Z", Some("1000000000000"), Some("1000000000.000"),
                Some("Sep 09 2001 01:46:40 UTC"), Some("Sep 09 2001 01:46:40.000 UTC"), "2001-09-09T01:46:40Z"),
            ("2026-01-02T03:04:05.6789012Z", Some("1767323045678"), Some("1767323045.678"),
                Some("Jan 02 2026 03:04:05 UTC"), Some("Jan 02 2026 03:04:05.678 UTC"), "2026-01-02T03:04:05.678901200Z"),
            ("2286-11-20T17:46:39.999Z", Some("9999999999999"), Some("9999999999.999"),
                Some("Nov 20 2286 17:46:39 UTC"), Some("Nov 20 2286 17:46:39.999 UTC"), "2286-11-20T17:46:39.999Z"),
            ("2286-11-20T17:46:40Z", None, None,
                Some("Nov 20 2286 17:46:40 UTC"), Some("Nov 20 2286 17:46:40.000 UTC"), "2286-11-20T17:46:40Z"),
            ("9999-12-31T23:59:59.9999999Z", None, None,
                Some("Dec 31 9999 23:59:59 UTC"), Some("Dec 31 9999 23:59:59.999 UTC"), "9999-12-31T23:59:59.999999900Z"),
        ];
        for &(input, ms, s, date, date_ms, rfc) in rows {
            let Timestamp::Valid(dt) = Timestamp::parse(input) else {
                panic!("{input} is a time");
            };
            for (c, want) in [
                (Convert::EpochMs, ms),
                (Convert::EpochS, s),
                (Convert::CefDate, date),
                (Convert::CefDateMs, date_ms),
                (Convert::Rfc3339, Some(rfc)),
            ] {
                assert_eq!(convert_time(&dt, c).as_deref(), want, "{input} {c:?}");
            }
        }
    }

    /// An epoch is written with exactly its width or not at all, whatever the time.
    #[test]
    fn epochs_have_their_full_width_or_are_absent() {
        let mut ms = -62_135_596_800_000i64; // 0001-01-01
        while ms < 253_402_300_800_000 {
            let dt = DateTime::from_timestamp_millis(ms).unwrap();
            if let Some(v) = convert_time(&dt, Convert::EpochMs) {
                assert!(
                    v.len() == 13 && v.bytes().all(|b| b.is_ascii_digit()),
                    "{dt}: {v}"
                );
                assert_eq!(v.parse::<i64>().unwrap(), ms);
            } else {
                assert!(!EPOCH_MS.contains(&ms), "{dt}");
            }
            if let Some(v) = convert_time(&dt, Convert::EpochS) {
                let (secs, frac) = v.split_once('.').unwrap();
                assert!(secs.len() == 10 && frac.len() == 3, "{dt}: {v}");
            }
            ms += 7_919_999_999_977; // a prime step of about 251 years
        }
    }

    /// The rule applies to a time read from text too (an evidence time, a constant), and a
    /// fallback fills the key it left empty.
    #[test]
    fn an_edge_time_falls_back() {
        let plan = compile(
            "t",
            r#"syntax = "json"
[[field]]
key = "t"
path = "createdDateTime"
fallback = ["lastUpdateDateTime"]
convert = "epoch_ms"
[[field]]
key = "d"
path = "createdDateTime"
convert = "cef_date"
default = "none"
"#,
        )
        .unwrap();
        let json = r#"{"id":"a","createdDateTime":"0001-01-01T00:00:00Z","lastUpdateDateTime":"2026-01-02T03:04:05.678Z"}"#;
        let alert = Alert::from_json(json).unwrap();
        let ctx = Context::default();
        let eval = |i: usize| {
            plan.fields[i]
                .value
                .eval(&alert, &ctx, None, &|_| true)
                .map(|v| v.into_owned())
        };
        assert_eq!(eval(0).as_deref(), Some("1767323045678"));
        assert_eq!(eval(1).as_deref(), Some("none"));
    }
}
