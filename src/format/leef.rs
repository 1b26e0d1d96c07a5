//! IBM QRadar Log Event Extended Format, LEEF 1.0 and 2.0 (formats.md §2).
//!
//! `LEEF:2.0|Vendor|Product|Version|EventID|^|key=value^key=value`
//!
//! LEEF has no escape mechanism (§2.2), so a value can never contain the attribute delimiter, CR or
//! LF: they are replaced. `=` inside a value is harmless, as receivers split pairs on the
//! delimiter first and then at the first `=`.

use super::text;

/// Header field lengths: vendor, product, version, event id (≤255, formats.md §2.1).
pub const HEADER_MAX_LEN: [usize; 4] = [255, 255, 255, 255];

/// LEEF's predefined attributes with QRadar length limits (formats.md §2.3). Other keys are
/// custom properties.
pub static PREDEFINED: &[(&str, Option<usize>)] = &[
    ("cat", None),
    ("devTime", None),
    ("devTimeFormat", None),
    ("proto", None),
    ("sev", None),
    ("src", None),
    ("dst", None),
    ("srcPort", None),
    ("dstPort", None),
    ("srcPreNAT", None),
    ("dstPreNAT", None),
    ("srcPostNAT", None),
    ("dstPostNAT", None),
    ("usrName", Some(255)),
    ("srcMAC", None),
    ("dstMAC", None),
    ("identSrc", None),
    ("identHostName", Some(255)),
    ("identNetBios", Some(255)),
    ("identGrpName", Some(255)),
    ("vSrc", None),
    ("vSrcName", Some(255)),
    ("accountName", Some(255)),
    ("srcBytes", None),
    ("dstBytes", None),
    ("srcPackets", None),
    ("dstPackets", None),
    ("totalPackets", None),
    ("role", None),
    ("realm", None),
    ("policy", None),
    ("resource", None),
    ("url", None),
    ("groupID", None),
    ("domain", None),
];

/// The LEEF version and its attribute delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    /// 1 or 2.
    pub version: u8,
    /// TAB for 1.0; for 2.0 whatever the format file says (`^` by default, because rsyslog turns
    /// TAB into `#011`, formats.md rule 8 and §6).
    pub delimiter: char,
    /// What a delimiter inside a value becomes.
    pub substitute: String,
}

impl Dialect {
    /// Bytes a character of a value takes once written.
    pub fn escaped_len(&self, c: char) -> usize {
        if c == self.delimiter || (matches!(c, '\r' | '\n') && self.delimiter == ' ') {
            self.substitute.len()
        } else {
            c.len_utf8()
        }
    }

    /// What CR and LF in a value become: a space, unless a space is the delimiter (then a space
    /// would split the value in two, found by `format::fuzz`).
    fn line_break(&self) -> &[u8] {
        if self.delimiter == ' ' {
            self.substitute.as_bytes()
        } else {
            b" "
        }
    }

    /// The delimiter field of a 2.0 header: the character itself when printable, else `xHH`
    /// (formats.md §2.1).
    fn write_delimiter_field(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let c = self.delimiter;
        if c.is_ascii_graphic() {
            out.push(c as u8);
        } else {
            let _ = write!(out, "x{:02X}", c as u32);
        }
    }
}

fn write_value(out: &mut Vec<u8>, v: &str, d: &Dialect) {
    if d.delimiter.is_ascii() {
        let delim = d.delimiter as u8;
        let rep = |b| {
            if b == delim {
                d.substitute.as_bytes()
            } else {
                d.line_break()
            }
        };
        text::write_replacing(out, v.as_bytes(), [delim, b'\r', b'\n'], rep);
        return;
    }
    // A delimiter outside ASCII takes several bytes: compare characters.
    let mut start = 0;
    for (i, c) in v.char_indices() {
        let rep: &[u8] = if c == d.delimiter {
            d.substitute.as_bytes()
        } else if c == '\r' || c == '\n' {
            d.line_break()
        } else {
            continue;
        };
        out.extend_from_slice(&v.as_bytes()[start..i]);
        out.extend_from_slice(rep);
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&v.as_bytes()[start..]);
}

/// Header values never carry `|` (QRadar's handling of `\|` is undocumented, §2.2) nor CR/LF.
fn write_header_value(out: &mut Vec<u8>, v: &str) {
    text::write_replacing(out, v.as_bytes(), [b'|', b'\r', b'\n'], |b| match b {
        b'|' => b"/",
        _ => b" ",
    });
}

/// Writes one LEEF record. `header` holds vendor, product, version and event id.
pub fn write_record<'a>(
    out: &mut Vec<u8>,
    d: &Dialect,
    header: &[&str; 4],
    attrs: impl Iterator<Item = (&'a str, &'a str)>,
) {
    out.extend_from_slice(if d.version == 1 {
        b"LEEF:1.0|"
    } else {
        b"LEEF:2.0|"
    });
    for v in header {
        write_header_value(out, v);
        out.push(b'|');
    }
    if d.version == 2 {
        d.write_delimiter_field(out);
        out.push(b'|');
    }
    let mut delim = [0u8; 4];
    let delim = d.delimiter.encode_utf8(&mut delim).as_bytes();
    let mut first = true;
    for (k, v) in attrs {
        if !first {
            out.extend_from_slice(delim);
        }
        first = false;
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        write_value(out, v, d);
    }
}

/// A LEEF parser written from IBM's guide, used by the tests as the oracle.
#[cfg(test)]
pub mod parse {
    /// Header fields and key/value pairs.
    pub type Parsed = (Vec<String>, Vec<(String, String)>);

    pub fn parse(record: &str) -> Result<Parsed, String> {
        let (version, rest) = if let Some(r) = record.strip_prefix("LEEF:2.0|") {
            (2, r)
        } else if let Some(r) = record.strip_prefix("LEEF:1.0|") {
            (1, r)
        } else {
            return Err("no LEEF prefix".into());
        };
        let fields = if version == 2 { 5 } else { 4 };
        let mut parts = rest.splitn(fields + 1, '|');
        let mut header = Vec::new();
        for _ in 0..fields {
            header.push(parts.next().ok_or("short header")?.to_string());
        }
        let attrs = parts.next().unwrap_or("");
        let delim = if version == 2 {
            let d = &header[4];
            if let Some(hex) = d.strip_prefix("0x").or_else(|| d.strip_prefix('x')) {
                char::from_u32(u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?)
                    .ok_or("bad delimiter")?
            } else {
                d.chars().next().ok_or("empty delimiter")?
            }
        } else {
            '\t'
        };
        if attrs.contains(['\r', '\n']) {
            return Err("raw CR/LF".into());
        }
        let mut pairs = Vec::new();
        // A record whose every value was left out has no attributes.
        if attrs.is_empty() {
            return Ok((header, pairs));
        }
        for pair in attrs.split(delim) {
            let (k, v) = pair.split_once('=').ok_or("attribute without =")?;
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok((header, pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caret() -> Dialect {
        Dialect {
            version: 2,
            delimiter: '^',
            substitute: "\u{FF3E}".into(),
        }
    }

    fn record(d: &Dialect, header: [&str; 4], attrs: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        write_record(&mut out, d, &header, attrs.iter().copied());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exact_bytes() {
        type Case<'a> = (Dialect, [&'a str; 4], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                caret(),
                ["Microsoft", "Defender", "1.0", "ev1"],
                &[("sev", "5"), ("cat", "Malware")],
                "LEEF:2.0|Microsoft|Defender|1.0|ev1|^|sev=5^cat=Malware",
            ),
            (
                caret(),
                ["Micro|soft", "Def\nender", "1.0", "e"],
                &[("msg", "cmd ^& calc"), ("x", "a=b\r\nc")],
                "LEEF:2.0|Micro/soft|Def ender|1.0|e|^|msg=cmd ＾& calc^x=a=b  c",
            ),
            (
                Dialect {
                    version: 2,
                    delimiter: '\t',
                    substitute: " ".into(),
                },
                ["V", "P", "1", "e"],
                &[("a", "1\t2"), ("b", "3")],
                "LEEF:2.0|V|P|1|e|x09|a=1 2\tb=3",
            ),
            (
                Dialect {
                    version: 1,
                    delimiter: '\t',
                    substitute: " ".into(),
                },
                ["V", "P", "1", "e"],
                &[("a", "1"), ("b", "2")],
                "LEEF:1.0|V|P|1|e|a=1\tb=2",
            ),
        ];
        for (d, header, attrs, want) in cases {
            assert_eq!(record(d, *header, attrs), *want);
        }
    }

    proptest! {
        #[test]
        fn any_values_round_trip(vals in proptest::collection::vec(any::<String>(), 1..5)) {
            let d = caret();
            let keys = ["usrName", "cat", "msg", "url", "resource"];
            let cleaned: Vec<String> = vals
                .iter()
                .map(|v| crate::format::text::clean(v).map(|c| c.into_owned()).unwrap_or_else(|| "x".into()))
                .collect();
            let attrs: Vec<(&str, &str)> =
                keys.iter().zip(&cleaned).map(|(k, v)| (*k, v.as_str())).collect();
            let text = record(&d, ["V", "P", "1", "e"], &attrs);
            let (_, pairs) = parse::parse(&text).map_err(TestCaseError::fail)?;
            prop_assert_eq!(pairs.len(), cleaned.len());
            for ((k, v), (want_k, want_v)) in pairs.iter().zip(keys.iter().zip(&cleaned)) {
                prop_assert_eq!(k, want_k);
                let want = want_v.replace('^', "\u{FF3E}").replace(['\r', '\n'], " ");
                prop_assert_eq!(v, &want);
            }
        }
    }
}
