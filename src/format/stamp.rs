//! Timestamps written digit by digit. chrono's `format` parses its format string again on every
//! call, which cost more than the rest of a syslog header; these write the same bytes.
//!
//! Years outside 0-9999 are left to chrono (it writes them with a sign): each writer returns
//! false for them and writes nothing.

use chrono::{Datelike, Timelike};

/// `%b`.
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `v` as exactly `W` digits, zero-padded; `v` must be below 10^W. A fixed width lets the
/// compiler unroll the loop and store the digits in one go.
fn push_digits<const W: usize>(out: &mut Vec<u8>, v: u32) {
    let mut buf = [b'0'; W];
    let mut v = v;
    for d in buf.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf);
}

/// `v` in decimal, no padding (a syslog PRI: 0-191).
pub fn push_decimal(out: &mut Vec<u8>, v: u32) {
    match v {
        0..=9 => push_digits::<1>(out, v),
        10..=99 => push_digits::<2>(out, v),
        100..=999 => push_digits::<3>(out, v),
        _ => out.extend_from_slice(v.to_string().as_bytes()),
    }
}

/// `%H:%M:%S`; a leap second is second 60, as chrono writes it.
fn push_hms(out: &mut Vec<u8>, t: &impl Timelike) {
    push_digits::<2>(out, t.hour());
    out.push(b':');
    push_digits::<2>(out, t.minute());
    out.push(b':');
    push_digits::<2>(out, t.second() + t.nanosecond() / 1_000_000_000);
}

fn four_digit_year(t: &impl Datelike) -> Option<u32> {
    u32::try_from(t.year()).ok().filter(|y| *y <= 9999)
}

/// `%b %d %Y %H:%M:%S`, and `%.3f` with `millis` (CEF Appendix A dates, without ` UTC`).
pub fn cef_date(out: &mut Vec<u8>, t: &(impl Datelike + Timelike), millis: bool) -> bool {
    let Some(year) = four_digit_year(t) else {
        return false;
    };
    out.extend_from_slice(MONTHS[t.month0() as usize]);
    out.push(b' ');
    push_digits::<2>(out, t.day());
    out.push(b' ');
    push_digits::<4>(out, year);
    out.push(b' ');
    push_hms(out, t);
    if millis {
        out.push(b'.');
        push_digits::<3>(out, t.nanosecond() / 1_000_000 % 1000);
    }
    true
}

/// `%Y-%m-%dT%H:%M:%S%.6fZ` (RFC 5424 §6.2.3).
pub fn rfc5424(out: &mut Vec<u8>, t: &(impl Datelike + Timelike)) -> bool {
    let Some(year) = four_digit_year(t) else {
        return false;
    };
    push_digits::<4>(out, year);
    out.push(b'-');
    push_digits::<2>(out, t.month());
    out.push(b'-');
    push_digits::<2>(out, t.day());
    out.push(b'T');
    push_hms(out, t);
    out.push(b'.');
    push_digits::<6>(out, t.nanosecond() / 1_000 % 1_000_000);
    out.push(b'Z');
    true
}

/// `%b %e %H:%M:%S`: the day padded with a space (RFC 3164 §4.1.2). It has no year, so it is
/// always written.
pub fn rfc3164(out: &mut Vec<u8>, t: &(impl Datelike + Timelike)) {
    out.extend_from_slice(MONTHS[t.month0() as usize]);
    out.push(b' ');
    match t.day() {
        d @ 0..=9 => {
            out.push(b' ');
            push_digits::<1>(out, d);
        }
        d => push_digits::<2>(out, d),
    }
    out.push(b' ');
    push_hms(out, t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, NaiveDate, Utc};
    use proptest::prelude::*;

    fn written(f: impl FnOnce(&mut Vec<u8>) -> bool) -> Option<String> {
        let mut out = Vec::new();
        let ok = f(&mut out);
        assert!(ok || out.is_empty(), "wrote and refused");
        ok.then(|| String::from_utf8(out).unwrap())
    }

    fn agrees_with_chrono(dt: DateTime<Utc>) {
        let year_ok = (0..=9999).contains(&dt.year());
        let want = |fmt: &str| year_ok.then(|| dt.format(fmt).to_string());
        assert_eq!(
            written(|o| cef_date(o, &dt, false)),
            want("%b %d %Y %H:%M:%S"),
            "{dt:?}"
        );
        assert_eq!(
            written(|o| cef_date(o, &dt, true)),
            want("%b %d %Y %H:%M:%S%.3f"),
            "{dt:?}"
        );
        assert_eq!(
            written(|o| rfc5424(o, &dt)),
            want("%Y-%m-%dT%H:%M:%S%.6fZ"),
            "{dt:?}"
        );
        let mut out = Vec::new();
        rfc3164(&mut out, &dt);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            dt.format("%b %e %H:%M:%S").to_string()
        );
    }

    #[test]
    fn edge_times() {
        let at = |y, m, d, h, mi, s, nano| {
            NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_nano_opt(h, mi, s, nano)
                .unwrap()
                .and_utc()
        };
        for dt in [
            at(2026, 1, 2, 3, 4, 5, 678_000_000),
            at(2023, 12, 31, 23, 59, 59, 999_999_999),
            at(1970, 1, 1, 0, 0, 0, 0),
            at(999, 9, 9, 9, 9, 9, 1_000),
            at(0, 1, 1, 0, 0, 0, 0),
            at(9999, 12, 31, 23, 59, 59, 0),
            at(10000, 1, 1, 0, 0, 0, 0),
            at(-1, 6, 15, 12, 0, 0, 0),
            // A leap second.
            at(2016, 12, 31, 23, 59, 59, 1_500_000_000),
        ] {
            agrees_with_chrono(dt);
        }
    }

    proptest! {
        #[test]
        fn any_time_agrees_with_chrono(secs in -70_000_000_000i64..300_000_000_000, nano in 0u32..2_000_000_000) {
            if let Some(dt) = DateTime::from_timestamp(secs, nano) {
                agrees_with_chrono(dt);
            }
        }
    }
}
