//! Reading alerts from files and stdin: a single alert object, an API list response
//! (`{"value": [...]}`), a JSON array, or NDJSON (one alert a line).
//!
//! The input is streamed ([`Reader`], `split.rs`): it is cut into [`Chunk`]s of whole units
//! (lines, array elements) with a buffer bounded by `max_alert_bytes`, and each chunk is decoded
//! on its own ([`Chunk::decode`]), so that chunks can be decoded on several threads and the
//! memory used does not grow with the input.
//!
//! A bad line or element is reported with its line number and skipped; the rest still decode.
//! Limits keep hostile input from hurting: an alert larger than `max_alert_bytes` is refused,
//! nesting deeper than serde_json's recursion limit (128) is an error, not a stack overflow, and
//! invalid UTF-8 is replaced with U+FFFD rather than losing the alert.

mod split;

pub use split::{Chunk, Reader};

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::alert::Alert;

/// Input limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single alert (an NDJSON line or an array element), in bytes.
    pub max_alert_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A real alert is a few KB; a full page of 10,000 is tens of MB but arrives as elements.
        Limits {
            max_alert_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Something wrong at a line of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
    /// A warning still decoded the alert; an error skipped it.
    pub rejected: bool,
}

/// One thing found in the input, in input order.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// An alert and the line it starts on; it borrows from the input.
    Alert(usize, Box<Alert<'a>>),
    Problem(Problem),
}

/// Decodes every alert in `input`, calling `emit` for each alert and each problem.
pub fn decode(input: &[u8], limits: Limits, mut emit: impl FnMut(Decoded<'_>)) {
    let mut reader = Reader::new(input, limits);
    // Reading a slice cannot fail.
    while let Ok(Some(chunk)) = reader.next_chunk() {
        chunk.decode(&mut emit);
    }
}

#[derive(Deserialize)]
struct ListPage<'a> {
    #[serde(borrow)]
    value: Option<Vec<&'a RawValue>>,
}

impl Chunk {
    /// Decodes the chunk's units, calling `emit` for each alert and each problem, in order.
    pub fn decode(&self, emit: &mut dyn FnMut(Decoded<'_>)) {
        for unit in &self.units {
            if let Some(p) = Chunk::unit_problem(unit) {
                emit(Decoded::Problem(p));
                continue;
            }
            let bytes = &self.text[unit.start..unit.end];
            let text = match std::str::from_utf8(bytes) {
                Ok(s) => Cow::Borrowed(s),
                Err(e) => {
                    let line = unit.line + count_lines(&bytes[..e.valid_up_to()]);
                    emit(Decoded::Problem(Problem {
                        line,
                        message: "invalid UTF-8, replaced with U+FFFD".to_string(),
                        rejected: false,
                    }));
                    String::from_utf8_lossy(bytes)
                }
            };
            object(unit.line, &text, emit);
        }
    }
}

/// One object of the input: an alert, or an API page of them (a line of NDJSON may be one:
/// Elastic's NDJSON ends with `{"value":[]}`). The alert is tried first: that is one pass over
/// an alert, and only a page, which has no `id`, is read twice.
fn object(line: usize, json: &str, emit: &mut dyn FnMut(Decoded<'_>)) {
    let error = match Alert::from_json(json) {
        Ok(a) => return emit(Decoded::Alert(line, Box::new(a))),
        Err(crate::alert::DecodeError::Json(e)) if is_surrogate_error(&e) => {
            return repaired(line, json, emit)
        }
        Err(e) => e,
    };
    match serde_json::from_str::<ListPage>(json) {
        Ok(ListPage { value: Some(items) }) => {
            let mut counted = (0, line);
            for item in items {
                let offset = item.get().as_ptr() as usize - json.as_ptr() as usize;
                counted.1 += count_lines(&json.as_bytes()[counted.0..offset]);
                counted.0 = offset;
                alert(counted.1, item.get(), emit);
            }
        }
        Ok(ListPage { value: None }) => problem(emit, line, error.to_string()),
        Err(e) => problem(
            emit,
            line + e.line().max(1) - 1,
            format!("invalid JSON: {}", strip_position(&e)),
        ),
    }
}

/// An element of a page.
fn alert(line: usize, json: &str, emit: &mut dyn FnMut(Decoded<'_>)) {
    if !json.starts_with('{') {
        return problem(emit, line, "expected an alert object".to_string());
    }
    match Alert::from_json(json) {
        Ok(a) => emit(Decoded::Alert(line, Box::new(a))),
        Err(crate::alert::DecodeError::Json(e)) if is_surrogate_error(&e) => {
            repaired(line, json, emit)
        }
        Err(e) => problem(emit, line, e.to_string()),
    }
}

/// Lone UTF-16 surrogates (`\ud800`) cannot be Rust strings; the alert is kept with U+FFFD in
/// their place.
fn repaired(line: usize, json: &str, emit: &mut dyn FnMut(Decoded<'_>)) {
    let fixed = replace_lone_surrogates(json);
    match Alert::from_json(&fixed) {
        Ok(a) => {
            emit(Decoded::Problem(Problem {
                line,
                message: "lone UTF-16 surrogate escape replaced with U+FFFD".to_string(),
                rejected: false,
            }));
            emit(Decoded::Alert(line, Box::new(a)))
        }
        Err(e) => problem(emit, line, e.to_string()),
    }
}

fn problem(emit: &mut dyn FnMut(Decoded<'_>), line: usize, message: String) {
    emit(Decoded::Problem(Problem {
        line,
        message,
        rejected: true,
    }))
}

fn count_lines(b: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', b).count()
}

/// serde_json's message without its trailing " at line L column C" (we report the line).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn is_surrogate_error(e: &serde_json::Error) -> bool {
    let s = e.to_string();
    s.contains("surrogate") || s.contains("unexpected end of hex escape")
}

/// Replaces `\uD800`-`\uDFFF` escapes that are not a valid high+low pair with `\uFFFD`.
pub(crate) fn replace_lone_surrogates(json: &str) -> String {
    fn hex_at(b: &[u8], i: usize) -> Option<u16> {
        if b.len() >= i + 6 && b[i] == b'\\' && (b[i + 1] == b'u' || b[i + 1] == b'U') {
            std::str::from_utf8(&b[i + 2..i + 6])
                .ok()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
        } else {
            None
        }
    }
    let b = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                continue;
            }
            if let Some(u) = hex_at(b, i) {
                if (0xD800..0xDC00).contains(&u) {
                    if let Some(low) = hex_at(b, i + 6).filter(|l| (0xDC00..0xE000).contains(l)) {
                        let _ = low;
                        i += 12;
                        continue;
                    }
                }
                if (0xD800..0xE000).contains(&u) {
                    out.push_str(&json[last..i]);
                    out.push_str("\\uFFFD");
                    i += 6;
                    last = i;
                    continue;
                }
                i += 6;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&json[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(input: &[u8], limits: Limits) -> (Vec<(usize, Alert<'static>)>, Vec<Problem>) {
        let mut alerts = Vec::new();
        let mut problems = Vec::new();
        decode(input, limits, |d| match d {
            Decoded::Alert(l, a) => alerts.push((l, a.into_owned())),
            Decoded::Problem(p) => problems.push(p),
        });
        (alerts, problems)
    }

    fn run(input: &str) -> (Vec<(usize, String)>, Vec<Problem>) {
        let (alerts, problems) = run_with(input.as_bytes(), Limits::default());
        (
            alerts
                .into_iter()
                .map(|(l, a)| (l, a.id.into_owned()))
                .collect(),
            problems,
        )
    }

    const A: &str =
        r#"{"id":"a1","title":"t","severity":"low","lastUpdateDateTime":"2024-01-01T00:00:00Z"}"#;
    const B: &str =
        r#"{"id":"b2","title":"t","severity":"High","lastUpdateTime":"2024-01-01T00:00:00Z"}"#;

    #[test]
    fn shapes() {
        let single = A.to_string();
        let list = format!("{{\"@odata.context\":\"x\",\"value\":[\n{A},\n{B}\n]}}");
        let array = format!("[\n{A},\n{B}]");
        let ndjson = format!("{A}\n\n{B}\n");
        assert_eq!(run(&single).0, vec![(1, "a1".into())]);
        assert_eq!(run(&list).0, vec![(2, "a1".into()), (3, "b2".into())]);
        assert_eq!(run(&array).0, vec![(2, "a1".into()), (3, "b2".into())]);
        assert_eq!(run(&ndjson).0, vec![(1, "a1".into()), (3, "b2".into())]);
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let input = format!("{A}\n{{\"id\": broken\n[1,2]\n{{\"nothing\":1}}\n{B}\n");
        let (alerts, problems) = run(&input);
        assert_eq!(alerts, vec![(1, "a1".into()), (5, "b2".into())]);
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(
            problems[0]
                .message
                .starts_with("invalid JSON: expected value"),
            "{}",
            problems[0].message
        );
        assert!(problems.iter().all(|p| p.rejected));
    }

    #[test]
    fn broken_document_names_its_line() {
        let (alerts, problems) = run("{\n  \"id\": \"x\",\n  \"title\": oops\n}");
        assert!(alerts.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 3);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let (alerts, problems) = run(&deep);
        assert!(alerts.is_empty());
        assert_eq!(problems[0].message, "expected an alert object");
        // Where a scalar is expected, the nesting is decoded and hits serde_json's limit.
        let deep_title = format!(
            "{{\"id\":\"x\",\"title\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (alerts, problems) = run(&deep_title);
        assert!(alerts.is_empty());
        assert!(
            problems[0].message.contains("recursion limit"),
            "{}",
            problems[0].message
        );
        // A dictionary kept verbatim is only scanned, so it stays with its alert.
        let deep_details = format!(
            "{{\"id\":\"x\",\"title\":\"t\",\"customDetails\":{{\"a\":{}{}}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (alerts, problems) = run(&deep_details);
        assert_eq!(alerts.len(), 1);
        assert!(problems.is_empty());
    }

    #[test]
    fn oversize_alert_is_refused() {
        let big = format!(
            "{A}\n{{\"id\":\"big\",\"title\":\"{}\"}}\n{B}",
            "x".repeat(5000)
        );
        let (alerts, problems) = run_with(
            big.as_bytes(),
            Limits {
                max_alert_bytes: 1000,
            },
        );
        assert_eq!(alerts.len(), 2);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(problems[0]
            .message
            .contains("larger than the limit of 1000 bytes"));
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_keep_the_alert() {
        let mut bytes = br#"{"id":"u1","title":"bad "#.to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(br#" bytes"}"#);
        let (alerts, problems) = run_with(&bytes, Limits::default());
        assert_eq!(
            alerts[0].1.title.as_deref(),
            Some("bad \u{FFFD}\u{FFFD} bytes")
        );
        assert!(!problems[0].rejected);

        let (alerts, problems) = run(r#"{"id":"s1","title":"x\ud800y \ud83d\ude00 \udc00"}"#);
        assert_eq!(alerts.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].rejected);
        let (alerts, _) = run_with(
            br#"{"id":"s1","title":"x\ud800y \ud83d\ude00 \udc00"}"#,
            Limits::default(),
        );
        assert_eq!(alerts[0].1.title.as_deref(), Some("x\u{FFFD}y 😀 \u{FFFD}"));
    }
}
