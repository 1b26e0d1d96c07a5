//! Alert timestamps as the APIs send them: RFC 3339 with 0 to 9 fraction digits (MDE sends 7,
//! `…7657932Z`, and as few as 1, `…59.2Z`; defender-api.md §1.4), `Z` or a numeric offset, and now
//! and then no zone at all (read as UTC). A value that is none of these is kept as text, so a bad
//! timestamp never rejects the alert.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timestamp {
    Valid(DateTime<Utc>),
    /// Text that is not a timestamp, kept as sent.
    Invalid(String),
}

impl Timestamp {
    pub fn parse(s: &str) -> Timestamp {
        // The usual form first, untrimmed: trimming costs more than reading it.
        if let Some(dt) = parse_utc_fast(s) {
            return Timestamp::Valid(dt);
        }
        let t = s.trim();
        if let Some(dt) = parse_utc_fast(t) {
            return Timestamp::Valid(dt);
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Timestamp::Valid(dt.with_timezone(&Utc));
        }
        // Lower-case `t`/`z` and a space instead of `T` are allowed by RFC 3339 §5.6's note.
        let fixed = t.replacen(' ', "T", 1).to_ascii_uppercase();
        if let Ok(dt) = DateTime::parse_from_rfc3339(&fixed) {
            return Timestamp::Valid(dt.with_timezone(&Utc));
        }
        if let Ok(naive) = NaiveDateTime::parse_from_str(&fixed, "%Y-%m-%dT%H:%M:%S%.f") {
            return Timestamp::Valid(naive.and_utc());
        }
        Timestamp::Invalid(s.to_string())
    }

    pub fn valid(&self) -> Option<&DateTime<Utc>> {
        match self {
            Timestamp::Valid(t) => Some(t),
            Timestamp::Invalid(_) => None,
        }
    }

    /// RFC 3339 in UTC with as many fraction digits as the value needs (0 to 9), so the APIs'
    /// 7-digit times come back as sent.
    pub fn to_rfc3339(&self) -> String {
        match self {
            Timestamp::Valid(t) => {
                let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
                // `…ss.123400000Z` → `…ss.1234Z`; `…ss.000000000Z` → `…ssZ`.
                let body = s
                    .trim_end_matches('Z')
                    .trim_end_matches('0')
                    .trim_end_matches('.');
                format!("{body}Z")
            }
            Timestamp::Invalid(s) => s.clone(),
        }
    }
}

/// The form both APIs send nearly always, `yyyy-mm-ddThh:mm:ss[.f{1,9}]Z`, read without chrono's
/// general parser; `None` for anything else (a leap second, an offset, …), which
/// [`Timestamp::parse`] then hands to chrono, so the result is the same either way.
fn parse_utc_fast(t: &str) -> Option<DateTime<Utc>> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let two = |i: usize| two_digits(b[i], b[i + 1]);
    let year = two(0)? * 100 + two(2)?;
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    let mut nanos = 0u32;
    let rest = match b[19] {
        b'.' => {
            let digits = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            for &c in &b[20..20 + digits] {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            nanos *= 10u32.pow(9 - digits as u32);
            &b[20 + digits..]
        }
        _ => &b[19..],
    };
    if rest != b"Z" || second > 59 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

/// `b'4', b'2'` → 42.
#[inline]
fn two_digits(tens: u8, ones: u8) -> Option<u32> {
    let (t, o) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
    (t < 10 && o < 10).then(|| u32::from(t) * 10 + u32::from(o))
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp::Valid(t)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Timestamp::Valid(_) => s.serialize_str(&self.to_rfc3339()),
            Timestamp::Invalid(t) => s.serialize_str(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_apis_send() {
        let cases = [
            ("2021-01-26T20:33:59.2Z", "2021-01-26T20:33:59.2Z"),
            (
                "2021-01-26T20:33:57.7220239Z",
                "2021-01-26T20:33:57.7220239Z",
            ),
            ("2020-07-20T10:53:50.19Z", "2020-07-20T10:53:50.19Z"),
            ("2020-07-20T10:53:50Z", "2020-07-20T10:53:50Z"),
            ("2020-07-20T10:53:50.000Z", "2020-07-20T10:53:50Z"),
            (
                "2020-07-20T10:53:50.123456789Z",
                "2020-07-20T10:53:50.123456789Z",
            ),
            ("2020-07-20T12:53:50.5+02:00", "2020-07-20T10:53:50.5Z"),
            ("2020-07-20t10:53:50z", "2020-07-20T10:53:50Z"),
            ("2020-07-20 10:53:50.1Z", "2020-07-20T10:53:50.1Z"),
            ("2020-07-20T10:53:50.1234", "2020-07-20T10:53:50.1234Z"),
        ];
        for (input, want) in cases {
            let t = Timestamp::parse(input);
            assert!(t.valid().is_some(), "{input}");
            assert_eq!(t.to_rfc3339(), want, "{input}");
        }
    }

    #[test]
    fn keeps_garbage_as_text() {
        for bad in ["yesterday", "2020-13-45T99:00:00Z", "", "0001"] {
            assert_eq!(Timestamp::parse(bad), Timestamp::Invalid(bad.to_string()));
        }
    }
}
