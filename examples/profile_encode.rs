//! A loop for profilers (`valgrind --tool=callgrind`): decode and encode the sample alert N
//! times with one format.
//! `cargo run --release --example profile_encode -- arcsight 10000 [typical-graph-alert-3k.json]`
use std::sync::Arc;

use defender_bridge::alert::Alert;
use defender_bridge::format::{Context, Formatter, HeaderKind, MessageEncoder, SyslogHeader};

fn main() {
    let mut args = std::env::args().skip(1);
    let format = args.next().unwrap_or_else(|| "arcsight".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let file = args
        .next()
        .unwrap_or_else(|| "typical-graph-alert-3k.json".into());
    let pretty =
        std::fs::read_to_string(format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR")))
            .expect("sample");
    let json =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&pretty).expect("json"))
            .expect("json");
    let enc = MessageEncoder {
        formatter: Arc::new(Formatter::load(&format).expect("format")),
        header: SyslogHeader::new(HeaderKind::Rfc5424, 20, "h", "defender-bridge"),
        max_message: Some(8192),
    };
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..n {
        out.clear();
        let a = Alert::from_json(&json).expect("decode");
        enc.encode(&a, &Context::default(), 0, &mut out)
            .expect("encode");
    }
    let el = start.elapsed();
    eprintln!(
        "{n} alerts in {el:?}: {:.0} alerts/s",
        n as f64 / el.as_secs_f64()
    );
}
