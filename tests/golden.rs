//! Golden tests: every built-in format over every sample alert of both APIs, compared byte for
//! byte with `tests/golden/<sample>.<format>.txt` (records, then the problems reported).
//!
//! After a deliberate change to a format, regenerate with `UPDATE_GOLDEN=1 cargo test --test
//! golden` and review the diff like any other change.

use std::path::Path;
use std::sync::Arc;

use defender_bridge::convert::convert;
use defender_bridge::format::{
    syslog::Clock, Context, Formatter, HeaderKind, MessageEncoder, SyslogHeader, BUILTIN,
};

const SAMPLES: &[&str] = &[
    "graph-alerts-v2-list-docs.json",
    "graph-alerts-v2-demisto-linux-and-air.json",
    "realistic-graph-alert.json",
    "hostile-graph-alert.json",
    "mde-alert-get-docs.json",
    "mde-alerts-list-docs-default.json",
    "mde-alerts-list-docs-expand-evidence.json",
    "mde-alert-legacy-2018-docs.json",
    "mde-alerts-list-demisto-2019.json",
    "mde-alerts-edge-cases.ndjson",
    "edge-times.ndjson",
];

fn render(sample: &str, encoder: &MessageEncoder) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sample);
    let input = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let ctx = Context {
        tenant_name: Some("Contoso (EMEA)"),
        hostname: None,
    };
    convert(sample, &input, encoder, &ctx, &mut out, &mut err).unwrap();
    let out = String::from_utf8(out).expect("records are UTF-8");
    let err = String::from_utf8(err).unwrap();
    format!("{out}--- problems ---\n{err}")
}

fn check(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for (i, (x, y)) in e.iter().zip(a.iter()).enumerate() {
            assert_eq!(x, y, "{name}: first difference at line {}", i + 1);
        }
        panic!("{name}: {} lines expected, {} produced", e.len(), a.len());
    }
}

fn encoder(format: &str, kind: HeaderKind) -> MessageEncoder {
    MessageEncoder {
        formatter: Arc::new(Formatter::load(format).unwrap()),
        header: SyslogHeader::new(kind, 20, "collector-01.mssp.example", "defender-bridge")
            .with_clock(Clock::Utc),
        max_message: None,
    }
}

#[test]
fn every_format_over_every_sample() {
    for (format, _) in BUILTIN {
        let enc = encoder(format, HeaderKind::None);
        for sample in SAMPLES {
            check(&format!("{sample}.{format}.txt"), &render(sample, &enc));
        }
    }
}

#[test]
fn syslog_headers_in_front() {
    check(
        "realistic-graph-alert.json.arcsight.rfc5424.txt",
        &render(
            "realistic-graph-alert.json",
            &encoder("arcsight", HeaderKind::Rfc5424),
        ),
    );
    check(
        "mde-alert-get-docs.json.sentinel.rfc3164.txt",
        &render(
            "mde-alert-get-docs.json",
            &encoder("sentinel", HeaderKind::Rfc3164),
        ),
    );
    check(
        "realistic-graph-alert.json.json.rfc3164.txt",
        &render(
            "realistic-graph-alert.json",
            &encoder("json", HeaderKind::Rfc3164),
        ),
    );
}

#[test]
fn records_are_single_lines_of_valid_utf8() {
    // Whatever the sample holds, each record is one line: CR and LF never appear raw.
    for (format, _) in BUILTIN {
        let enc = encoder(format, HeaderKind::Rfc5424);
        for sample in SAMPLES {
            let text = render(sample, &enc);
            let records = text.split("--- problems ---").next().unwrap();
            assert!(!records.contains('\r'), "{format} {sample}");
            for line in records.lines() {
                assert!(line.starts_with("<"), "{format} {sample}: {line}");
            }
        }
    }
}

/// The bodies the HEC and Kafka outputs send, per alert of a Graph, an MDE and the edge-times
/// sample: the HEC event object around the JSON record (and around a CEF one, a string), and
/// the Kafka message's key, headers, timestamp and value.
#[test]
fn hec_and_kafka_bodies() {
    use defender_bridge::format::hec::{HecEnvelope, DEFAULT_SOURCE, DEFAULT_SOURCETYPE};
    use defender_bridge::format::kafka::{unpack, KafkaEnvelope};
    use defender_bridge::input::{decode, Decoded, Limits};
    let hec = HecEnvelope {
        source: DEFAULT_SOURCE.into(),
        sourcetype: DEFAULT_SOURCETYPE.into(),
        index: Some("defender".into()),
        host: "collector-01.mssp.example".into(),
    };
    let ctx = Context {
        tenant_name: Some("Contoso (EMEA)"),
        hostname: None,
    };
    let json = encoder("json", HeaderKind::None);
    let cef = encoder("splunk", HeaderKind::None);
    for sample in [
        "graph-alerts-v2-list-docs.json",
        "mde-alert-get-docs.json",
        "edge-times.ndjson",
    ] {
        let input = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(sample),
        )
        .unwrap();
        let (mut hec_out, mut kafka_out) = (String::new(), String::new());
        decode(&input, Limits::default(), |d| {
            let Decoded::Alert(_, alert) = d else { return };
            let mut record = Vec::new();
            json.encode(&alert, &ctx, 0, &mut record).unwrap();
            let mut event = Vec::new();
            hec.wrap(&alert, &ctx, &record, true, &mut event);
            hec_out.push_str(std::str::from_utf8(&event).unwrap());
            hec_out.push('\n');
            let mut cef_record = Vec::new();
            cef.encode(&alert, &ctx, 0, &mut cef_record).unwrap();
            let mut event = Vec::new();
            hec.wrap(&alert, &ctx, &cef_record, false, &mut event);
            hec_out.push_str(std::str::from_utf8(&event).unwrap());
            hec_out.push('\n');

            let mut packed = Vec::new();
            KafkaEnvelope.wrap(&alert, &ctx, &record, &mut packed);
            let m = unpack(&packed).unwrap();
            kafka_out.push_str(&format!("key: {}\n", String::from_utf8_lossy(m.key)));
            for (k, v) in &m.headers {
                kafka_out.push_str(&format!("header {k}: {}\n", String::from_utf8_lossy(v)));
            }
            kafka_out.push_str(&format!("timestamp_ms: {:?}\n", m.timestamp_ms));
            kafka_out.push_str(&format!("value: {}\n\n", String::from_utf8_lossy(m.value)));
        });
        check(&format!("{sample}.hec.txt"), &hec_out);
        check(&format!("{sample}.kafka.txt"), &kafka_out);
    }
}
