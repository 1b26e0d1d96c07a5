//! Format mappers: an [`Alert`] becomes one record (or one per evidence item) for one SIEM.
//!
//! The format file (`formats/*.toml`, compiled into a [`mapping::Plan`] once) says what goes
//! where; the encoders ([`cef`], [`leef`], [`json`]) apply their syntax's escaping and length
//! rules; [`syslog`] writes the header that goes in front. Format and framing are kept apart:
//! framing is the transport's business (`sink`).

pub mod cef;
pub mod json;
pub mod leef;
pub mod mapping;
pub mod path;
pub mod syslog;
pub mod text;

use std::borrow::Cow;

use chrono::Utc;

use crate::alert::Alert;
pub use mapping::{Context, FormatError, Plan, Syntax};
use mapping::{Check, Field};
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
    #[error("the record is {size} bytes even with every value that may be cut cut short; the limit is {limit} bytes")]
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
                    BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
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
                &["Unknown", "Unknown", "0", "unknown", "Defender alert", "Unknown"],
            ),
            Syntax::Leef(_) => (&leef::HEADER_MAX_LEN, &["Unknown", "Unknown", "0", "unknown"]),
            Syntax::Json => (&[], &[]),
        };
        let mut header = Vec::with_capacity(self.plan.header.len());
        for (i, v) in self.plan.header.iter().enumerate() {
            let mut value = v.eval(alert, ctx, current).unwrap_or(Cow::Borrowed(fallback[i]));
            if let Some(&max) = header_max.get(i) {
                if text::truncate_chars(&mut value, max) {
                    stats.truncated += 1;
                }
            }
            // CEF severity: 0-10 or a word, else Unknown (formats.md §1.3).
            if i == 5 && !cef::valid_severity(&value) {
                value = Cow::Borrowed("Unknown");
            }
            header.push(value);
        }
        let mut items = Vec::with_capacity(self.plan.fields.len());
        for (i, f) in self.plan.fields.iter().enumerate() {
            let Some(mut value) = f.value.eval(alert, ctx, current) else {
                continue;
            };
            if !f.check.passes(&value) {
                continue;
            }
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
            label.into_iter().chain(std::iter::once((f.key.as_str(), &*it.value)))
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
        let candidate = rec
            .items
            .iter_mut()
            .filter(|it| {
                fields[it.field].check == Check::Any
                    && it.value.chars().nth(MIN_KEEP_CHARS).is_some()
            })
            .map(|it| {
                let len: usize = it.value.chars().map(escaped_len).sum();
                (fields[it.field].importance, std::cmp::Reverse(len), it)
            })
            .min_by_key(|(imp, len, _)| (*imp, *len));
        let Some((_, std::cmp::Reverse(len), item)) = candidate else {
            return false;
        };
        let floor: usize = item
            .value
            .chars()
            .take(MIN_KEEP_CHARS)
            .map(escaped_len)
            .sum::<usize>()
            + escaped_len(text::TRUNCATION_MARK);
        let target = len.saturating_sub(excess).max(floor);
        text::truncate_to_escaped_bytes(&mut item.value, target, escaped_len)
            && item.value.chars().map(escaped_len).sum::<usize>() < len
    }
}

struct Record<'a> {
    header: Vec<Cow<'a, str>>,
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
    loop {
        let excess = size - limit;
        let mut texts = json::cuttable_texts(&mut copy);
        let Some(longest) = texts.first_mut().filter(|s| s.chars().nth(MIN_KEEP_CHARS).is_some())
        else {
            return Err(EncodeError::TooLarge { size, limit });
        };
        let len: usize = longest.chars().map(json::escaped_len).sum();
        let mut value = Cow::Borrowed(longest.as_str());
        let floor = MIN_KEEP_CHARS * 6 + 3;
        if !text::truncate_to_escaped_bytes(&mut value, len.saturating_sub(excess).max(floor), json::escaped_len)
        {
            return Err(EncodeError::TooLarge { size, limit });
        }
        let cut = value.into_owned();
        if cut.len() >= longest.len() {
            return Err(EncodeError::TooLarge { size, limit });
        }
        **longest = cut;
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
        let time = alert
            .last_update()
            .or(alert.created_date_time.as_ref())
            .and_then(|t| t.valid().copied())
            .unwrap_or_else(Utc::now);
        self.header.write(
            out,
            syslog::syslog_severity(&alert.severity),
            time,
            self.formatter.syslog_tag(),
        );
        let header_len = out.len() - start;
        let limit = self.max_message.map(|m| m.saturating_sub(header_len));
        match self.formatter.encode(alert, ctx, index, limit, out) {
            Ok(e) => Ok(e),
            Err(EncodeError::TooLarge { size, limit }) => {
                out.truncate(start);
                Err(EncodeError::TooLarge {
                    size: size + header_len,
                    limit: limit + header_len,
                })
            }
        }
    }
}
