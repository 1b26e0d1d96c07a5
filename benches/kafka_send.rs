//! Throughput of the Kafka writer: ~1 KB alert messages (key, headers, the alert's time, a
//! JSON record) to a real Kafka-protocol broker on loopback (librdkafka's mock cluster,
//! tests/support/kafka.rs; 16 partitions, as the mock keeps only the last 5 MB of each), each
//! counted once the broker acknowledged it (`acks=all`). Records/s from the first send to the
//! last acknowledgement; the topic is read back afterwards to check that every message is there.
//!
//! cargo bench --bench kafka_send      (prints the median of 5 runs of 50,000 messages)

#[path = "../tests/support/kafka.rs"]
#[allow(dead_code)]
mod kafka;

use std::time::{Duration, Instant};

use bytes::Bytes;
use defender_bridge::alert::Alert;
use defender_bridge::format::kafka::KafkaEnvelope;
use defender_bridge::format::Context;
use defender_bridge::sink::SinkConfig;
use kafka::{read_topic, MockKafka};

const MESSAGES: usize = 50_000;
const RUNS: usize = 5;

fn message(i: usize) -> Bytes {
    let json = format!(
        r#"{{"id":"da638{i:010}","tenantId":"aaaaaaaa-0000-4000-8000-{:012}","severity":"high","lastUpdateDateTime":"2026-12-01T10:00:00.{:03}Z"}}"#,
        i % 100,
        i % 1000
    );
    let alert = Alert::from_json(&json).expect("alert");
    let mut record = format!(
        r#"{{"id":"da638{i:010}","title":"Suspicious PowerShell command line","description":""#
    );
    while record.len() < 900 {
        record.push_str("A process ran a PowerShell command with an encoded script. ");
    }
    record.truncate(900);
    record.push_str("\"}");
    let ctx = Context {
        tenant_name: Some("contoso"),
        hostname: None,
    };
    let mut out = Vec::new();
    KafkaEnvelope.wrap(&alert, &ctx, record.as_bytes(), &mut out);
    Bytes::from(out)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let messages: Vec<Bytes> = (0..MESSAGES).map(message).collect();
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let broker = MockKafka::start(1);
        broker.create_topic("bench", 16);
        let rate = rt.block_on(async {
            let sink = SinkConfig::new(
                format!("kafka://{}/bench", broker.bootstrap())
                    .parse()
                    .expect("url"),
            )
            .build()
            .expect("sink");
            let start = Instant::now();
            for m in &messages {
                sink.send(m.clone()).await.expect("send");
            }
            sink.flush(Duration::from_secs(300)).await.expect("flush");
            let rate = MESSAGES as f64 / start.elapsed().as_secs_f64();
            sink.shutdown(Duration::from_secs(5))
                .await
                .expect("shutdown");
            rate
        });
        if run == 0 {
            let got = read_topic(
                &broker.bootstrap(),
                "bench",
                MESSAGES,
                Duration::from_secs(120),
            );
            assert_eq!(got.len(), MESSAGES, "every message in the topic");
        }
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "kafka_send: {MESSAGES} messages of ~1 KB, acks=all: median {:.0} messages/s (runs: {})",
        rates[RUNS / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
