//! ArcSight Common Event Format (CEF), rev. 27 of "Implementing ArcSight CEF" (formats.md §1).
//!
//! `CEF:0|Vendor|Product|Version|ClassID|Name|Severity|key=value key=value…`

use super::text;

/// What a CEF extension key holds (formats.md §1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    /// Integer or Long: a value that is not an integer is left out.
    Number,
    /// Double (`cfpN`).
    Float,
    /// Milliseconds since the epoch or one of the Appendix A date forms (formats.md §1.6).
    Time,
    /// IPv4 or IPv6 address.
    Ip,
    Mac,
}

/// One entry of the extension dictionary.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    pub key: &'static str,
    pub kind: KeyType,
    /// Maximum length in characters of the unescaped value (formats.md §1.8, rule 5).
    pub max_len: Option<usize>,
}

macro_rules! keys {
    ($($key:literal $kind:ident $len:expr),* $(,)?) => {
        &[$(KeyInfo { key: $key, kind: KeyType::$kind, max_len: $len }),*]
    };
}

/// The producer dictionary of rev. 27 with the corrections of formats.md §1.10 (`dvcmac`,
/// `c6a2`, `flexNumber1/2`; `cs1-6` at 4000). Labels (`…Label`) are not listed: they are written
/// from a field's `label`, 1023 characters at most (128 for the flex keys).
pub static DICTIONARY: &[KeyInfo] = keys![
    "act" String Some(63), "app" String Some(31),
    "c6a1" Ip None, "c6a2" Ip None, "c6a3" Ip None, "c6a4" Ip None,
    "cat" String Some(1023),
    "cfp1" Float None, "cfp2" Float None, "cfp3" Float None, "cfp4" Float None,
    "cn1" Number None, "cn2" Number None, "cn3" Number None, "cnt" Number None,
    "cs1" String Some(4000), "cs2" String Some(4000), "cs3" String Some(4000),
    "cs4" String Some(4000), "cs5" String Some(4000), "cs6" String Some(4000),
    "destinationDnsDomain" String Some(255), "destinationServiceName" String Some(1023),
    "destinationTranslatedAddress" Ip None, "destinationTranslatedPort" Number None,
    "deviceCustomDate1" Time None, "deviceCustomDate2" Time None,
    "deviceDirection" Number None, "deviceDnsDomain" String Some(255),
    "deviceExternalId" String Some(255), "deviceFacility" String Some(1023),
    "deviceInboundInterface" String Some(128), "deviceNtDomain" String Some(255),
    "deviceOutboundInterface" String Some(128), "devicePayloadId" String Some(128),
    "deviceProcessName" String Some(1023), "deviceTranslatedAddress" Ip None,
    "dhost" String Some(1023), "dmac" Mac None, "dntdom" String Some(255),
    "dpid" Number None, "dpriv" String Some(1023), "dproc" String Some(1023),
    "dpt" Number None, "dst" Ip None, "dtz" String Some(255), "duid" String Some(1023),
    "duser" String Some(1023), "dvc" Ip None, "dvchost" String Some(100),
    "dvcmac" Mac None, "dvcpid" Number None, "end" Time None,
    "externalId" String Some(40), "fileCreateTime" Time None, "fileHash" String Some(255),
    "fileId" String Some(1023), "fileModificationTime" Time None,
    "filePath" String Some(1023), "filePermission" String Some(1023),
    "fileType" String Some(1023), "flexDate1" Time None,
    "flexString1" String Some(1023), "flexString2" String Some(1023),
    "flexNumber1" Number None, "flexNumber2" Number None,
    "fname" String Some(1023), "fsize" Number None, "in" Number None,
    "msg" String Some(1023), "oldFileCreateTime" Time None, "oldFileHash" String Some(255),
    "oldFileId" String Some(1023), "oldFileModificationTime" Time None,
    "oldFileName" String Some(1023), "oldFilePath" String Some(1023),
    "oldFilePermission" String Some(1023), "oldFileSize" Number None,
    "oldFileType" String Some(1023), "out" Number None, "outcome" String Some(63),
    "proto" String Some(31), "reason" String Some(1023), "request" String Some(1023),
    "requestClientApplication" String Some(1023), "requestContext" String Some(2048),
    "requestCookies" String Some(1023), "requestMethod" String Some(1023),
    "rt" Time None, "shost" String Some(1023), "smac" Mac None,
    "sntdom" String Some(255), "sourceDnsDomain" String Some(255),
    "sourceServiceName" String Some(1023), "sourceTranslatedAddress" Ip None,
    "sourceTranslatedPort" Number None, "spid" Number None,
    "spriv" String Some(1023), "sproc" String Some(1023), "spt" Number None,
    "src" Ip None, "start" Time None, "suid" String Some(1023),
    "suser" String Some(1023), "type" Number None,
    "agentTranslatedZoneKey" Number None, "agentZoneKey" Number None,
    "customerKey" Number None, "dTranslatedZoneKey" Number None, "dZoneKey" Number None,
    "deviceTranslatedZoneKey" Number None, "deviceZoneKey" Number None,
    "sTranslatedZoneKey" Number None, "sZoneKey" Number None,
    "reportedDuration" Number None, "reportedResourceGroupName" String Some(128),
    "reportedResourceID" String Some(256), "reportedResourceName" String Some(64),
    "reportedResourceType" String Some(64), "frameworkName" String Some(256),
    "threatActor" String Some(40), "threatAttackID" String Some(32),
];

/// Keys that ArcSight sets itself; producers must not send them (formats.md §1.9).
pub static CONSUMER_ONLY: &[&str] = &[
    "agentDnsDomain",
    "agentNtDomain",
    "agentTranslatedAddress",
    "agentTranslatedZoneExternalID",
    "agentTranslatedZoneURI",
    "agentZoneExternalID",
    "agentZoneURI",
    "agt",
    "ahost",
    "aid",
    "amac",
    "art",
    "at",
    "atz",
    "av",
    "customerExternalID",
    "customerURI",
    "destinationTranslatedZoneExternalID",
    "destinationTranslatedZoneURI",
    "destinationZoneExternalID",
    "destinationZoneURI",
    "deviceTranslatedZoneExternalID",
    "deviceTranslatedZoneURI",
    "deviceZoneExternalID",
    "deviceZoneURI",
    "dlat",
    "dlong",
    "eventId",
    "rawEvent",
    "slat",
    "slong",
    "sourceTranslatedZoneExternalID",
    "sourceTranslatedZoneURI",
    "sourceZoneExternalID",
    "sourceZoneURI",
];

pub fn lookup(key: &str) -> Option<&'static KeyInfo> {
    DICTIONARY.iter().find(|k| k.key == key)
}

/// Keys that must be paired with a `…Label` key (formats.md §1.5, rule 4), and the label's
/// maximum length.
pub fn label_max_len(key: &str) -> Option<usize> {
    let numbered = |prefix: &str, range: std::ops::RangeInclusive<u8>| {
        key.strip_prefix(prefix)
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| range.contains(&n))
            && key.len() == prefix.len() + 1
    };
    if numbered("cs", 1..=6)
        || numbered("cn", 1..=3)
        || numbered("cfp", 1..=4)
        || numbered("c6a", 1..=4)
        || numbered("deviceCustomDate", 1..=2)
    {
        Some(1023)
    } else if numbered("flexString", 1..=2) || numbered("flexNumber", 1..=2) || key == "flexDate1" {
        Some(128)
    } else {
        None
    }
}

/// Header field lengths (formats.md §1.3): vendor, product, version, class id, name.
pub const HEADER_MAX_LEN: [usize; 5] = [63, 63, 31, 1023, 512];

/// How a `|` in a header value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderPipes {
    /// `\|`, as the CEF standard says (formats.md §1.4).
    Escape,
    /// `/`: Splunk SC4S and syslog-ng's csv-parser split on escaped pipes (formats.md rule 2).
    Replace,
}

/// Bytes a character takes in a header value.
pub fn header_escaped_len(c: char, pipes: HeaderPipes) -> usize {
    match c {
        '\\' => 2,
        '|' if pipes == HeaderPipes::Escape => 2,
        c => c.len_utf8(),
    }
}

/// Header value: `\` → `\\`, `|` → `\|` or `/`; CR and LF are not allowed there and become a
/// space (formats.md §1.4).
pub fn write_header_value(out: &mut Vec<u8>, v: &str, pipes: HeaderPipes) {
    let pipe: &[u8] = match pipes {
        HeaderPipes::Escape => b"\\|",
        HeaderPipes::Replace => b"/",
    };
    text::write_replacing(
        out,
        v.as_bytes(),
        [b'\\', b'|', b'\r', b'\n'],
        |b| match b {
            b'\\' => b"\\\\",
            b'|' => pipe,
            _ => b" ",
        },
    );
}

/// Bytes a character takes in an extension value.
pub fn ext_escaped_len(c: char) -> usize {
    match c {
        '\\' | '=' | '\n' | '\r' => 2,
        c => c.len_utf8(),
    }
}

/// Extension value: `\` → `\\`, `=` → `\=`, LF → `\n`, CR → `\r`; nothing else is escaped, not
/// even `|` (formats.md §1.4, rule 3).
pub fn write_ext_value(out: &mut Vec<u8>, v: &str) {
    text::write_replacing(
        out,
        v.as_bytes(),
        [b'\\', b'=', b'\n', b'\r'],
        |b| match b {
            b'\\' => b"\\\\",
            b'=' => b"\\=",
            b'\n' => b"\\n",
            _ => b"\\r",
        },
    );
}

/// CEF severity: an integer 0-10 or one of the words (formats.md §1.3, rule 7).
pub fn valid_severity(v: &str) -> bool {
    matches!(v, "Unknown" | "Low" | "Medium" | "High" | "Very-High")
        || v.parse::<u8>().is_ok_and(|n| n <= 10)
}

/// Writes one CEF record. `header` holds vendor, product, version, class id, name and severity,
/// already cleaned and truncated; `ext` holds keys and cleaned, truncated values.
pub fn write_record<'a>(
    out: &mut Vec<u8>,
    header: &[&str; 6],
    pipes: HeaderPipes,
    ext: impl Iterator<Item = (&'a str, &'a str)>,
) {
    // `CEF:0`: Splunk SC4S recognises only version 0 (formats.md §1.2).
    out.extend_from_slice(b"CEF:0|");
    for v in header {
        write_header_value(out, v, pipes);
        out.push(b'|');
    }
    let mut first = true;
    for (k, v) in ext {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        write_ext_value(out, v);
    }
}

/// A CEF parser written from the standard, used by the tests as the oracle that records decode
/// back to the values that went in.
#[cfg(test)]
pub mod parse {
    /// Splits a record into its 7 unescaped header fields and its extension pairs.
    /// Header fields and key/value pairs.
    pub type Parsed = (Vec<String>, Vec<(String, String)>);

    pub fn parse(record: &str) -> Result<Parsed, String> {
        let rest = record.strip_prefix("CEF:").ok_or("no CEF: prefix")?;
        let mut header = Vec::new();
        let mut cur = String::new();
        let mut chars = rest.chars();
        while header.len() < 7 {
            match chars.next() {
                None => return Err(format!("only {} header fields", header.len())),
                Some('\\') => match chars.next() {
                    Some(c @ ('\\' | '|')) => cur.push(c),
                    other => return Err(format!("invalid header escape \\{other:?}")),
                },
                Some('|') => header.push(std::mem::take(&mut cur)),
                Some('\r' | '\n') => return Err("raw CR/LF in header".into()),
                Some(c) => cur.push(c),
            }
        }
        let ext: String = chars.collect();
        Ok((header, parse_extension(&ext)?))
    }

    /// Tokenises the extension as the standard says: every unescaped `=` ends a key, the key is
    /// the non-space run before it, and the previous value ends at the space before that key.
    pub fn parse_extension(ext: &str) -> Result<Vec<(String, String)>, String> {
        if ext.contains(['\n', '\r']) {
            return Err("raw CR/LF in extension".into());
        }
        let b: Vec<char> = ext.chars().collect();
        // Positions of unescaped '='.
        let mut eqs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == '\\' {
                i += 2;
                continue;
            }
            if b[i] == '=' {
                eqs.push(i);
            }
            i += 1;
        }
        let mut pairs = Vec::new();
        let mut key_starts = Vec::new();
        for &e in &eqs {
            let mut s = e;
            while s > 0 && b[s - 1] != ' ' {
                s -= 1;
            }
            key_starts.push(s);
        }
        for (n, &e) in eqs.iter().enumerate() {
            let key: String = b[key_starts[n]..e].iter().collect();
            if key.is_empty() {
                return Err("empty key".into());
            }
            let end = if n + 1 < eqs.len() {
                key_starts[n + 1]
                    .checked_sub(1)
                    .ok_or("no space before key")?
            } else {
                b.len()
            };
            let raw: String = b[e + 1..end].iter().collect();
            pairs.push((key, unescape(&raw)?));
        }
        if eqs.is_empty() && !ext.is_empty() {
            return Err("extension without key".into());
        }
        Ok(pairs)
    }

    fn unescape(v: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('\\') => out.push('\\'),
                    Some('=') => out.push('='),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    other => return Err(format!("invalid extension escape \\{other:?}")),
                }
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(v: &str) -> String {
        let mut out = Vec::new();
        write_ext_value(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn head(v: &str, pipes: HeaderPipes) -> String {
        let mut out = Vec::new();
        write_header_value(&mut out, v, pipes);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn extension_escapes() {
        let cases: &[(&str, &str)] = &[
            ("plain value", "plain value"),
            ("a=b", "a\\=b"),
            ("C:\\Windows\\System32", "C:\\\\Windows\\\\System32"),
            ("line1\nline2", "line1\\nline2"),
            ("cr\r\nlf", "cr\\r\\nlf"),
            ("pipe|stays", "pipe|stays"),
            ("x src=1.2.3.4", "x src\\=1.2.3.4"),
            ("\\=", "\\\\\\="),
            ("https://x/?a=b&c=d", "https://x/?a\\=b&c\\=d"),
            ("日本語", "日本語"),
        ];
        for (input, want) in cases {
            assert_eq!(ext(input), *want, "{input:?}");
        }
    }

    #[test]
    fn header_escapes() {
        let cases: &[(&str, HeaderPipes, &str)] = &[
            ("a|b", HeaderPipes::Escape, "a\\|b"),
            ("a|b", HeaderPipes::Replace, "a/b"),
            ("a\\b", HeaderPipes::Escape, "a\\\\b"),
            ("a\\b", HeaderPipes::Replace, "a\\\\b"),
            ("a=b", HeaderPipes::Escape, "a=b"),
            ("two\nlines\r", HeaderPipes::Escape, "two lines "),
        ];
        for (input, pipes, want) in cases {
            assert_eq!(head(input, *pipes), *want, "{input:?}");
        }
    }

    #[test]
    fn whole_record() {
        let mut out = Vec::new();
        write_record(
            &mut out,
            &[
                "Microsoft",
                "Defender|ATP",
                "2.0",
                "id-1",
                "x src=1.2.3.4",
                "5",
            ],
            HeaderPipes::Escape,
            [("src", "10.0.0.1"), ("msg", "a=b\nc")].into_iter(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CEF:0|Microsoft|Defender\\|ATP|2.0|id-1|x src=1.2.3.4|5|src=10.0.0.1 msg=a\\=b\\nc"
        );
    }

    #[test]
    fn severity_range() {
        for ok in ["0", "10", "5", "Very-High", "Unknown"] {
            assert!(valid_severity(ok), "{ok}");
        }
        for bad in ["11", "-1", "high", "", "5.0"] {
            assert!(!valid_severity(bad), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert_eq!(label_max_len("cs1"), Some(1023));
        assert_eq!(label_max_len("cs6"), Some(1023));
        assert_eq!(label_max_len("cs7"), None);
        assert_eq!(label_max_len("cs10"), None);
        assert_eq!(label_max_len("flexString2"), Some(128));
        assert_eq!(label_max_len("flexDate1"), Some(128));
        assert_eq!(label_max_len("msg"), None);
    }

    proptest! {
        // Whatever a value holds, the spec parser gives back exactly it, under its own key, with
        // no extra key and no extra record.
        #[test]
        fn any_values_round_trip(
            vals in proptest::collection::vec(any::<String>(), 1..5),
            name in any::<String>(),
        ) {
            let cleaned: Vec<String> = vals
                .iter()
                .map(|v| crate::format::text::clean(v).map(|c| c.into_owned()).unwrap_or_else(|| "x".into()))
                .collect();
            let keys = ["msg", "cs1", "request", "suser", "filePath"];
            let name = crate::format::text::clean(&name).map(|c| c.into_owned()).unwrap_or_else(|| "n".into());
            let mut out = Vec::new();
            write_record(
                &mut out,
                &["V", "P", "1", "c", &name, "5"],
                HeaderPipes::Escape,
                keys.iter().zip(&cleaned).map(|(k, v)| (*k, v.as_str())),
            );
            let text = String::from_utf8(out).unwrap();
            prop_assert!(!text.contains('\n') && !text.contains('\r'));
            let (header, pairs) = parse::parse(&text).map_err(TestCaseError::fail)?;
            let want_name = name.replace(['\r', '\n'], " ");
            prop_assert_eq!(&header[5], &want_name);
            prop_assert_eq!(pairs.len(), cleaned.len());
            for ((k, v), (want_k, want_v)) in pairs.iter().zip(keys.iter().zip(&cleaned)) {
                prop_assert_eq!(k, want_k);
                prop_assert_eq!(v, want_v);
            }
        }
    }
}
