//! The syslog header in front of a record: RFC 5424, RFC 3164 without TAG, or none
//! (formats.md §3.1, §3.2, rules 10 and 11).
//!
//! Written by hand rather than with the `syslog` crate: that crate always stamps "now", pads the
//! RFC 3164 day with a zero and has a numeric MSGID (rust-stack.md §2).

use std::io::Write;

use chrono::{DateTime, Local, Utc};

use super::stamp;

use crate::alert::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// No header: the record alone (files, `convert`, receivers that take bare CEF).
    None,
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`.
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss HOSTNAME MSG`, no TAG before `CEF:`/`LEEF:` (rule 11).
    Rfc3164,
}

impl std::str::FromStr for HeaderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(HeaderKind::None),
            "rfc5424" => Ok(HeaderKind::Rfc5424),
            "rfc3164" => Ok(HeaderKind::Rfc3164),
            _ => Err(format!(
                "unknown syslog header {s:?}: use rfc5424, rfc3164 or none"
            )),
        }
    }
}

/// Facility names of RFC 5424 §6.2.1 (the ones a SIEM feed uses).
pub fn facility_from_name(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "authpriv" => 10,
        "audit" => 13,
        "alert" => 14,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

/// Syslog severity for an alert severity: high → error (3), medium → warning (4), low → notice
/// (5), informational → info (6), anything else → notice.
pub fn syslog_severity(s: &Severity) -> u8 {
    match s {
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Informational => 6,
        Severity::Unknown | Severity::Other(_) => 5,
    }
}

/// Which clock an RFC 3164 timestamp is written in: the RFC says local time (§4.1.2); receivers
/// read it as their own local time, so UTC machines and tests want UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Local,
    Utc,
}

/// A configured syslog header, written in front of each record.
#[derive(Debug, Clone)]
pub struct SyslogHeader {
    pub kind: HeaderKind,
    pub facility: u8,
    hostname: String,
    app_name: String,
    pub clock: Clock,
}

impl SyslogHeader {
    /// `hostname` and `app_name` are reduced to what the RFCs allow: PRINTUSASCII without space,
    /// at most 255 and 48 characters (RFC 5424 §6.2.4, §6.2.5).
    pub fn new(kind: HeaderKind, facility: u8, hostname: &str, app_name: &str) -> SyslogHeader {
        SyslogHeader {
            kind,
            facility: facility.min(23),
            hostname: printable(hostname, 255),
            app_name: printable(app_name, 48),
            clock: Clock::Local,
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> SyslogHeader {
        self.clock = clock;
        self
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Writes the header for a record stamped `time`. `tag` goes between HOSTNAME and the message
    /// in RFC 3164 (JSON records only: CEF and LEEF take no TAG, rule 11).
    pub fn write(&self, out: &mut Vec<u8>, severity: u8, time: DateTime<Utc>, tag: Option<&str>) {
        self.write_as(out, None, severity, time, tag)
    }

    /// [`write`](Self::write) with another HOSTNAME (reduced to what the RFC allows).
    pub fn write_as(
        &self,
        out: &mut Vec<u8>,
        hostname: Option<&str>,
        severity: u8,
        time: DateTime<Utc>,
        tag: Option<&str>,
    ) {
        let pri = u32::from(self.facility) * 8 + u32::from(severity.min(7));
        let write_pri = |out: &mut Vec<u8>| {
            out.push(b'<');
            stamp::push_decimal(out, pri);
            out.push(b'>');
        };
        let write_hostname = |out: &mut Vec<u8>| match hostname {
            Some(h) => push_printable(out, h, 255),
            None => out.extend_from_slice(self.hostname.as_bytes()),
        };
        match self.kind {
            HeaderKind::None => {}
            HeaderKind::Rfc5424 => {
                write_pri(out);
                out.extend_from_slice(b"1 ");
                // At most 6 fraction digits, uppercase T and Z (RFC 5424 §6.2.3, rule 10).
                if !stamp::rfc5424(out, &time) {
                    let _ = write!(out, "{}", time.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
                }
                out.push(b' ');
                write_hostname(out);
                out.push(b' ');
                out.extend_from_slice(self.app_name.as_bytes());
                out.extend_from_slice(b" - - - ");
            }
            HeaderKind::Rfc3164 => {
                write_pri(out);
                // `Mmm dd hh:mm:ss` with a space-padded day (RFC 3164 §4.1.2, rule 11).
                match self.clock {
                    Clock::Utc => stamp::rfc3164(out, &time),
                    Clock::Local => stamp::rfc3164(out, &time.with_timezone(&Local)),
                }
                out.push(b' ');
                write_hostname(out);
                out.push(b' ');
                if let Some(tag) = tag {
                    push_printable(out, tag, 32);
                    out.extend_from_slice(b": ");
                }
            }
        }
    }
}

/// PRINTUSASCII (33-126), other characters replaced by `_`, cut to `max`; `-` when empty (the
/// RFC 5424 NILVALUE).
fn printable(s: &str, max: usize) -> String {
    let mut out = Vec::new();
    push_printable(&mut out, s, max);
    String::from_utf8(out).expect("PRINTUSASCII is ASCII")
}

/// [`printable`] appended to `out`, so a per-record HOSTNAME or TAG needs no String.
fn push_printable(out: &mut Vec<u8>, s: &str, max: usize) {
    let start = out.len();
    out.extend(s.chars().take(max).map(|c| {
        if ('!'..='~').contains(&c) {
            c as u8
        } else {
            b'_'
        }
    }));
    if out.len() == start {
        out.push(b'-');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn exact_headers() {
        let h5424 = SyslogHeader::new(
            HeaderKind::Rfc5424,
            20,
            "mssp-collector-1",
            "defender-bridge",
        );
        let h3164 = SyslogHeader::new(HeaderKind::Rfc3164, 16, "col1", "x").with_clock(Clock::Utc);
        let cases: Vec<(&SyslogHeader, u8, &str, Option<&str>, &str)> = vec![
            (
                &h5424,
                4,
                "2021-01-26T20:33:57.7220239Z",
                None,
                "<164>1 2021-01-26T20:33:57.722023Z mssp-collector-1 defender-bridge - - - ",
            ),
            (
                &h5424,
                3,
                "2021-01-26T20:33:59Z",
                None,
                "<163>1 2021-01-26T20:33:59.000000Z mssp-collector-1 defender-bridge - - - ",
            ),
            (
                &h3164,
                6,
                "2023-11-08T09:05:03.5Z",
                None,
                "<134>Nov  8 09:05:03 col1 ",
            ),
            (
                &h3164,
                6,
                "2023-11-18T09:05:03Z",
                None,
                "<134>Nov 18 09:05:03 col1 ",
            ),
            (
                &h3164,
                5,
                "2023-11-18T09:05:03Z",
                Some("defender-bridge"),
                "<133>Nov 18 09:05:03 col1 defender-bridge: ",
            ),
        ];
        for (h, sev, time, tag, want) in cases {
            let mut out = Vec::new();
            h.write(&mut out, sev, at(time), tag);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn hostile_hostname_and_app_name() {
        let h = SyslogHeader::new(HeaderKind::Rfc5424, 200, "bad host\nname", "");
        assert_eq!(h.hostname(), "bad_host_name");
        let mut out = Vec::new();
        h.write(
            &mut out,
            9,
            Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
            None,
        );
        // Facility capped at 23, severity at 7: PRI 191, the RFC's maximum.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<191>1 2024-01-02T03:04:05.000000Z bad_host_name - - - - "
        );
        let long = "h".repeat(300);
        assert_eq!(
            SyslogHeader::new(HeaderKind::Rfc5424, 1, &long, "a")
                .hostname()
                .len(),
            255
        );
    }

    #[test]
    fn none_writes_nothing() {
        let h = SyslogHeader::new(HeaderKind::None, 1, "h", "a");
        let mut out = Vec::new();
        h.write(&mut out, 1, Utc::now(), Some("t"));
        assert!(out.is_empty());
    }
}
