//! JSON records: one object per line, for any SIEM that takes JSON.
//!
//! Without fields in the format file the record is the whole normalised alert (Graph field names,
//! evidence typed, unknown evidence kinds verbatim), plus `tenantName`. With fields, it is a flat
//! object of those keys. serde_json escapes every control character, so a record never holds a
//! raw line break (RFC 8259 §7).

use serde::Serialize;

use crate::alert::{Alert, EvidenceDetail, Text};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    #[serde(flatten)]
    alert: &'a Alert<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_name: Option<&'a str>,
}

/// The whole alert as one JSON object.
pub fn write_alert(out: &mut Vec<u8>, alert: &Alert, tenant_name: Option<&str>) {
    // Serializing plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &Record { alert, tenant_name });
}

/// A flat object; `numeric` values are written as JSON numbers.
pub fn write_object<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = (&'a str, &'a str, bool)>) {
    out.push(b'{');
    let mut first = true;
    for (k, v, numeric) in items {
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        // Written from the parsed number: Rust reads `+12` and `007` as integers, JSON does not,
        // and the record was not JSON (format::fuzz's regression test); a value cut short by
        // `max_length` is no number any more and is written as text.
        let number = if numeric { v.parse::<i64>().ok() } else { None };
        let _ = match number {
            Some(n) => serde_json::to_writer(&mut *out, &n),
            None => serde_json::to_writer(&mut *out, v),
        };
    }
    out.push(b'}');
}

/// Bytes a character takes inside a JSON string.
pub fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The alert's free-text values that may be cut to make a whole-alert record fit, longest first.
pub fn cuttable_texts<'s, 'a>(alert: &'s mut Alert<'a>) -> Vec<&'s mut Text<'a>> {
    let mut out: Vec<&mut Text<'a>> = Vec::new();
    out.extend(alert.description.as_mut());
    out.extend(alert.recommended_actions.as_mut());
    for c in &mut alert.comments {
        out.extend(c.comment.as_mut());
    }
    for e in &mut alert.evidence {
        if let EvidenceDetail::Process(p) = &mut e.detail {
            out.extend(p.process_command_line.as_mut());
        }
    }
    out.sort_by_cached_key(|s| std::cmp::Reverse(s.chars().map(escaped_len).sum::<usize>()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_escapes_everything() {
        let mut out = Vec::new();
        write_object(
            &mut out,
            [
                ("a", "q\"uote\\ and\nnewline\u{1}", false),
                ("n", "42", true),
                ("u", "日本", false),
            ]
            .into_iter(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"q\"uote\\ and\nnewline\u0001","n":42,"u":"日本"}"#
        );
    }
}
