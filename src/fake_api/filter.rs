//! The small OData `$filter` subset the APIs document for alerts (defender-api.md §1.4, §3.1):
//! `field op literal` terms joined by `and`, with parenthesised `or` groups. Anything else is a
//! 400, as a typo would be at the real API.
use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

#[derive(Debug)]
enum Literal {
    Time(DateTime<Utc>),
    Str(String),
}

#[derive(Debug)]
struct Cmp {
    field: String,
    op: Op,
    value: Literal,
}

/// A conjunction of disjunctions.
#[derive(Debug, Default)]
pub struct Filter(Vec<Vec<Cmp>>);

impl Filter {
    /// Parses `text`; `fields` are the filterable properties of the API.
    pub fn parse(text: &str, fields: &[&str]) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut groups = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] == "(" {
                let mut group = Vec::new();
                i += 1;
                loop {
                    group.push(parse_cmp(&tokens, &mut i, fields)?);
                    match tokens.get(i).map(String::as_str) {
                        Some("or") => i += 1,
                        Some(")") => {
                            i += 1;
                            break;
                        }
                        other => return Err(format!("expected 'or' or ')', found {other:?}")),
                    }
                }
                groups.push(group);
            } else {
                groups.push(vec![parse_cmp(&tokens, &mut i, fields)?]);
            }
            match tokens.get(i).map(String::as_str) {
                None => break,
                Some("and") => i += 1,
                Some(other) => return Err(format!("expected 'and', found '{other}'")),
            }
        }
        Ok(Filter(groups))
    }

    pub fn matches(&self, alert: &Value) -> bool {
        self.matches_at(alert, None)
    }

    /// [`Filter::matches`], with `known` = (field, its value as a time) already parsed: the
    /// store keeps each alert's lastUpdate, and reading it again from the JSON for every alert
    /// of every list request made a fake with 100,000 alerts the slowest part of a test.
    pub fn matches_at(&self, alert: &Value, known: Option<(&str, DateTime<Utc>)>) -> bool {
        self.0
            .iter()
            .all(|group| group.iter().any(|c| c.matches(alert, known)))
    }

    /// `[from, until)`, `None` for no bound: the instants outside which `field`, read as a
    /// time, cannot match, from the `and`ed terms that are one time comparison on it. It may be
    /// wider than the filter, never narrower, so the store can range-scan its time index and
    /// still check each candidate with [`Filter::matches_at`].
    pub fn time_range(&self, field: &str) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        // Times have nanosecond resolution: `t < next(t)` is `t <= x`. At the end of chrono's
        // range there is no next instant; no bound then is wider, hence still right.
        let next = |t: DateTime<Utc>| t.checked_add_signed(chrono::Duration::nanoseconds(1));
        let (mut from, mut until): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
        for group in &self.0 {
            let [c] = group.as_slice() else {
                continue;
            };
            let Literal::Time(t) = c.value else {
                continue;
            };
            if c.field != field {
                continue;
            }
            let (lo, hi) = match c.op {
                Op::Ge => (Some(t), None),
                Op::Gt => (next(t), None),
                Op::Lt => (None, Some(t)),
                Op::Le => (None, next(t)),
                Op::Eq => (Some(t), next(t)),
            };
            if let Some(lo) = lo {
                from = Some(from.map_or(lo, |f| f.max(lo)));
            }
            if let Some(hi) = hi {
                until = Some(until.map_or(hi, |u| u.min(hi)));
            }
        }
        (from, until)
    }
}

impl Cmp {
    fn matches(&self, alert: &Value, known: Option<(&str, DateTime<Utc>)>) -> bool {
        let actual = &alert[self.field.as_str()];
        match &self.value {
            Literal::Time(t) => {
                let a = match known {
                    Some((field, at)) if field == self.field => Some(at),
                    _ => actual
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|a| a.with_timezone(&Utc)),
                };
                let Some(a) = a else {
                    return false;
                };
                match self.op {
                    Op::Eq => a == *t,
                    Op::Ge => a >= *t,
                    Op::Gt => a > *t,
                    Op::Le => a <= *t,
                    Op::Lt => a < *t,
                }
            }
            // OData string comparison on enums: exact member name (case-insensitive here, as
            // both APIs accept either spelling in practice).
            Literal::Str(s) => {
                self.op == Op::Eq && actual.as_str().is_some_and(|a| a.eq_ignore_ascii_case(s))
            }
        }
    }
}

fn parse_cmp(tokens: &[String], i: &mut usize, fields: &[&str]) -> Result<Cmp, String> {
    let (Some(field), Some(op), Some(value)) =
        (tokens.get(*i), tokens.get(*i + 1), tokens.get(*i + 2))
    else {
        return Err("incomplete comparison".into());
    };
    if !fields.contains(&field.as_str()) {
        return Err(format!(
            "Invalid filter clause: property '{field}' is not filterable"
        ));
    }
    let op = match op.as_str() {
        "eq" => Op::Eq,
        "ge" => Op::Ge,
        "gt" => Op::Gt,
        "le" => Op::Le,
        "lt" => Op::Lt,
        other => return Err(format!("unsupported operator '{other}'")),
    };
    let value = if let Some(s) = value.strip_prefix('\'') {
        Literal::Str(s.trim_end_matches('\'').replace("''", "'"))
    } else {
        Literal::Time(
            DateTime::parse_from_rfc3339(value)
                .map_err(|e| format!("bad DateTimeOffset literal '{value}': {e}"))?
                .with_timezone(&Utc),
        )
    };
    *i += 3;
    Ok(Cmp {
        field: field.clone(),
        op,
        value,
    })
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '\'' => {
                let mut s = String::from("'");
                chars.next();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push_str("''");
                        }
                        Some('\'') => break,
                        Some(ch) => s.push(ch),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                s.push('\'');
                out.push(s);
            }
            _ => {
                let mut s = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch == ' ' || ch == '(' || ch == ')' {
                        break;
                    }
                    s.push(ch);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_window_and_or_group() {
        let f = Filter::parse(
            "lastUpdateTime ge 2026-01-01T00:00:00.0000000Z and lastUpdateTime lt 2026-01-02T00:00:00Z and (severity eq 'High' or severity eq 'Medium')",
            &["lastUpdateTime", "severity"],
        )
        .expect("parses");
        let a =
            serde_json::json!({"lastUpdateTime": "2026-01-01T10:00:00.12Z", "severity": "High"});
        let b = serde_json::json!({"lastUpdateTime": "2026-01-01T10:00:00Z", "severity": "Low"});
        let c = serde_json::json!({"lastUpdateTime": "2026-01-02T00:00:00Z", "severity": "High"});
        assert!(f.matches(&a));
        assert!(!f.matches(&b));
        assert!(!f.matches(&c));
        assert!(Filter::parse("title eq 'x'", &["severity"]).is_err());
    }
}
