//! Alerts per second per format, from the alert's JSON bytes to the record's bytes (decode,
//! map, encode, syslog header), on one core. Inputs: `tests/data/typical-graph-alert-3k.json`
//! (3.3 KB of compact JSON, device, user, process and IP evidence: the size the target names)
//! and `tests/data/realistic-graph-alert.json` (4.4 KB, the same kinds with longer texts).
//!
//! `cargo bench --bench encode`; criterion prints the time per alert and alerts/s
//! ("thrpt", in Kelem/s).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use defender_bridge::alert::Alert;
use defender_bridge::format::{
    syslog::Clock, Context, Formatter, HeaderKind, MessageEncoder, SyslogHeader, BUILTIN,
};

fn alert_json(file: &str) -> String {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let pretty = std::fs::read_to_string(path).expect("the sample alert");
    // As the API sends it: compact.
    let v: serde_json::Value = serde_json::from_str(&pretty).expect("valid JSON");
    serde_json::to_string(&v).expect("serializes")
}

fn encode(c: &mut Criterion) {
    for (group_name, file) in [
        ("json_to_record_3k", "typical-graph-alert-3k.json"),
        ("json_to_record", "realistic-graph-alert.json"),
    ] {
        formats(c, group_name, &alert_json(file));
    }
    stages(c, &alert_json("realistic-graph-alert.json"));
}

fn formats(c: &mut Criterion, group_name: &str, json: &str) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    for (name, _) in BUILTIN {
        let encoder = MessageEncoder {
            formatter: Arc::new(Formatter::load(name).expect("built-in format")),
            header: SyslogHeader::new(HeaderKind::Rfc5424, 20, "collector-01", "defender-bridge")
                .with_clock(Clock::Utc),
            max_message: Some(8192),
        };
        let ctx = Context {
            tenant_name: Some("Contoso"),
            hostname: None,
        };
        let mut out = Vec::with_capacity(8192);
        group.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                let alert = Alert::from_json(black_box(json)).expect("decodes");
                encoder.encode(&alert, &ctx, 0, &mut out).expect("encodes");
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn stages(c: &mut Criterion, json: &str) {
    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_only", |b| {
        b.iter(|| black_box(Alert::from_json(black_box(json)).expect("decodes")))
    });
    let alert = Alert::from_json(json).expect("decodes");
    let arcsight = Formatter::load("arcsight").expect("built-in");
    let mut out = Vec::with_capacity(8192);
    group.bench_function("encode_only_arcsight", |b| {
        b.iter(|| {
            out.clear();
            arcsight
                .encode(black_box(&alert), &Context::default(), 0, None, &mut out)
                .expect("encodes");
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
